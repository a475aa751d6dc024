package chronytest

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// InNamespace runs f on a thread that has entered namespace ns, so that the
// sockets f opens live there and stay there wherever they are used later.
func InNamespace(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine, rather
		// than going back to the scheduler in the wrong namespace.
		runtime.LockOSThread()
		fd, err := unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Package netns runs code inside a network namespace of this host.
package netns

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on an OS thread that has entered the network namespace at path
// (such as /run/netns/NAME, as ip netns names them), so that the sockets f
// opens live there, and stay there wherever they are used later. The
// thread never goes back to the scheduler in that namespace: it ends with f.
func Do(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine.
		runtime.LockOSThread()
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", path, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", path, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

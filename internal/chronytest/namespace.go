package chronytest

import "github.com/fastntp/fastntp/internal/netns"

// InNamespace runs f on a thread that has entered namespace ns, so that the
// sockets f opens live there and stay there wherever they are used later.
func InNamespace(ns string, f func() error) error {
	return netns.Do("/var/run/netns/"+ns, f)
}

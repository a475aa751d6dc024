package egress

import (
	"os"
	"time"

	"github.com/cilium/ebpf"
)

// SetOffsetSource makes s take its TAI offset from f, and applies it now.
func SetOffsetSource(s *Stamper, f func() (int64, error)) error {
	s.readOffset = f
	return s.refreshOffset()
}

// SetSubscribe replaces the subscription to the kernel's device
// announcements and the wait between attempts, until the returned function
// puts them back.
func SetSubscribe(f func() (*os.File, error), retry time.Duration) (restore func()) {
	oldSubscribe, oldRetry := subscribe, watchRetry
	subscribe, watchRetry = f, retry
	return func() { subscribe, watchRetry = oldSubscribe, oldRetry }
}

// Subscribe is the real subscription.
var Subscribe = subscribeLinks

// Program returns the loaded program, for test runs.
func Program(s *Stamper) *ebpf.Program { return s.program }

package kernel

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Clock is what a program needs to turn the kernel's TAI clock into the
// system clock: struct clock of fastntp.h.
type Clock struct {
	// TAIOffset is CLOCK_TAI less CLOCK_REALTIME.
	TAIOffset time.Duration
	// TAIMinusMonotonic is CLOCK_TAI less CLOCK_MONOTONIC, which moves only
	// when the system clock is stepped or the TAI offset changes.
	TAIMinusMonotonic time.Duration
}

// ClockGuard is how far a program lets TAIMinusMonotonic move before it
// stops trusting the offset; the loader sets the program's clock_guard_ns
// from it.
const ClockGuard = 20 * time.Microsecond

// maxReadSpread bounds the time between the two monotonic readings that
// bracket the TAI one: a reading interrupted for longer is taken again.
// Their midpoint is then within half of it of the TAI reading, well inside
// ClockGuard. (Where the clock source has no vDSO, as on some VMs, each
// reading is a system call of about a microsecond.)
const maxReadSpread = 10 * time.Microsecond

// ReadClock reads the kernel's TAI offset (through adjtimex, which needs no
// privileges) and the TAI clock's distance from the monotonic one.
func ReadClock() (Clock, error) {
	for range 100 {
		offset, err := taiOffset()
		if err != nil {
			return Clock{}, err
		}
		var before, tai, after unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &before); err != nil {
			return Clock{}, fmt.Errorf("read the monotonic clock: %w", err)
		}
		if err := unix.ClockGettime(unix.CLOCK_TAI, &tai); err != nil {
			return Clock{}, fmt.Errorf("read the TAI clock: %w", err)
		}
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &after); err != nil {
			return Clock{}, fmt.Errorf("read the monotonic clock: %w", err)
		}
		spread := after.Nano() - before.Nano()
		// An offset that changed meanwhile may belong to either side.
		if again, err := taiOffset(); err != nil || again != offset || spread > int64(maxReadSpread) {
			continue
		}
		return Clock{
			TAIOffset:         offset,
			TAIMinusMonotonic: time.Duration(tai.Nano() - (before.Nano() + spread/2)),
		}, nil
	}
	return Clock{}, errors.New("read the TAI and monotonic clocks: every reading was interrupted")
}

func taiOffset() (time.Duration, error) {
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		return 0, fmt.Errorf("read the TAI offset: %w", err)
	}
	return time.Duration(tx.Tai) * time.Second, nil
}

// Monotonic returns CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func Monotonic() time.Duration {
	var ts unix.Timespec
	// CLOCK_MONOTONIC cannot fail on Linux.
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

package chronytest

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The kernel's TAI offset belongs to the whole machine, and go test runs
// packages in parallel processes: a test that changes it and a test that
// needs the device stamper to stamp every reply must not overlap. They
// take a file lock, shared or exclusive, for as long as they run.
var taiLock = filepath.Join(os.TempDir(), "fastntp-test-tai.lock")

func lockTAI(t testing.TB, how int) {
	t.Helper()
	f, err := os.OpenFile(taiLock, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("TAI offset lock: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		t.Fatalf("TAI offset lock: %v", err)
	}
	t.Cleanup(func() { f.Close() })
}

// KeepTAI keeps the kernel's TAI offset from changing until the test ends,
// waiting for a test that is changing it.
func KeepTAI(t testing.TB) {
	t.Helper()
	lockTAI(t, unix.LOCK_SH)
}

// ChangeTAI waits until no other test relies on the kernel's TAI offset,
// and returns a function that sets it (ADJ_TAI, as root) for the rest of
// the test. The offset is restored when the test ends.
func ChangeTAI(t testing.TB) func(seconds int) {
	t.Helper()
	RequireRoot(t)
	lockTAI(t, unix.LOCK_EX)
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		t.Fatalf("read the TAI offset: %v", err)
	}
	original := int(tx.Tai)
	set := func(seconds int) {
		t.Helper()
		tx := unix.Timex{Modes: unix.ADJ_TAI, Constant: int64(seconds)}
		if _, err := unix.Adjtimex(&tx); err != nil {
			t.Fatalf("set the TAI offset to %d s: %v", seconds, err)
		}
	}
	t.Cleanup(func() {
		tx := unix.Timex{Modes: unix.ADJ_TAI, Constant: int64(original)}
		if _, err := unix.Adjtimex(&tx); err != nil {
			t.Errorf("restore the TAI offset to %d s: %v", original, err)
		}
	})
	return set
}

package batch

import (
	"errors"
	"net"
	"slices"
	"syscall"
	"testing"
)

// fakeSender plays a kernel that refuses some messages. Like sendmmsg, it
// sends messages in order until the first refused one; if that is the first
// of the run it returns an error, otherwise the count so far.
type fakeSender struct {
	refuse map[int]error // index -> errno
	eintr  int           // calls to interrupt before they send anything
	limit  int           // most messages per call, 0 for no limit
	fatal  bool
	sent   []int
	calls  int
}

func (f *fakeSender) send(start, count int) (int, error) {
	f.calls++
	if f.eintr > 0 {
		f.eintr--
		return -1, syscall.EINTR
	}
	if f.fatal {
		return -1, net.ErrClosed
	}
	if f.limit > 0 {
		count = min(count, f.limit)
	}
	for i := start; i < start+count; i++ {
		if err := f.refuse[i]; err != nil {
			if i == start {
				return -1, err
			}
			return i - start, nil
		}
		f.sent = append(f.sent, i)
	}
	return count, nil
}

func TestSendAll(t *testing.T) {
	tests := []struct {
		name     string
		n        int
		refuse   map[int]error
		limit    int
		wantSent []int
	}{
		{"all", 5, nil, 0, []int{0, 1, 2, 3, 4}},
		{"partial sends resume", 7, nil, 3, []int{0, 1, 2, 3, 4, 5, 6}},
		{"first refused", 4, map[int]error{0: syscall.EPERM}, 0, []int{1, 2, 3}},
		{"middle refused", 5, map[int]error{2: syscall.EHOSTUNREACH}, 0, []int{0, 1, 3, 4}},
		{"last refused", 3, map[int]error{2: syscall.EINVAL}, 0, []int{0, 1}},
		{"adjacent refused", 6, map[int]error{1: syscall.ENOBUFS, 2: syscall.EPERM}, 2, []int{0, 3, 4, 5}},
		{"all refused", 3, map[int]error{0: syscall.EPERM, 1: syscall.EPERM, 2: syscall.EPERM}, 0, nil},
		{"none", 0, nil, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSender{refuse: tt.refuse, limit: tt.limit}
			got, err := sendAll(tt.n, f.send)
			if err != nil {
				t.Fatalf("sendAll: %v", err)
			}
			if got != len(tt.wantSent) || !slices.Equal(f.sent, tt.wantSent) {
				t.Errorf("sent %d %v, want %d %v", got, f.sent, len(tt.wantSent), tt.wantSent)
			}
			if f.calls > tt.n+1 {
				t.Errorf("%d calls for %d messages", f.calls, tt.n)
			}
		})
	}
}

func TestSendAllStopsOnFatalError(t *testing.T) {
	f := &fakeSender{fatal: true}
	if _, err := sendAll(10, f.send); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("err = %v, want net.ErrClosed", err)
	}
	if f.calls != 1 {
		t.Errorf("%d calls after a fatal error, want 1", f.calls)
	}
}

// A signal that interrupts sendmmsg before it sends loses no reply.
func TestSendAllRetriesInterrupted(t *testing.T) {
	f := &fakeSender{eintr: 2}
	if got, err := sendAll(3, f.send); got != 3 || err != nil || !slices.Equal(f.sent, []int{0, 1, 2}) {
		t.Errorf("sendAll = %d, %v; sent %v, want all 3", got, err, f.sent)
	}
}

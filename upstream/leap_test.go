package upstream

import (
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/ntp"
)

func utc(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04:05.000", s)
	if err != nil {
		panic(err)
	}
	return t
}

// Which day may end with a leap, and when its window opens, as chronyd has
// them; the clock is injected through the answers' times.
func TestLeapAnnouncement(t *testing.T) {
	tests := []struct {
		name      string
		polled    string
		leap      uint8
		wantLeap  uint8
		wantStart string // "" for no window
	}{
		{"insertion on December 31", "2016-12-31 12:00:00.000", ntp.LeapInsertSecond, ntp.LeapInsertSecond, "2016-12-31 23:59:59.500"},
		{"insertion on June 30", "2015-06-30 23:59:00.000", ntp.LeapInsertSecond, ntp.LeapInsertSecond, "2015-06-30 23:59:59.500"},
		{"deletion skips 23:59:59", "2030-06-30 08:00:00.000", ntp.LeapDeleteSecond, ntp.LeapDeleteSecond, "2030-06-30 23:59:58.500"},
		{"not on December 30", "2016-12-30 12:00:00.000", ntp.LeapInsertSecond, ntp.LeapNone, ""},
		{"not at the end of March", "2016-03-31 12:00:00.000", ntp.LeapInsertSecond, ntp.LeapNone, ""},
		{"not the day after", "2017-01-01 00:00:00.600", ntp.LeapInsertSecond, ntp.LeapNone, ""},
		{"no leap", "2016-12-31 12:00:00.000", ntp.LeapNone, ntp.LeapNone, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPoller(t, Config{})
			at := utc(tt.polled)
			snap, _, _ := p.judge(answerAt(at, 0, func(h *ntp.Header) { h.Leap = tt.leap }), nil, at)
			if snap == nil || !snap.Synchronized {
				t.Fatalf("snapshot %+v", snap)
			}
			if snap.Leap != tt.wantLeap {
				t.Errorf("leap %d, want %d", snap.Leap, tt.wantLeap)
			}
			switch {
			case tt.wantStart == "" && !snap.LeapStart.IsZero():
				t.Errorf("leap window from %v, want none", snap.LeapStart)
			case tt.wantStart != "" && !snap.LeapStart.Equal(utc(tt.wantStart)):
				t.Errorf("leap window from %v, want %s", snap.LeapStart.UTC(), tt.wantStart)
			}
		})
	}
}

// Around the leap second of 2016-12-31 fastntp serves what chronyd serves,
// by the clock at the moment of serving: the announcement, then leap 3 for
// two seconds of real time, then no leap, even from a snapshot polled
// before midnight. The window stays anchored where it was first computed
// when later polls arrive during the repeated second, or answer with
// chronyd's own leap 3.
func TestLeapSecondInsertion(t *testing.T) {
	p := newPoller(t, Config{})
	first := utc("2016-12-31 23:59:58.000")
	insert := func(h *ntp.Header) { h.Leap = ntp.LeapInsertSecond }
	snap, _, _ := p.judge(answerAt(first, 0, insert), nil, first)
	// Real time since the first poll, and what to serve then.
	for _, tc := range []struct {
		after time.Duration
		want  uint8
	}{
		{0, ntp.LeapInsertSecond},
		{1499 * time.Millisecond, ntp.LeapInsertSecond}, // 23:59:59.499
		{1500 * time.Millisecond, ntp.LeapUnsynchronized},
		{2500 * time.Millisecond, ntp.LeapUnsynchronized}, // the repeated 23:59:59.500
		{3499 * time.Millisecond, ntp.LeapUnsynchronized}, // 00:00:00.499
		{3500 * time.Millisecond, ntp.LeapNone},           // 00:00:00.500: no longer than chronyd
		{time.Hour, ntp.LeapNone},
	} {
		if got := snap.LeapAt(first.Add(tc.after)); got != tc.want {
			t.Errorf("%v after %s: leap %d, want %d", tc.after, "23:59:58", got, tc.want)
		}
	}

	// A poll during the repeated second still announces the leap (chronyd
	// had not yet caught up); its wall clock reads 23:59:59.2 again, but the
	// window stays where the first poll put it.
	repeated := first.Add(2200 * time.Millisecond) // real time; the wall clock says 23:59:59.200
	a := answerAt(repeated, 0, insert)
	snap2, _, _ := p.judge(a, nil, repeated)
	if !snap2.LeapStart.Equal(snap.LeapStart) || snap2.LeapAt(repeated) != ntp.LeapUnsynchronized {
		t.Errorf("window moved to %v (leap %d now)", snap2.LeapStart, snap2.LeapAt(repeated))
	}
	// chronyd's own answer during the leap: leap 3 with its stratum. The
	// window in progress goes on, and ends when it would have.
	during := first.Add(2800 * time.Millisecond)
	snap3, cause, _ := p.judge(answerAt(during, 0, func(h *ntp.Header) { h.Leap = ntp.LeapUnsynchronized }), nil, during)
	if cause != CauseNone || !snap3.Synchronized || snap3.LeapAt(during) != ntp.LeapUnsynchronized ||
		snap3.LeapAt(first.Add(3500*time.Millisecond)) != ntp.LeapNone {
		t.Errorf("leap in progress at the backend: %v %+v", cause, snap3)
	}
	// After the leap chronyd answers leap 0, and so does fastntp.
	after := first.Add(4 * time.Second)
	if snap4, _, _ := p.judge(answerAt(after, 0, nil), nil, after); snap4.LeapAt(after) != ntp.LeapNone || !snap4.LeapStart.IsZero() {
		t.Errorf("after the leap: %+v", snap4)
	}
}

// A deletion skips 23:59:59: leap 3 from 23:59:58.5 for two seconds, which
// the wall clock shows as up to 00:00:01.5.
func TestLeapSecondDeletion(t *testing.T) {
	p := newPoller(t, Config{})
	at := utc("2030-06-30 23:59:50.000")
	snap, _, _ := p.judge(answerAt(at, 0, func(h *ntp.Header) { h.Leap = ntp.LeapDeleteSecond }), nil, at)
	for _, tc := range []struct {
		after time.Duration
		want  uint8
	}{
		{8499 * time.Millisecond, ntp.LeapDeleteSecond},
		{8500 * time.Millisecond, ntp.LeapUnsynchronized},
		{10499 * time.Millisecond, ntp.LeapUnsynchronized},
		{10500 * time.Millisecond, ntp.LeapNone},
	} {
		if got := snap.LeapAt(at.Add(tc.after)); got != tc.want {
			t.Errorf("%v after 23:59:50: leap %d, want %d", tc.after, got, tc.want)
		}
	}
}

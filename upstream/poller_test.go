package upstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
)

// answerAt builds the backend's answer to a poll sent at t, 200µs round
// trip, with the backend's clock offset from the system clock.
func answerAt(t time.Time, offset time.Duration, edit func(h *ntp.Header)) *answer {
	h := ntp.Header{
		Leap: ntp.LeapNone, Version: 4, Mode: ntp.ModeServer, Stratum: 3, Precision: -24,
		RootDelay: 100, RootDispersion: 200, ReferenceID: 0x0a000001,
		ReferenceTime: ntp.TimeFrom(t.Add(-time.Minute)),
		ReceiveTime:   ntp.TimeFrom(t.Add(100*time.Microsecond + offset)),
		TransmitTime:  ntp.TimeFrom(t.Add(110*time.Microsecond + offset)),
	}
	if edit != nil {
		edit(&h)
	}
	received := t.Add(210 * time.Microsecond)
	return &answer{header: h, sent: t, arrived: received, received: received}
}

func newPoller(t *testing.T, cfg Config) *Poller {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// readAnswer accepts only the answer to our own request, and tells a
// kiss-o'-death by its stratum and kiss code, whatever its leap bits.
func TestReadAnswer(t *testing.T) {
	const cookie = 0x1122334455667788
	now := time.Now()
	tests := []struct {
		name string
		edit func(h *ntp.Header)
		want string // "" for an answer to judge, "not ours", or an error's text
	}{
		{"synchronized", func(*ntp.Header) {}, ""},
		{"wrong origin", func(h *ntp.Header) { h.OriginTime++ }, "not ours"},
		{"client mode", func(h *ntp.Header) { h.Mode = ntp.ModeClient }, "not ours"},
		{"unsynchronized backend", func(h *ntp.Header) { h.Leap, h.Stratum, h.ReferenceID = ntp.LeapUnsynchronized, 0, 0 }, ""},
		{"stratum 16", func(h *ntp.Header) { h.Leap, h.Stratum = ntp.LeapUnsynchronized, 16 }, ""},
		// chronyd's kiss-o'-death: leap 3, stratum 0, the code as reference ID.
		{"kiss-o'-death RATE as chronyd sends it", func(h *ntp.Header) {
			h.Leap, h.Stratum, h.ReferenceID = ntp.LeapUnsynchronized, 0, binary.BigEndian.Uint32([]byte("RATE"))
		}, `kiss-o'-death "RATE"`},
		{"kiss-o'-death DENY with leap 0", func(h *ntp.Header) { h.Stratum, h.ReferenceID = 0, binary.BigEndian.Uint32([]byte("DENY")) }, `"DENY"`},
		{"no timestamps", func(h *ntp.Header) { h.TransmitTime = 0 }, "without timestamps"},
		// The unsynchronized form needs no timestamps.
		{"stratum 16 without timestamps", func(h *ntp.Header) { h.Leap, h.Stratum, h.TransmitTime = ntp.LeapUnsynchronized, 16, 0 }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := answerAt(now, 0, func(h *ntp.Header) {
				h.OriginTime = cookie
				tt.edit(h)
			})
			b := make([]byte, ntp.HeaderSize)
			a.header.Encode(b)
			var h ntp.Header
			err := readAnswer(&h, b, cookie)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("readAnswer: %v", err)
			case tt.want == "not ours" && err != errNotOurs:
				t.Fatalf("err = %v, want errNotOurs", err)
			case tt.want != "" && tt.want != "not ours" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestJudge(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name      string
		offset    time.Duration
		edit      func(h *ntp.Header)
		err       error
		wantSync  bool
		wantCause Cause
		keepsLast bool // nil: the last good state stands
	}{
		{name: "synchronized", wantSync: true},
		{name: "small offset", offset: 3 * time.Millisecond, wantSync: true},
		{name: "unsynchronized backend", edit: func(h *ntp.Header) { h.Leap, h.Stratum, h.ReferenceID = ntp.LeapUnsynchronized, 0, 0 },
			wantCause: CauseBackendUnsynchronized},
		{name: "backend at stratum 16", edit: func(h *ntp.Header) { h.Leap, h.Stratum = ntp.LeapUnsynchronized, ntp.MaxStratum },
			wantCause: CauseBackendUnsynchronized},
		{name: "clock far off", offset: time.Second, wantCause: CauseOffset},
		{name: "rate limited", err: kissError{"RATE"}, wantCause: CauseRateLimited, keepsLast: true},
		{name: "refused", err: kissError{"DENY"}, wantCause: CauseRefused, keepsLast: true},
		{name: "restricted", err: kissError{"RSTR"}, wantCause: CauseRefused, keepsLast: true},
		{name: "other kiss code", err: kissError{"ACST"}, wantCause: CauseKissOfDeath, keepsLast: true},
		{name: "timeout", err: timeoutError{time.Second}, wantCause: CauseNoAnswer, keepsLast: true},
		// ICMP port unreachable: the backend is not running.
		{name: "connection refused", err: fmt.Errorf("receive: %w", syscall.ECONNREFUSED), wantCause: CauseNoAnswer, keepsLast: true},
		{name: "other error", err: errors.New("a reply without timestamps"), wantCause: CauseBadAnswer, keepsLast: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPoller(t, Config{})
			var a *answer
			if tt.err == nil {
				a = answerAt(now, tt.offset, tt.edit)
			}
			snap, cause, reason := p.judge(a, tt.err, now)
			if cause != tt.wantCause || (cause != CauseNone) != (reason != "") {
				t.Fatalf("cause %v (%q), want %v", cause, reason, tt.wantCause)
			}
			if tt.keepsLast {
				if snap != nil {
					t.Fatalf("snapshot %+v, want nil: the last good state stands", snap)
				}
				return
			}
			if snap.Synchronized != tt.wantSync || snap.Cause != tt.wantCause {
				t.Fatalf("snapshot %+v, want synchronized=%v", snap, tt.wantSync)
			}
			if !tt.wantSync {
				if snap.Leap != ntp.LeapUnsynchronized || snap.Stratum != 0 || snap.ReferenceID != 0 || snap.Reason == "" {
					t.Errorf("unsynchronized snapshot %+v", snap)
				}
				return
			}
			h := a.header
			if snap.Leap != h.Leap || snap.Stratum != 3 || snap.ReferenceID != h.ReferenceID ||
				snap.ReferenceTime != h.ReferenceTime || snap.RootDelay != 100 || snap.RootDispersion < 200 {
				t.Errorf("snapshot %+v does not mirror %+v", snap, h)
			}
			if d := snap.Offset - tt.offset; d.Abs() > 100*time.Microsecond || snap.Delay != 200*time.Microsecond {
				t.Errorf("offset %v delay %v, want %v and 200µs", snap.Offset, snap.Delay, tt.offset)
			}
			// The offset and its error bound are in the advertised dispersion.
			if min := ntp.Short(200).Add(ntp.ShortFromSeconds((tt.offset + 100*time.Microsecond).Seconds())); snap.RootDispersion < min-1 {
				t.Errorf("root dispersion %d, want at least %d", snap.RootDispersion, min)
			}
			if !snap.Valid(a.received) || snap.Valid(a.received.Add(p.cfg.MaxAge)) {
				t.Errorf("validity window wrong: expires %v after taken", snap.Expires.Sub(snap.Taken))
			}
		})
	}
}

// A kiss-o'-death slows the polls down, and a good answer restores the pace.
func TestKissOfDeathBacksOff(t *testing.T) {
	now := time.Now()
	p := newPoller(t, Config{Interval: time.Second})
	for i, want := range []time.Duration{2, 4, 8, 16, 16} {
		p.update(nil, kissError{"RATE"}, now.Add(time.Duration(i)*time.Second))
		if p.interval != want*time.Second {
			t.Fatalf("after %d kiss-o'-deaths, interval %v, want %v", i+1, p.interval, want*time.Second)
		}
	}
	p.update(answerAt(now, 0, nil), nil, now)
	if p.interval != time.Second {
		t.Errorf("after a good answer, interval %v, want 1s", p.interval)
	}
}

// Scheduling delays are not clock offsets: of several samples the one with
// the shortest round trip decides, and a slow sample alone proves nothing.
func TestOffsetFilter(t *testing.T) {
	now := time.Now()
	p := newPoller(t, Config{MaxOffset: time.Millisecond})
	if snap, _, _ := p.judge(answerAt(now, 0, nil), nil, now); !snap.Synchronized {
		t.Fatal("first answer not synchronized")
	}
	// An answer read 30 ms late by a starved reader: a -15 ms offset by the
	// arithmetic, but ±15 ms by its round trip, and older, faster samples
	// say the clocks agree.
	late := answerAt(now.Add(time.Second), 0, nil)
	late.arrived = late.arrived.Add(30 * time.Millisecond)
	snap, cause, _ := p.judge(late, nil, now.Add(time.Second))
	if cause != CauseNone || !snap.Synchronized || snap.Offset.Abs() > 100*time.Microsecond {
		t.Fatalf("a late read passed for an offset: %v %+v", cause, snap)
	}
	// Only slow samples: nothing can be said, and the last state stands.
	p = newPoller(t, Config{MaxOffset: time.Millisecond})
	if snap, cause, _ := p.judge(late, nil, now); snap != nil || cause != CauseSlowAnswers {
		t.Fatalf("a lone slow sample: %v %+v, want slow answers and no verdict", cause, snap)
	}
}

// A slow sample proves the clocks apart when its whole error interval lies
// beyond the bound, and the fastest sample's verdict stands against a
// slower one that says otherwise.
func TestOffsetProof(t *testing.T) {
	now := time.Now()
	p := newPoller(t, Config{MaxOffset: time.Millisecond})
	if snap, _, _ := p.judge(answerAt(now, 0, nil), nil, now); !snap.Synchronized {
		t.Fatal("first answer not synchronized")
	}
	// The backend 5 ms ahead, its answer read 3.8 ms late: 3.1 ms off by
	// the arithmetic, ±2 ms, so apart, though slower than the first sample.
	slow := answerAt(now.Add(time.Second), 5*time.Millisecond, nil)
	slow.arrived = slow.arrived.Add(4*time.Millisecond - 200*time.Microsecond)
	slow.received = slow.arrived
	snap, cause, _ := p.judge(slow, nil, now.Add(time.Second))
	if cause != CauseOffset || snap == nil || snap.Synchronized || (snap.Offset-3100*time.Microsecond).Abs() > 10*time.Microsecond ||
		snap.Delay != 4*time.Millisecond {
		t.Fatalf("a slow sample 3.1 ms ± 2 ms off: %v %+v, want it to prove the offset", cause, snap)
	}

	// The fastest sample says 1 s apart; a slower, later one says the
	// clocks agree: the fastest decides.
	p = newPoller(t, Config{MaxOffset: time.Millisecond})
	if _, cause, _ := p.judge(answerAt(now, time.Second, nil), nil, now); cause != CauseOffset {
		t.Fatalf("1 s off: %v", cause)
	}
	agree := answerAt(now.Add(time.Second), 0, nil)
	agree.arrived = agree.arrived.Add(100 * time.Microsecond)
	agree.received = agree.arrived
	if snap, cause, _ := p.judge(agree, nil, now.Add(time.Second)); cause != CauseOffset || snap.Offset < time.Second-time.Millisecond {
		t.Fatalf("a slower sample overruled the fastest: %v %+v", cause, snap)
	}
}

// exactAnswer returns an answer whose times are read back from the
// backend's own timestamps, so that no rounding moves them: the poll left
// sentBefore ahead of the backend's receive timestamp, and the answer came
// back arrivedAfter the backend's transmit timestamp. The round trip is the
// sum of the two, the offset half their difference.
func exactAnswer(at time.Time, sentBefore, arrivedAfter time.Duration) *answer {
	a := answerAt(at, 0, nil)
	t2, t3 := a.header.ReceiveTime.Time(at), a.header.TransmitTime.Time(at)
	a.sent = t2.Add(-sentBefore)
	a.arrived = t3.Add(arrivedAfter)
	a.received = a.arrived
	return a
}

// A sample exactly at a bound: whose error interval ends exactly at
// MaxOffset proves nothing, and whose error bound is exactly MaxOffset is
// fast enough.
func TestBounds(t *testing.T) {
	now := time.Now()
	p := newPoller(t, Config{MaxOffset: time.Millisecond})
	// No round trip, 1 ms apart: the interval ends at the bound.
	if snap, cause, _ := p.judge(exactAnswer(now, time.Millisecond, -time.Millisecond), nil, now); cause != CauseNone || !snap.Synchronized {
		t.Errorf("an interval ending at the bound: %v %+v, want synchronized", cause, snap)
	}
	p = newPoller(t, Config{MaxOffset: time.Millisecond})
	// A round trip of 2 ms, so an error bound of 1 ms.
	if snap, cause, _ := p.judge(exactAnswer(now, time.Millisecond, time.Millisecond), nil, now); cause != CauseNone || !snap.Synchronized {
		t.Errorf("an error bound at the bound: %v %+v, want synchronized", cause, snap)
	}
	// Of two samples of zero round trip, the latest proves the clocks a
	// second apart, though the first, as fast, did not.
	p = newPoller(t, Config{MaxOffset: time.Millisecond})
	if snap, _, _ := p.judge(exactAnswer(now, 0, 0), nil, now); !snap.Synchronized {
		t.Fatal("first answer not synchronized")
	}
	if _, cause, _ := p.judge(exactAnswer(now.Add(time.Second), time.Second, -time.Second), nil, now.Add(time.Second)); cause != CauseOffset {
		t.Errorf("a fast sample a second apart: %v, want %v", cause, CauseOffset)
	}
}

// Trouble while the last state is served is logged once, and so is the
// backend's answering again, when it does.
func TestTroubleLogged(t *testing.T) {
	now := time.Now()
	logger, logs := observed()
	p := newPoller(t, Config{Logger: logger})
	const (
		synchronized = "synchronized to backend"
		trouble      = "backend trouble; serving its last valid state until it expires"
		again        = "backend answers again"
		unsync       = "serving unsynchronized replies"
	)
	for i, step := range []struct {
		err  error
		want map[string]int // logged so far
	}{
		{nil, map[string]int{synchronized: 1, trouble: 0, again: 0}},
		{nil, map[string]int{synchronized: 1, trouble: 0, again: 0}},
		{timeoutError{time.Second}, map[string]int{trouble: 1, again: 0}},
		{timeoutError{time.Second}, map[string]int{trouble: 1, again: 0}},
		{nil, map[string]int{synchronized: 1, trouble: 1, again: 1}},
		{nil, map[string]int{synchronized: 1, trouble: 1, again: 1, unsync: 0}},
	} {
		at := now.Add(time.Duration(i) * 100 * time.Millisecond)
		if step.err != nil {
			p.update(nil, step.err, at)
		} else {
			p.update(answerAt(at, 0, nil), nil, at)
		}
		for message, want := range step.want {
			if n := countLogs(logs, message); n != want {
				t.Errorf("after poll %d: %q logged %d times, want %d", i+1, message, n, want)
			}
		}
	}
}

// An answer whose round trip took no time at all (as measured) is a
// sample like any other.
func TestRoundTripOfZero(t *testing.T) {
	now := time.Now()
	p := newPoller(t, Config{})
	a := exactAnswer(now, 0, 0)
	if snap, cause, _ := p.judge(a, nil, now); cause != CauseNone || !snap.Synchronized || snap.Delay != 0 {
		t.Fatalf("%v %+v, want synchronized with a round trip of 0", cause, snap)
	}
}

// Timeouts among answers mean a backend that drops polls, as a ratelimit
// directive does, once three of the last eight polls went unanswered; with
// no answer at all, nothing answers.
func TestFewAnswers(t *testing.T) {
	now := time.Now()
	timeout := timeoutError{time.Second}
	for _, tt := range []struct {
		name     string
		answered []bool // oldest first; the last is the timeout judged
		want     Cause
	}{
		{"no answer ever", []bool{false, false, false, false}, CauseNoAnswer},
		{"one of two", []bool{true, false}, CauseNoAnswer},
		{"two of eight lost", []bool{true, true, true, true, true, true, false, false}, CauseNoAnswer},
		{"three of eight lost", []bool{true, true, true, true, true, false, false, false}, CauseFewAnswers},
		{"one of four answered", []bool{true, false, false, false}, CauseFewAnswers},
		{"only the last eight count", []bool{false, false, false, true, true, true, true, true, true, false, false}, CauseNoAnswer},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPoller(t, Config{})
			var cause Cause
			for _, answered := range tt.answered {
				if answered {
					_, cause, _ = p.judge(answerAt(now, 0, nil), nil, now)
				} else {
					_, cause, _ = p.judge(nil, timeout, now)
				}
			}
			if cause != tt.want {
				t.Errorf("cause %v, want %v", cause, tt.want)
			}
		})
	}
}

func TestCauseString(t *testing.T) {
	if got := CauseOffset.String(); got != "clock offset" {
		t.Errorf("CauseOffset = %q", got)
	}
	if got := Cause(len(causeNames)).String(); got != fmt.Sprintf("Cause(%d)", len(causeNames)) {
		t.Errorf("an unknown cause = %q", got)
	}
}

func TestFormatReferenceID(t *testing.T) {
	for _, tt := range []struct {
		refid   uint32
		stratum uint8
		want    string
	}{{0x47505300, 1, "GPS\x00"}, {0x0a000001, 2, "10.0.0.1"}, {0x7f7f0101, 10, "127.127.1.1"}} {
		if got := formatReferenceID(tt.refid, tt.stratum); got != tt.want {
			t.Errorf("formatReferenceID(%#x, %d) = %q, want %q", tt.refid, tt.stratum, got, tt.want)
		}
	}
}

// LastAnswer is when the last synchronized answer arrived.
func TestLastAnswer(t *testing.T) {
	now := time.Now()
	p := newPoller(t, Config{})
	if !p.LastAnswer().IsZero() {
		t.Fatal("an answer before any poll")
	}
	a := answerAt(now, 0, nil)
	p.update(a, nil, now)
	if got := p.LastAnswer(); !got.Equal(a.received) {
		t.Errorf("LastAnswer() = %v, want %v", got, a.received)
	}
	p.update(nil, timeoutError{time.Second}, now.Add(time.Second))
	if got := p.LastAnswer(); !got.Equal(a.received) {
		t.Errorf("after a timeout LastAnswer() = %v, want %v still", got, a.received)
	}
}

// A clock step during a poll (a negative round trip) is no sample.
func TestSteppedClockIgnored(t *testing.T) {
	now := time.Now()
	p := newPoller(t, Config{})
	a := answerAt(now, 0, nil)
	a.arrived = a.sent.Add(-time.Second)
	if snap, cause, _ := p.judge(a, nil, now); snap != nil || cause != CauseSlowAnswers || p.filter.n != 0 {
		t.Errorf("stepped sample judged: %v %+v, %d samples", cause, snap, p.filter.n)
	}
}

func TestDispersionGrows(t *testing.T) {
	taken := time.Now()
	s := &Snapshot{RootDispersion: 1000, Taken: taken}
	if got := s.DispersionAt(taken); got != 1000 {
		t.Errorf("at age 0: %d, want 1000", got)
	}
	// 15 ppm of 100 s is 1.5 ms, 98.3 units of 2^-16 s.
	if got := s.DispersionAt(taken.Add(100 * time.Second)); got < 1000+99 || got > 1000+100 {
		t.Errorf("at age 100s: %d, want 1099 or 1100", got)
	}
	if got := s.DispersionAt(taken.Add(1e6 * time.Hour)); got < s.RootDispersion {
		t.Errorf("dispersion wrapped: %d", got)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{Interval: -time.Second},
		{Interval: time.Nanosecond},
		{Interval: 10 * time.Millisecond},
		{Interval: 2 * time.Hour},
		{Interval: time.Second, Timeout: 2 * time.Second},
		{Interval: time.Second, MaxAge: time.Millisecond},
		{MaxOffset: -1},
		{Timeout: -1},
		{MaxAge: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	// The bounds themselves are allowed.
	for _, cfg := range []Config{
		{Interval: MinInterval},
		{Interval: MaxInterval},
		{Interval: time.Second, Timeout: time.Second},
		{Interval: time.Second, MaxAge: time.Second},
	} {
		if _, err := New(cfg); err != nil {
			t.Errorf("New(%+v): %v", cfg, err)
		}
	}
}

func TestPrecision(t *testing.T) {
	if p := measurePrecision(); p > -10 || p < -30 {
		t.Errorf("precision %d, want between -30 and -10 (1 ns to 1 ms)", p)
	}
}

// waitFor polls until cond holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startPoller runs a Poller against server until the test ends.
func startPoller(t *testing.T, cfg Config) *Poller {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != context.Canceled {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("Run did not return within 2s of cancellation")
		}
	})
	return p
}

// The poller mirrors a real chronyd, falls back to the unsynchronized form
// within MaxAge of losing it, and recovers when it returns.
func TestPollerFollowsChronyd(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{})
	const interval, maxAge = 200 * time.Millisecond, 800 * time.Millisecond
	p := startPoller(t, Config{Server: chronyd.Addr, Interval: interval, MaxAge: maxAge})
	waitFor(t, 3*time.Second, "synchronized", func() bool { return p.Load().Valid(time.Now()) })
	s := p.Load()
	if s.Stratum != 10 || s.ReferenceID != 0x7f7f0101 || s.Leap != ntp.LeapNone {
		t.Errorf("snapshot %+v, want chronyd's local stratum 10 (refid 127.127.1.1)", s)
	}

	chronyd.Stop()
	lost := time.Now()
	// The poller publishes the unsynchronized form when the last answer
	// expires: an expired state is never left in place for readers to
	// judge.
	waitFor(t, maxAge+2*interval+time.Second, "the unsynchronized form published", func() bool {
		s := p.Load()
		return !s.Synchronized && s.Leap == ntp.LeapUnsynchronized && s.Stratum == 0
	})
	if d := time.Since(lost); d > maxAge+5*interval {
		t.Errorf("took %v to give up on a dead backend, bound is %v", d, maxAge)
	}

	chronyd.Start()
	waitFor(t, 3*time.Second, "synchronized again", func() bool { return p.Load().Valid(time.Now()) })
}

// Changed is closed at every new Snapshot, and only then.
func TestPollerChanged(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{})
	p := startPoller(t, Config{Server: chronyd.Addr, Interval: 200 * time.Millisecond})
	for range 3 {
		changed := p.Changed()
		before := p.Load()
		select {
		case <-changed:
		case <-time.After(3 * time.Second):
			t.Fatal("no change announced within 3 s of polls every 200 ms")
		}
		if p.Load() == before {
			t.Error("a change announced, the same Snapshot loaded")
		}
		select {
		case <-p.Changed():
			t.Error("the next change announced before it happened")
		default:
		}
	}
}

// Before its first answer, a poller serves the unsynchronized form.
func TestPollerStartsUnsynchronized(t *testing.T) {
	p, err := New(Config{Server: netip.MustParseAddrPort("127.0.0.1:11123")})
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Load(); s.Synchronized || s.Valid(time.Now()) || s.Leap != ntp.LeapUnsynchronized || s.Stratum != 0 {
		t.Fatalf("synchronized before any answer: %+v", s)
	}
}

func TestPollerMirrorsUnsynchronizedChronyd(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{Unsynchronized: true})
	p := startPoller(t, Config{Server: chronyd.Addr, Interval: 100 * time.Millisecond})
	time.Sleep(500 * time.Millisecond)
	s := p.Load()
	if s.Synchronized || s.Leap != ntp.LeapUnsynchronized || s.Cause != CauseBackendUnsynchronized {
		t.Errorf("snapshot %+v, want the backend's unsynchronized state", s)
	}
}

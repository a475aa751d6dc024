package upstream

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
)

func TestParse(t *testing.T) {
	p, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	received := sent.Add(200 * time.Microsecond)
	const cookie = 0x1122334455667788
	good := ntp.Header{
		Leap: ntp.LeapNone, Version: 4, Mode: ntp.ModeServer, Stratum: 3, Precision: -24,
		RootDelay: 100, RootDispersion: 200, ReferenceID: 0x0a000001,
		ReferenceTime: ntp.TimeFrom(sent.Add(-time.Minute)), OriginTime: cookie,
		ReceiveTime: ntp.TimeFrom(sent.Add(100 * time.Microsecond)), TransmitTime: ntp.TimeFrom(sent.Add(110 * time.Microsecond)),
	}
	tests := []struct {
		name       string
		edit       func(h *ntp.Header)
		wantErr    string // substring; "" for no error
		notOurs    bool
		wantSynced bool
		reason     string
	}{
		{name: "synchronized", edit: func(*ntp.Header) {}, wantSynced: true},
		{name: "leap insert mirrored", edit: func(h *ntp.Header) { h.Leap = ntp.LeapInsertSecond }, wantSynced: true},
		{name: "wrong origin", edit: func(h *ntp.Header) { h.OriginTime++ }, notOurs: true},
		{name: "client mode", edit: func(h *ntp.Header) { h.Mode = ntp.ModeClient }, notOurs: true},
		{name: "unsynchronized backend", edit: func(h *ntp.Header) { h.Leap, h.Stratum = ntp.LeapUnsynchronized, 0 }, reason: "not synchronized"},
		{name: "stratum 16", edit: func(h *ntp.Header) { h.Leap, h.Stratum = ntp.LeapUnsynchronized, 16 }, reason: "not synchronized"},
		{name: "kiss of death", edit: func(h *ntp.Header) { h.Stratum, h.ReferenceID = 0, binary.BigEndian.Uint32([]byte("RATE")) }, wantErr: "RATE"},
		{name: "no timestamps", edit: func(h *ntp.Header) { h.TransmitTime = 0 }, wantErr: "without timestamps"},
		{name: "clock far off", edit: func(h *ntp.Header) {
			h.ReceiveTime = ntp.TimeFrom(sent.Add(time.Second))
			h.TransmitTime = ntp.TimeFrom(sent.Add(time.Second))
		}, reason: "away from the system clock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := good
			tt.edit(&h)
			b := make([]byte, ntp.HeaderSize)
			h.Encode(b)
			snap, err := p.parse(b, cookie, sent, received)
			switch {
			case tt.notOurs:
				if err != errNotOurs {
					t.Fatalf("err = %v, want errNotOurs", err)
				}
				return
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			case err != nil:
				t.Fatalf("parse: %v", err)
			}
			if snap.Synchronized != tt.wantSynced || !strings.Contains(snap.Reason, tt.reason) {
				t.Fatalf("Synchronized = %v (%q), want %v (%q)", snap.Synchronized, snap.Reason, tt.wantSynced, tt.reason)
			}
			if !tt.wantSynced {
				if snap.Leap != ntp.LeapUnsynchronized || snap.Stratum != 0 || snap.ReferenceID != 0 {
					t.Errorf("unsynchronized snapshot %+v", snap)
				}
				return
			}
			if snap.Leap != h.Leap || snap.Stratum != 3 || snap.ReferenceID != h.ReferenceID ||
				snap.ReferenceTime != h.ReferenceTime || snap.RootDelay != 100 || snap.RootDispersion < 200 {
				t.Errorf("snapshot %+v does not mirror %+v", snap, h)
			}
			if snap.Offset.Abs() > 100*time.Microsecond {
				t.Errorf("offset %v, want about 5µs", snap.Offset)
			}
			if !snap.Valid(received) || snap.Valid(received.Add(p.cfg.MaxAge)) {
				t.Errorf("validity window wrong: expires %v after taken", snap.Expires.Sub(snap.Taken))
			}
		})
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
		{Interval: time.Second, Timeout: 2 * time.Second},
		{Interval: time.Second, MaxAge: time.Millisecond},
		{MaxOffset: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
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
	if s := p.Load(); s.Synchronized {
		t.Fatalf("synchronized before any answer: %+v", s)
	}
	waitFor(t, 3*time.Second, "synchronized", func() bool { return p.Load().Valid(time.Now()) })
	s := p.Load()
	if s.Stratum != 10 || s.ReferenceID != 0x7f7f0101 || s.Leap != ntp.LeapNone {
		t.Errorf("snapshot %+v, want chronyd's local stratum 10 (refid 127.127.1.1)", s)
	}

	chronyd.Stop()
	lost := time.Now()
	waitFor(t, maxAge+2*interval+time.Second, "unsynchronized", func() bool { return !p.Load().Valid(time.Now()) })
	if d := time.Since(lost); d > maxAge+5*interval {
		t.Errorf("took %v to give up on a dead backend, bound is %v", d, maxAge)
	}
	if s := p.Load(); s.Leap != ntp.LeapUnsynchronized && s.Valid(time.Now()) {
		t.Errorf("after the backend died: %+v", s)
	}

	chronyd.Start()
	waitFor(t, 3*time.Second, "synchronized again", func() bool { return p.Load().Valid(time.Now()) })
}

func TestPollerMirrorsUnsynchronizedChronyd(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{Unsynchronized: true})
	p := startPoller(t, Config{Server: chronyd.Addr, Interval: 100 * time.Millisecond})
	time.Sleep(500 * time.Millisecond)
	s := p.Load()
	if s.Synchronized || s.Leap != ntp.LeapUnsynchronized || !strings.Contains(s.Reason, "backend is not synchronized") {
		t.Errorf("snapshot %+v, want the backend's unsynchronized state", s)
	}
}

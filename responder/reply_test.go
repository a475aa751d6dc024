package responder

import (
	"bytes"
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/upstream"
)

func syncedSnapshot(taken time.Time) *upstream.Snapshot {
	return &upstream.Snapshot{
		Synchronized:   true,
		Leap:           ntp.LeapNone,
		Stratum:        2,
		Precision:      -23,
		ReferenceID:    0xc0000201,
		ReferenceTime:  ntp.TimeFrom(taken.Add(-10 * time.Second)),
		RootDelay:      0x0123,
		RootDispersion: 0x0456,
		Taken:          taken,
		Expires:        taken.Add(4 * time.Second),
	}
}

// buildReply runs the whole reply path on req as a worker does.
func buildReply(t *testing.T, snap *upstream.Snapshot, req []byte, now, received, sent time.Time) ntp.Header {
	t.Helper()
	mode, v := classify(req, 40000)
	if v != Replied {
		t.Fatalf("request dropped: %s", v)
	}
	var h replyTemplate
	h.prepare(snap, now)
	buf := bytes.Clone(req)
	n := h.build(buf, mode, ntp.TimeFrom(received))
	if n != ntp.HeaderSize || n > len(req) {
		t.Fatalf("reply length %d for a %d-byte request", n, len(req))
	}
	stamp(buf, h.dispersion(sent), ntp.TimeFrom(sent))
	var got ntp.Header
	if err := got.Parse(buf[:n]); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestReplyFields(t *testing.T) {
	now := time.Now()
	snap := syncedSnapshot(now.Add(-time.Second))
	received := now.Add(-time.Millisecond)
	sent := now.Add(time.Millisecond)
	for _, tc := range []struct {
		version, mode, wantMode uint8
	}{{4, ntp.ModeClient, ntp.ModeServer}, {3, ntp.ModeClient, ntp.ModeServer}, {1, ntp.ModeReserved, ntp.ModeServer}, {4, ntp.ModeActive, ntp.ModePassive}} {
		req := packet(tc.version, tc.mode)
		if tc.version == 4 {
			req = append(req, extensionField(0x7777, 28)...) // ignored, and no longer reply
		}
		got := buildReply(t, snap, req, now, received, sent)
		want := ntp.Header{
			Leap: ntp.LeapNone, Version: tc.version, Mode: tc.wantMode,
			Stratum: 2, Poll: 6, Precision: -23,
			RootDelay: 0x0123, RootDispersion: snap.DispersionAt(sent),
			ReferenceID: 0xc0000201, ReferenceTime: snap.ReferenceTime,
			OriginTime: 0xdeadbeefcafef00d, ReceiveTime: ntp.TimeFrom(received), TransmitTime: ntp.TimeFrom(sent),
		}
		if got != want {
			t.Errorf("v%d mode %d:\n got %+v\nwant %+v", tc.version, tc.mode, got, want)
		}
		if got.RootDispersion <= snap.RootDispersion {
			t.Errorf("root dispersion %d did not grow from %d over a second", got.RootDispersion, snap.RootDispersion)
		}
	}
}

func TestUnsynchronizedReply(t *testing.T) {
	now := time.Now()
	stale := syncedSnapshot(now.Add(-10 * time.Second)) // expired 6s ago
	leap3 := syncedSnapshot(now)
	leap3.Synchronized = false
	for name, snap := range map[string]*upstream.Snapshot{
		"before the first answer": upstream.Unsynchronized(-20, upstream.CauseNoAnswerYet, "no answer"),
		"stale":                   stale,
		"backend unsynchronized":  leap3,
	} {
		got := buildReply(t, snap, packet(4, ntp.ModeClient), now, now, now)
		if got.Leap != ntp.LeapUnsynchronized || got.Stratum != 0 || got.ReferenceID != 0 ||
			got.ReferenceTime != 0 || got.RootDelay != 1<<16 || got.RootDispersion != 1<<16 {
			t.Errorf("%s: reply %+v, want chronyd's unsynchronized form", name, got)
		}
		if got.Mode != ntp.ModeServer || got.OriginTime != 0xdeadbeefcafef00d || got.TransmitTime != ntp.TimeFrom(now) {
			t.Errorf("%s: unsynchronized reply lacks its timestamps: %+v", name, got)
		}
	}
}

func TestLeapSecondMirrored(t *testing.T) {
	now := time.Now()
	snap := syncedSnapshot(now)
	snap.Leap = ntp.LeapInsertSecond
	if got := buildReply(t, snap, packet(4, ntp.ModeClient), now, now, now); got.Leap != ntp.LeapInsertSecond {
		t.Errorf("leap %d, want %d", got.Leap, ntp.LeapInsertSecond)
	}
}

// Around a leap second the reply's leap indicator follows the clock of the
// batch, not the snapshot's age: the announcement, then chronyd's leap 3
// with the stratum and reference kept, then no leap at all.
func TestLeapSecondWindow(t *testing.T) {
	taken := time.Date(2016, 12, 31, 23, 59, 58, 0, time.UTC)
	snap := syncedSnapshot(taken)
	snap.Leap = ntp.LeapInsertSecond
	snap.LeapStart = taken.Add(1500 * time.Millisecond) // 23:59:59.5
	for _, tc := range []struct {
		after     time.Duration
		wantLeap  uint8
		wantStrat uint8
	}{
		{0, ntp.LeapInsertSecond, 2},
		{1499 * time.Millisecond, ntp.LeapInsertSecond, 2},
		{1500 * time.Millisecond, ntp.LeapUnsynchronized, 2},
		{3499 * time.Millisecond, ntp.LeapUnsynchronized, 2},
		{3500 * time.Millisecond, ntp.LeapNone, 2},
	} {
		now := taken.Add(tc.after)
		got := buildReply(t, snap, packet(4, ntp.ModeClient), now, now, now)
		if got.Leap != tc.wantLeap || got.Stratum != tc.wantStrat || got.ReferenceID != snap.ReferenceID {
			t.Errorf("%v after the poll: leap %d stratum %d refid %x, want leap %d stratum %d refid %x",
				tc.after, got.Leap, got.Stratum, got.ReferenceID, tc.wantLeap, tc.wantStrat, snap.ReferenceID)
		}
	}
}

// FuzzReply checks that no datagram panics the reply path and that every
// reply is no longer than its request and answers it.
func FuzzReply(f *testing.F) {
	for _, tc := range requestClasses {
		f.Add(tc.pkt, uint16(40000))
	}
	now := time.Now()
	snap := syncedSnapshot(now)
	f.Fuzz(func(t *testing.T, req []byte, port uint16) {
		mode, v := classify(req, port)
		if v != Replied {
			return
		}
		var h replyTemplate
		h.prepare(snap, now)
		buf := bytes.Clone(req)
		n := h.build(buf, mode, ntp.TimeFrom(now))
		stamp(buf, h.dispersion(now), ntp.TimeFrom(now))
		if n > len(req) {
			t.Fatalf("reply of %d bytes to a %d-byte request", n, len(req))
		}
		var got ntp.Header
		if err := got.Parse(buf[:n]); err != nil {
			t.Fatal(err)
		}
		if got.Version != req[0]>>3&7 || !bytes.Equal(buf[24:32], req[40:48]) || got.Poll != max(int8(req[2]), minPoll) {
			t.Fatalf("reply %+v does not answer request %x", got, req[:ntp.HeaderSize])
		}
		if got.Mode != ntp.ModeServer && got.Mode != ntp.ModePassive {
			t.Fatalf("reply mode %d", got.Mode)
		}
	})
}

func BenchmarkReplyPath(b *testing.B) {
	now := time.Now()
	snap := syncedSnapshot(now)
	req := packet(4, ntp.ModeClient)
	buf := make([]byte, maxRequestSize)
	var h replyTemplate
	b.ReportAllocs()
	for b.Loop() {
		n := copy(buf, req)
		h.prepare(snap, now)
		mode, v := classify(buf[:n], 40000)
		if v != Replied {
			b.Fatal("dropped")
		}
		h.build(buf, mode, ntp.TimeFrom(now))
		stamp(buf, h.dispersion(now), ntp.TimeFrom(now))
	}
}

// With rate limiting, replies carry a poll raised to the limit's interval,
// as chronyd's do; a client asking for more keeps its own.
func TestPollRaised(t *testing.T) {
	now := time.Now()
	snap := syncedSnapshot(now.Add(-time.Second))
	for _, tt := range []struct {
		interval  int
		poll, got int8
	}{{3, 0, 3}, {3, 6, 6}, {-2, -6, -2}, {minPoll, -30, minPoll}} {
		h := replyTemplate{pollRaise: int8(tt.interval - minPoll)}
		h.prepare(snap, now)
		req := packet(4, ntp.ModeClient)
		req[2] = byte(tt.poll)
		buf := bytes.Clone(req)
		h.build(buf, ntp.ModeClient, ntp.TimeFrom(now))
		if got := int8(buf[2]); got != tt.got {
			t.Errorf("limit interval %d, request poll %d: reply poll %d, want %d", tt.interval, tt.poll, got, tt.got)
		}
	}
}

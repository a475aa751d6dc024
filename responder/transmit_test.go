package responder

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/ntp"
)

func TestSendCosts(t *testing.T) {
	var c sendCosts
	if got := c.perMessage(4); got != initialCost {
		t.Errorf("before any call: %v, want %v", got, initialCost)
	}
	// Calls of four messages take 10 µs, but for one an interrupt made it
	// 200 µs; calls of one take 3 µs.
	for i := range 7 {
		d := 10 * time.Microsecond
		if i == 3 {
			d = 200 * time.Microsecond
		}
		c.observe(4, d)
		c.observe(1, 3*time.Microsecond)
	}
	if got := c.perMessage(4); got != 2*time.Microsecond {
		t.Errorf("spacing in calls of 4: %v, want 10µs/5 (the slow call ignored)", got)
	}
	if got := c.perMessage(1); got != 1500*time.Nanosecond {
		t.Errorf("spacing in calls of 1: %v, want 3µs/2", got)
	}
	if got := c.perMessage(2); got != initialCost {
		t.Errorf("calls of 2, never measured: %v, want %v", got, initialCost)
	}
	c.observe(0, time.Second)
	c.observe(largeChunk+1, time.Second)
	c.observe(3, -time.Second)
	c.observe(3, 0)
	if got := c.perMessage(3); got != initialCost {
		t.Errorf("invalid observations were kept: %v", got)
	}
	// The largest chunk is measured too.
	for range minCalls {
		c.observe(largeChunk, 34*time.Microsecond)
	}
	if got := c.perMessage(largeChunk); got != 2*time.Microsecond {
		t.Errorf("spacing in calls of %d: %v, want 34µs/17", largeChunk, got)
	}
}

// A size's first calls, one of them stretched, predict nothing until a
// third shows which is the outlier: the stretched one alone, or the
// larger of two, used to be the prediction, and stamped a worker's first
// replies milliseconds after they left.
func TestSendCostsFirstCalls(t *testing.T) {
	var c sendCosts
	c.observe(1, 2600*time.Microsecond)
	if got := c.perMessage(1); got != initialCost {
		t.Errorf("after one stretched call: %v, want %v", got, initialCost)
	}
	c.observe(1, 3*time.Microsecond)
	if got := c.perMessage(1); got != initialCost {
		t.Errorf("after two calls: %v, want %v", got, initialCost)
	}
	c.observe(1, 3*time.Microsecond)
	if got := c.perMessage(1); got != 1500*time.Nanosecond {
		t.Errorf("after three calls: %v, want 3µs/2, the stretched call ignored", got)
	}
	// Four calls, two stretched: the lower of the middle two.
	c.observe(1, 2600*time.Microsecond)
	if got := c.perMessage(1); got != 1500*time.Nanosecond {
		t.Errorf("after four calls, two stretched: %v, want 3µs/2", got)
	}
}

func TestParseStamping(t *testing.T) {
	for _, s := range []Stamping{StampAuto, StampDevice, StampSyscall} {
		if got, err := ParseStamping(s.String()); err != nil || got != s {
			t.Errorf("ParseStamping(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseStamping("kernel"); err == nil {
		t.Error("ParseStamping accepted kernel")
	}
	if got := Stamping(7).String(); got != "Stamping(7)" {
		t.Errorf("an unknown Stamping prints as %q", got)
	}
}

func TestCounterString(t *testing.T) {
	if got := DroppedShort.String(); got != "dropped_short" {
		t.Errorf("DroppedShort = %q", got)
	}
	if got := NumCounters.String(); got != "unknown" {
		t.Errorf("a counter past the table = %q", got)
	}
}

// Each reply is stamped with its predicted departure: its chunk's clock
// reading plus its place times the predicted spacing, the reading taken
// after the previous call and before the reply is handed to the kernel; each
// chunk's call is measured under its own size. How long the stamping took
// does not matter: a busy machine may preempt the test anywhere.
func TestSendRepliesSpacing(t *testing.T) {
	conn := &timedConn{}
	w := newWorker(conn, Config{BatchSize: 64, Source: newStaticSource(freshSnapshot()), Logger: nopLogger})
	w.template.prepare(freshSnapshot(), time.Now())
	// A predicted 0.8 ms between the messages of a call of 4: enough
	// calls that the two fast ones made now do not outvote them.
	for range minCalls + 1 {
		w.sendCosts.observe(smallChunk, 4*time.Millisecond)
	}
	for i := range w.msgs[:8] {
		w.msgs[i].N = ntp.HeaderSize
		w.msgs[i].Peer = netip.MustParseAddrPort("192.0.2.1:123")
	}
	notBefore := time.Now()
	if sent, err := w.sendReplies(8); err != nil || sent != 8 {
		t.Fatalf("sent %d, %v", sent, err)
	}
	spacing := 800 * time.Microsecond
	// NTP's 32-bit fraction and Go's nanoseconds round apart by a nanosecond.
	const rounding = time.Microsecond
	for call, stamps := range conn.calls {
		reading := stamps[0].Time(notBefore).Add(-spacing)
		if reading.Before(notBefore.Add(-rounding)) || reading.After(conn.entered[call].Add(rounding)) {
			t.Errorf("call %d: its clock reading, %v, is not between %v and the call at %v",
				call, reading.Format(time.StampMicro), notBefore.Format(time.StampMicro), conn.entered[call].Format(time.StampMicro))
		}
		for j, s := range stamps {
			if d := s.Time(notBefore).Sub(reading) - time.Duration(j+1)*spacing; d.Abs() > rounding {
				t.Errorf("call %d, reply %d: stamped %v after the reading, want %v", call, j, s.Time(notBefore).Sub(reading), time.Duration(j+1)*spacing)
			}
		}
		notBefore = conn.left[call]
	}
	if n := w.sendCosts.bySize[smallChunk].n; n != minCalls+3 {
		t.Errorf("%d calls of %d measured, want %d (%d before, two now)", n, smallChunk, minCalls+3, minCalls+1)
	}
}

// timedConn records the transmit timestamps of each WriteBatch call, and
// when it was entered and left.
type timedConn struct {
	recordingConn
	entered, left []time.Time
}

func (c *timedConn) WriteBatch(msgs []batch.Message) (int, error) {
	c.entered = append(c.entered, time.Now())
	defer func() { c.left = append(c.left, time.Now()) }()
	return c.recordingConn.WriteBatch(msgs)
}

// recordingConn records the transmit timestamps of each WriteBatch call.
type recordingConn struct {
	batch.Conn
	calls [][]ntp.Time64
}

func (c *recordingConn) WriteBatch(msgs []batch.Message) (int, error) {
	var stamps []ntp.Time64
	for _, m := range msgs {
		var h ntp.Header
		h.Parse(m.Buffer)
		stamps = append(stamps, h.TransmitTime)
	}
	c.calls = append(c.calls, stamps)
	return len(msgs), nil
}

// Short batches go out in chunks of 4, longer ones in chunks of 16, and
// every reply is stamped after the clock reading of its chunk, later the
// further back it waits.
func TestSendRepliesChunks(t *testing.T) {
	for _, tt := range []struct {
		count int
		sizes []int
	}{
		{1, []int{1}},
		{5, []int{4, 1}},
		{32, []int{4, 4, 4, 4, 4, 4, 4, 4}},
		{33, []int{16, 16, 1}},
		{64, []int{16, 16, 16, 16}},
	} {
		conn := &recordingConn{}
		w := newWorker(conn, Config{BatchSize: 64, Source: newStaticSource(freshSnapshot()), Logger: nopLogger})
		w.template.prepare(freshSnapshot(), time.Now())
		for i := range w.msgs[:tt.count] {
			w.msgs[i].N = ntp.HeaderSize
			w.msgs[i].Peer = netip.MustParseAddrPort("192.0.2.1:123")
		}
		before := ntp.TimeFrom(time.Now())
		sent, err := w.sendReplies(tt.count)
		if err != nil || sent != tt.count {
			t.Fatalf("%d replies: sent %d, %v", tt.count, sent, err)
		}
		var sizes []int
		for i, stamps := range conn.calls {
			sizes = append(sizes, len(stamps))
			for j, s := range stamps {
				if s < before || (j > 0 && s <= stamps[j-1]) {
					t.Errorf("%d replies, call %d: stamps %v not increasing from %v", tt.count, i, stamps, before)
				}
			}
		}
		if !slices.Equal(sizes, tt.sizes) {
			t.Errorf("%d replies sent in calls of %v, want %v", tt.count, sizes, tt.sizes)
		}
	}
}

// Stamped at the device, a batch goes out in one call, each reply stamped
// with the time the batch was read (what it keeps where the program leaves
// it alone); an empty batch makes no call.
func TestSendStampedAtDevice(t *testing.T) {
	conn := &recordingConn{}
	w := newWorker(conn, Config{BatchSize: 64, Source: newStaticSource(freshSnapshot()), Logger: nopLogger})
	w.deviceStamps.Store(true)
	w.batchStart = time.Now().Add(-time.Millisecond)
	w.template.prepare(freshSnapshot(), w.batchStart)
	if sent, err := w.sendReplies(0); sent != 0 || err != nil || len(conn.calls) != 0 {
		t.Fatalf("no replies: sent %d, %v, %d calls", sent, err, len(conn.calls))
	}
	for i := range w.msgs[:40] {
		w.msgs[i].N = ntp.HeaderSize
		w.msgs[i].Peer = netip.MustParseAddrPort("192.0.2.1:123")
	}
	if sent, err := w.sendReplies(40); sent != 40 || err != nil {
		t.Fatalf("sent %d, %v", sent, err)
	}
	if len(conn.calls) != 1 || len(conn.calls[0]) != 40 {
		t.Fatalf("calls of %d replies, want one of 40", len(conn.calls))
	}
	for i, s := range conn.calls[0] {
		if s != ntp.TimeFrom(w.batchStart) {
			t.Fatalf("reply %d stamped %v, want the batch's read time %v", i, s.Time(w.batchStart), w.batchStart)
		}
	}
}

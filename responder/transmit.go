package responder

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/responder/egress"
)

// Stamping selects where replies get their transmit timestamps.
type Stamping uint8

const (
	// StampAuto stamps at the device where the eBPF program can be
	// attached (Linux 6.6 or later, CAP_BPF and CAP_NET_ADMIN), and before
	// each send elsewhere.
	StampAuto Stamping = iota
	// StampDevice has an eBPF program write the transmit timestamp as
	// each reply reaches the network device (package egress), and fails
	// Listen where it cannot be attached.
	StampDevice
	// StampSyscall stamps each reply in user space, before the sendmmsg
	// that sends it, with its predicted departure.
	StampSyscall
)

func (s Stamping) String() string {
	switch s {
	case StampAuto:
		return "auto"
	case StampDevice:
		return "device"
	case StampSyscall:
		return "syscall"
	}
	return fmt.Sprintf("Stamping(%d)", uint8(s))
}

// ParseStamping parses the names that String returns.
func ParseStamping(s string) (Stamping, error) {
	for _, v := range []Stamping{StampAuto, StampDevice, StampSyscall} {
		if s == v.String() {
			return v, nil
		}
	}
	return 0, fmt.Errorf("unknown transmit stamping %q (want auto, device or syscall)", s)
}

// attachStamper attaches the eBPF stamper for every worker's socket, as
// the configuration asks.
func (s *Server) attachStamper() error {
	if s.cfg.TransmitStamps == StampSyscall {
		return nil
	}
	err := s.tryAttachStamper()
	if err == nil {
		s.deviceStamps.Store(true)
		return nil
	}
	if s.cfg.TransmitStamps == StampDevice {
		return fmt.Errorf("responder: transmit stamps at the device: %w", err)
	}
	s.cfg.Logger.Info("stamping replies before each send: the device stamper is unavailable", zap.Error(err))
	return nil
}

func (s *Server) tryAttachStamper() error {
	if !egress.Available {
		return errors.New("only Linux can stamp at the device")
	}
	st, err := egress.Attach()
	if err != nil {
		return err
	}
	for _, w := range s.workers {
		cookie := w.conn.Info().Cookie
		if cookie == 0 {
			st.Close()
			return fmt.Errorf("socket on %s has no cookie", w.conn.LocalAddr())
		}
		if err := st.Add(cookie); err != nil {
			st.Close()
			return err
		}
	}
	s.stamper = st
	return nil
}

// StampDevices returns the network devices at which replies are stamped,
// or nil if they are stamped before each send.
func (s *Server) StampDevices() []string {
	if s.stamper == nil || !s.deviceStamps.Load() {
		return nil
	}
	return s.stamper.Devices()
}

// A reply's transmit timestamp should say when the reply left, but one
// sendmmsg sends its messages one after another: on loopback here each
// costs about 1.5 µs, so the last of 64 leaves some 100 µs after a clock
// reading taken before the call. fastntp therefore sends a batch's replies
// in chunks, reads the clock before each chunk, and stamps each reply with
// that reading plus its predicted wait: its position times the spacing of
// messages in recent calls that sent as many.
//
// Every extra chunk costs a system call (about 1 µs in the VM fastntp was
// measured in, most of a message's own cost), so only short batches, whose
// worker is keeping up with its requests, go out in small chunks. A longer
// batch means a backlog: it goes out in large chunks, and the worker keeps
// its throughput. docs/benchmarking.md has the measured trade-off.
const (
	// smallChunk is the chunk size of a short batch: a reply waits for at
	// most three others.
	smallChunk = 4
	// largeChunk is the chunk size of a longer batch: four calls for a
	// batch of 64.
	largeChunk = 16
	// shortBatch is the longest batch sent in small chunks.
	shortBatch = 32
)

// sendCosts predicts how long a call that sends n messages takes, from
// recent calls of the same size. A median per size is not misled by the
// rare call that an interrupt stretched, nor by the fixed cost of a call,
// which a single per-message average would spread wrongly over calls of
// other sizes.
type sendCosts struct {
	bySize [largeChunk + 1]costRing
}

// costRing holds the durations of recent calls of one size.
type costRing struct {
	recent [8]time.Duration
	next   uint8
	n      uint8
	median time.Duration
}

// initialCost is the predicted cost of one message before enough calls
// of its size were measured.
const initialCost = time.Microsecond

// minCalls is how many calls of a size must have been measured before
// their median predicts: with one or two, a single call that an interrupt
// or the scheduler stretched is the median, and a worker's first replies
// (a client's only ones, on a quiet server) were stamped up to 1.3 ms
// after they left.
const minCalls = 3

// perMessage returns the predicted spacing of the messages of a call that
// sends n: the call's duration split into n+1 equal parts, one per message
// and one for entering and leaving the kernel, which happen before the
// first message leaves and after the last.
func (c *sendCosts) perMessage(n int) time.Duration {
	if r := &c.bySize[n]; r.n >= minCalls {
		return r.median / time.Duration(n+1)
	}
	return initialCost
}

// observe records a call that sent n messages in d.
func (c *sendCosts) observe(n int, d time.Duration) {
	if n < 1 || n > largeChunk || d <= 0 {
		return
	}
	r := &c.bySize[n]
	r.recent[r.next] = d
	r.next = (r.next + 1) % uint8(len(r.recent))
	r.n = min(r.n+1, uint8(len(r.recent)))
	sorted := r.recent // a copy: the ring keeps its order
	s := sorted[:r.n]
	slices.Sort(s)
	// The lower median of an even count: a stamp predicted too early is
	// no worse than one too late, and stretched calls are the outliers.
	r.median = s[(len(s)-1)/2]
}

// sendReplies stamps and sends the first count messages of w.msgs and
// returns how many the kernel accepted.
func (w *worker) sendReplies(count int) (int, error) {
	if w.deviceStamps.Load() {
		return w.sendStampedAtDevice(count)
	}
	chunk := largeChunk
	if count <= shortBatch {
		chunk = smallChunk
	}
	sent := 0
	for start := 0; start < count; start += chunk {
		end := min(start+chunk, count)
		before := time.Now()
		dispersion := w.template.dispersion(before)
		cost := w.sendCosts.perMessage(end - start)
		for i := start; i < end; i++ {
			leaves := before.Add(time.Duration(i-start+1) * cost)
			stamp(w.msgs[i].Buffer, dispersion, ntp.TimeFrom(leaves))
		}
		n, err := w.conn.WriteBatch(w.msgs[start:end])
		w.sendCosts.observe(end-start, time.Since(before))
		sent += n
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// sendStampedAtDevice sends the replies in one call, for the eBPF program
// rewrites each transmit timestamp as the reply reaches the device. The
// stamp written here, the time the batch was read, microseconds before
// the call, is what a reply keeps where the program leaves it alone: when
// it leaves through a device without the program (one so new that the
// program has not reached it yet, or one that refused it), and when the
// program's clock disagrees with it by more than egress.Guard and not by
// whole seconds (which it corrects: a changed TAI offset). It needs no
// clock reading of its own: one cost about 60 ns a call of 64 replies.
func (w *worker) sendStampedAtDevice(count int) (int, error) {
	if count == 0 {
		return 0, nil
	}
	dispersion := w.template.dispersion(w.batchStart)
	transmit := ntp.TimeFrom(w.batchStart)
	for i := range count {
		stamp(w.msgs[i].Buffer, dispersion, transmit)
	}
	return w.conn.WriteBatch(w.msgs[:count])
}

package upstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fastntp/fastntp/internal/ntp"
)

// DefaultServer is where rsntp, and so fastntp, expects the backend chronyd.
var DefaultServer = netip.MustParseAddrPort("127.0.0.1:11123")

// Config configures a Poller. The zero value of each field selects the
// documented default.
type Config struct {
	// Server is the backend NTP server. If zero, DefaultServer.
	Server netip.AddrPort
	// Interval is the time between polls. If zero, one second.
	Interval time.Duration
	// Timeout is how long one poll waits for its answer. If zero, half the
	// interval, at most one second.
	Timeout time.Duration
	// MaxAge is how long the last valid answer may be served after it
	// arrived before the responder falls back to the unsynchronized form.
	// If zero, four intervals.
	MaxAge time.Duration
	// MaxOffset is the largest disagreement between the backend's clock and
	// the system clock that still lets fastntp serve the system clock as
	// synchronized. If zero, 10 ms.
	MaxOffset time.Duration
	// Logger receives synchronization state changes. If nil, nothing is
	// logged.
	Logger *zap.Logger
}

func (c Config) withDefaults() Config {
	if !c.Server.IsValid() {
		c.Server = DefaultServer
	}
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = min(c.Interval/2, time.Second)
	}
	if c.MaxAge == 0 {
		c.MaxAge = 4 * c.Interval
	}
	if c.MaxOffset == 0 {
		c.MaxOffset = 10 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Interval < 0 || c.Timeout < 0 || c.MaxAge < 0 || c.MaxOffset < 0:
		return errors.New("upstream: durations must not be negative")
	case c.Server.Port() == 0:
		return fmt.Errorf("upstream: server %s has no port", c.Server)
	case c.Timeout > c.Interval:
		return fmt.Errorf("upstream: timeout %v exceeds the poll interval %v", c.Timeout, c.Interval)
	case c.MaxAge < c.Interval:
		return fmt.Errorf("upstream: maximum age %v is shorter than the poll interval %v", c.MaxAge, c.Interval)
	}
	return nil
}

// A Poller polls the backend and publishes Snapshots. Its methods are safe
// for concurrent use.
type Poller struct {
	cfg       Config
	precision int8
	current   atomic.Pointer[Snapshot]
	lastGood  *Snapshot // owned by Run's goroutine
}

// New returns a Poller whose current Snapshot is unsynchronized until Run
// receives the first valid answer.
func New(cfg Config) (*Poller, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Poller{cfg: cfg, precision: measurePrecision()}
	p.current.Store(Unsynchronized(p.precision, "no answer from the backend yet"))
	return p, nil
}

// Load returns the current Snapshot. It is never nil.
func (p *Poller) Load() *Snapshot { return p.current.Load() }

// Run polls the backend until ctx is done, then returns ctx's error.
func (p *Poller) Run(ctx context.Context) error {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.cfg.Server))
	if err != nil {
		return fmt.Errorf("upstream: dial %s: %w", p.cfg.Server, err)
	}
	defer conn.Close()
	// A poll blocked in Read must not delay shutdown by its timeout.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	ticker := time.NewTicker(p.cfg.Interval)
	defer ticker.Stop()
	for {
		p.update(p.poll(ctx, conn))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// update publishes the outcome of one poll and logs a change of state.
func (p *Poller) update(next *Snapshot, err error) {
	now := time.Now()
	switch {
	case err == nil && next.Synchronized:
		p.lastGood = next
	case err == nil:
		p.lastGood = nil // the backend itself says not to trust it
	case p.lastGood != nil && p.lastGood.Valid(now):
		// Keep serving the last valid answer; it expires on its own.
		next = p.lastGood
	default:
		next = Unsynchronized(p.precision, err.Error())
	}
	prev := p.current.Swap(next)
	switch {
	case next.Synchronized && !prev.Valid(now):
		p.cfg.Logger.Info("synchronized to backend",
			zap.Stringer("server", p.cfg.Server),
			zap.Uint8("stratum", next.Stratum),
			zap.String("reference_id", formatReferenceID(next.ReferenceID, next.Stratum)),
			zap.Duration("offset", next.Offset))
	case !next.Synchronized && (prev.Synchronized || prev.Reason != next.Reason):
		p.cfg.Logger.Warn("serving unsynchronized replies",
			zap.Stringer("server", p.cfg.Server), zap.String("reason", next.Reason))
	}
}

// poll sends one request and waits for its answer. A nil error with an
// unsynchronized Snapshot means the backend answered but is not a valid
// source of time.
func (p *Poller) poll(ctx context.Context, conn *net.UDPConn) (*Snapshot, error) {
	var req, resp [ntp.HeaderSize + 4]byte // one spare byte detects oversize answers
	req[0] = ntp.LeapVersionMode(ntp.LeapNone, 4, ntp.ModeClient)
	// A random transmit timestamp is the request's cookie: only the backend,
	// which echoes it as the origin, can know it.
	cookie := rand.Uint64()
	binary.BigEndian.PutUint64(req[40:], cookie)

	sent := time.Now()
	if err := conn.SetReadDeadline(sent.Add(p.cfg.Timeout)); err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if _, err := conn.Write(req[:ntp.HeaderSize]); err != nil {
		return nil, fmt.Errorf("send to backend %s: %w", p.cfg.Server, err)
	}
	for {
		n, err := conn.Read(resp[:])
		received := time.Now()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				return nil, fmt.Errorf("no answer from backend %s within %v", p.cfg.Server, p.cfg.Timeout)
			}
			return nil, fmt.Errorf("receive from backend %s: %w", p.cfg.Server, err)
		}
		snap, err := p.parse(resp[:n], cookie, sent, received)
		if errors.Is(err, errNotOurs) {
			continue // a late answer to an earlier poll, or junk
		}
		return snap, err
	}
}

var errNotOurs = errors.New("answer does not match the request")

// parse turns the backend's answer into a Snapshot.
func (p *Poller) parse(b []byte, cookie uint64, sent, received time.Time) (*Snapshot, error) {
	var h ntp.Header
	if len(b) != ntp.HeaderSize || h.Parse(b) != nil {
		return nil, errNotOurs
	}
	if h.Mode != ntp.ModeServer || uint64(h.OriginTime) != cookie {
		return nil, errNotOurs
	}
	if h.Leap == ntp.LeapUnsynchronized || h.Stratum == 0 || h.Stratum >= ntp.MaxStratum {
		if h.Leap != ntp.LeapUnsynchronized {
			return nil, fmt.Errorf("backend %s sent a kiss-o'-death %q", p.cfg.Server, kissCode(h.ReferenceID))
		}
		return Unsynchronized(h.Precision, "backend is not synchronized"), nil
	}
	if h.ReceiveTime.IsZero() || h.TransmitTime.IsZero() {
		return nil, fmt.Errorf("backend %s sent a reply without timestamps", p.cfg.Server)
	}
	// RFC 5905 on-wire calculation; the times are converted against the
	// local clock so the era is right.
	t2 := h.ReceiveTime.Time(sent)
	t3 := h.TransmitTime.Time(sent)
	offset := (t2.Sub(sent) + t3.Sub(received)) / 2
	if offset.Abs() > p.cfg.MaxOffset {
		return Unsynchronized(h.Precision, fmt.Sprintf(
			"backend clock is %v away from the system clock, beyond the %v bound", offset, p.cfg.MaxOffset)), nil
	}
	return &Snapshot{
		Synchronized:  true,
		Leap:          h.Leap,
		Stratum:       h.Stratum,
		Precision:     max(h.Precision, p.precision),
		ReferenceID:   h.ReferenceID,
		ReferenceTime: h.ReferenceTime,
		RootDelay:     h.RootDelay,
		// The system clock we serve may differ from the backend's by the
		// measured offset; that error belongs in the bound we advertise.
		RootDispersion: h.RootDispersion.Add(ntp.ShortFromSeconds(offset.Abs().Seconds())),
		Taken:          received,
		Expires:        received.Add(p.cfg.MaxAge),
		Offset:         offset,
	}, nil
}

func kissCode(refid uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], refid)
	return string(b[:])
}

// formatReferenceID renders a reference ID for logs: ASCII at stratum 1, an
// IPv4 address (or IPv6 hash) above it.
func formatReferenceID(refid uint32, stratum uint8) string {
	if stratum <= 1 {
		return kissCode(refid)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], refid)
	return netip.AddrFrom4(b).String()
}

// measurePrecision estimates the system clock's precision the way NTP
// servers report it: the base-2 logarithm of the shortest interval the clock
// can resolve, including the cost of reading it.
func measurePrecision() int8 {
	best := time.Duration(1<<63 - 1)
	for range 100 {
		t0 := time.Now()
		t1 := time.Now()
		for t1.Equal(t0) {
			t1 = time.Now()
		}
		best = min(best, t1.Sub(t0))
	}
	precision := int8(0)
	for d := time.Second; d > best && precision > -30; d /= 2 {
		precision--
	}
	return precision
}

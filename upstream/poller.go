package upstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/ntp"
)

// DefaultServer is where rsntp, and so fastntp, expects the backend chronyd.
var DefaultServer = netip.MustParseAddrPort("127.0.0.1:11123")

// MinInterval is the shortest poll interval New accepts. Faster polling
// tells nothing more about a backend that updates its state every few
// seconds, and costs it a core.
const MinInterval = 100 * time.Millisecond

// MaxInterval is the longest poll interval New accepts: the state must be
// refreshed well within the hour for its age to mean anything.
const MaxInterval = time.Hour

// maxBackoff bounds how far a backend's kiss-o'-death slows the polls, as a
// multiple of the configured interval.
const maxBackoff = 16

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

// validate checks a configuration with its defaults filled in. (Its tests,
// and the mutation tests, read if statements better than a switch's cases,
// whose conditions Go's coverage profile attributes to no block.)
func (c Config) validate() error {
	// A negative interval or maximum age fails the checks of their range
	// below.
	if c.Timeout < 0 || c.MaxOffset < 0 {
		return errors.New("upstream: durations must not be negative")
	}
	if c.Server.Port() == 0 {
		return fmt.Errorf("upstream: server %s has no port", c.Server)
	}
	if c.Interval < MinInterval || c.Interval > MaxInterval {
		return fmt.Errorf("upstream: poll interval %v is outside %v..%v", c.Interval, MinInterval, MaxInterval)
	}
	if c.Timeout > c.Interval {
		return fmt.Errorf("upstream: timeout %v exceeds the poll interval %v", c.Timeout, c.Interval)
	}
	if c.MaxAge < c.Interval {
		return fmt.Errorf("upstream: maximum age %v is shorter than the poll interval %v", c.MaxAge, c.Interval)
	}
	return nil
}

// Cause says why the state served is not the backend's synchronized state,
// or what went wrong with the backend while its last state is still served.
type Cause uint8

// The causes. Each is logged once when it starts, however often it recurs
// and whatever the details (an offset's size, say) of each occurrence.
const (
	CauseNone Cause = iota
	CauseNoAnswerYet
	CauseNoAnswer
	CauseFewAnswers
	CauseBackendUnsynchronized
	CauseOffset
	CauseSlowAnswers
	CauseRateLimited
	CauseRefused
	CauseKissOfDeath
	CauseBadAnswer
)

var causeNames = [...]string{
	CauseNone:                  "none",
	CauseNoAnswerYet:           "no answer yet",
	CauseNoAnswer:              "no answer",
	CauseFewAnswers:            "few answers",
	CauseBackendUnsynchronized: "backend unsynchronized",
	CauseOffset:                "clock offset",
	CauseSlowAnswers:           "slow answers",
	CauseRateLimited:           "rate limited",
	CauseRefused:               "refused",
	CauseKissOfDeath:           "kiss-o'-death",
	CauseBadAnswer:             "bad answer",
}

func (c Cause) String() string {
	if int(c) < len(causeNames) {
		return causeNames[c]
	}
	return fmt.Sprintf("Cause(%d)", uint8(c))
}

// A Poller polls the backend and publishes Snapshots. Its methods are safe
// for concurrent use.
type Poller struct {
	cfg        Config
	precision  int8
	current    atomic.Pointer[Snapshot]
	lastAnswer atomic.Int64 // Unix nanoseconds of the last synchronized answer, 0 before one
	readLag    atomic.Int64 // nanoseconds the last answer waited in the socket

	changedMu sync.Mutex
	changed   chan struct{} // closed when the next Snapshot is published

	// Owned by Run's goroutine.
	lastGood *Snapshot // the last synchronized state, served until it expires
	filter   offsetFilter
	interval time.Duration // the poll interval, lengthened by kiss-o'-death
	answered uint8         // one bit per recent poll, newest lowest: answered or not
	polls    int
	problem  Cause  // the cause last logged
	reason   string // and its words
}

// New returns a Poller whose current Snapshot is unsynchronized until Run
// receives the first valid answer.
func New(cfg Config) (*Poller, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Poller{cfg: cfg, precision: measurePrecision(), interval: cfg.Interval, changed: make(chan struct{})}
	p.current.Store(Unsynchronized(p.precision, CauseNoAnswerYet, "no answer from the backend yet"))
	p.problem, p.reason = CauseNoAnswerYet, "no answer from the backend yet"
	return p, nil
}

// Load returns the current Snapshot. It is never nil.
func (p *Poller) Load() *Snapshot { return p.current.Load() }

// Changed returns a channel that is closed when a Snapshot other than the
// current one is published, for a reader that copies the state elsewhere
// (the XDP fast path's map) instead of loading it per request. Call it
// before Load, so that no change falls between the two unseen.
func (p *Poller) Changed() <-chan struct{} {
	p.changedMu.Lock()
	defer p.changedMu.Unlock()
	return p.changed
}

// LastAnswer returns when the backend's last synchronized answer arrived,
// or the zero Time if none has.
func (p *Poller) LastAnswer() time.Time {
	if ns := p.lastAnswer.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// ReadLag returns how long the backend's last answer waited in the
// socket, from the kernel's receive timestamp to the poller's read: the
// scheduler's delay on a busy machine, which dating answers by that
// timestamp keeps out of the measured offset and round trip.
func (p *Poller) ReadLag() time.Duration { return time.Duration(p.readLag.Load()) }

// Run polls the backend until ctx is done, then returns ctx's error.
func (p *Poller) Run(ctx context.Context) error {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.cfg.Server))
	if err != nil {
		return fmt.Errorf("upstream: dial %s: %w", p.cfg.Server, err)
	}
	defer conn.Close()
	// The kernel's receive timestamp dates the answer when it arrived, not
	// when a busy scheduler gets round to reading it.
	if raw, err := conn.SyscallConn(); err == nil {
		batch.EnableTimestamps(raw)
	}
	// A poll blocked in Read must not delay shutdown by its timeout.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	timer := time.NewTimer(0)
	defer timer.Stop()
	nextPoll := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		if now := time.Now(); now.Before(nextPoll) {
			// Woken by the served state's expiry: say so now, not at the
			// next poll, which a backed-off interval may put far off.
			p.update(nil, nil, now)
		} else {
			a, err := p.poll(ctx, conn)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p.update(a, err, time.Now())
			nextPoll = now.Add(p.interval)
		}
		wake := nextPoll
		if s := p.Load(); s.Synchronized && s.Expires.Before(wake) {
			wake = s.Expires
		}
		timer.Reset(time.Until(wake))
	}
}

// answer is the backend's answer to one poll.
type answer struct {
	header ntp.Header
	// sent is read just before the request leaves, and arrived is the
	// kernel's receive time of the answer (or, without kernel timestamps,
	// when the read returned).
	sent, arrived time.Time
	// received is when the read returned, with a monotonic reading for
	// measuring the state's age.
	received time.Time
}

// kissError is a kiss-o'-death: the backend refuses to give the time.
type kissError struct{ code string }

func (e kissError) Error() string { return fmt.Sprintf("kiss-o'-death %q", e.code) }

var errNotOurs = errors.New("answer does not match the request")

// timeoutError is a poll that got no answer in time.
type timeoutError struct{ timeout time.Duration }

func (e timeoutError) Error() string { return fmt.Sprintf("no answer within %v", e.timeout) }

// poll sends one request and waits for its answer.
func (p *Poller) poll(ctx context.Context, conn *net.UDPConn) (*answer, error) {
	var req, buf [ntp.HeaderSize + 4]byte // one spare byte detects oversize answers
	oob := make([]byte, batch.TimestampControlSize)
	req[0] = ntp.LeapVersionMode(ntp.LeapNone, 4, ntp.ModeClient)
	// A random transmit timestamp is the request's cookie: only the backend,
	// which echoes it as the origin, can know it.
	cookie := rand.Uint64()
	binary.BigEndian.PutUint64(req[40:], cookie)

	if err := conn.SetReadDeadline(time.Now().Add(p.cfg.Timeout)); err != nil {
		return nil, err
	}
	a := &answer{sent: time.Now()}
	if _, err := conn.Write(req[:ntp.HeaderSize]); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	for {
		n, oobn, _, _, err := conn.ReadMsgUDP(buf[:], oob)
		a.received = time.Now()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				return nil, timeoutError{p.cfg.Timeout}
			}
			return nil, fmt.Errorf("receive: %w", err)
		}
		if err := readAnswer(&a.header, buf[:n], cookie); err != nil {
			if errors.Is(err, errNotOurs) {
				continue // a late answer to an earlier poll, or junk
			}
			return nil, err
		}
		a.arrived = batch.ReceiveTime(oob[:oobn])
		if a.arrived.IsZero() {
			a.arrived = a.received
		}
		p.readLag.Store(int64(a.received.Round(0).Sub(a.arrived)))
		return a, nil
	}
}

// readAnswer decodes b into h if it is the backend's answer to the request
// with the given cookie, and errNotOurs if it is not.
func readAnswer(h *ntp.Header, b []byte, cookie uint64) error {
	if len(b) != ntp.HeaderSize || h.Parse(b) != nil {
		return errNotOurs
	}
	if h.Mode != ntp.ModeServer || uint64(h.OriginTime) != cookie {
		return errNotOurs
	}
	if h.Stratum == 0 && h.ReferenceID != 0 {
		// A kiss code, whatever the leap bits say (chronyd sends leap 3).
		return kissError{kissCode(h.ReferenceID)}
	}
	if h.Stratum == 0 || h.Stratum >= ntp.MaxStratum {
		return nil // the backend's unsynchronized form; update says so
	}
	if h.ReceiveTime.IsZero() || h.TransmitTime.IsZero() {
		return errors.New("a reply without timestamps")
	}
	return nil
}

// update turns the outcome of one poll at now into the state to serve,
// publishes it, and logs what changed. With neither an answer nor an error
// it only lets the served state expire.
func (p *Poller) update(a *answer, err error, now time.Time) {
	var next *Snapshot
	cause, reason := p.problem, p.reason
	if a != nil || err != nil {
		next, cause, reason = p.judge(a, err, now)
	} else if cause == CauseNone {
		cause, reason = CauseNoAnswer, "no valid answer from the backend within the maximum age"
	}
	if next == nil {
		// The poll taught nothing trustworthy: the last good state
		// stands until it expires.
		if p.lastGood != nil && p.lastGood.Valid(now) {
			next = p.lastGood
		} else {
			next = Unsynchronized(p.precision, cause, reason)
		}
	}
	prev := p.current.Swap(next)
	if next != prev {
		p.changedMu.Lock()
		close(p.changed)
		p.changed = make(chan struct{})
		p.changedMu.Unlock()
	}
	p.log(prev, next, cause, reason, now)
}

// judge returns the state an answer calls for, or nil to keep the last good
// one, with the cause of any trouble.
func (p *Poller) judge(a *answer, err error, now time.Time) (*Snapshot, Cause, string) {
	server := p.cfg.Server
	_, timedOut := errors.AsType[timeoutError](err)
	p.polls++
	p.answered <<= 1
	if !timedOut {
		p.answered |= 1
	}
	if kiss, ok := errors.AsType[kissError](err); ok {
		// RFC 5905: a kiss-o'-death asks the client to poll less.
		p.interval = min(2*p.interval, maxBackoff*p.cfg.Interval)
		switch kiss.code {
		case "RATE":
			return nil, CauseRateLimited, fmt.Sprintf("backend %s rate-limits fastntp's polls (kiss code RATE): "+
				"remove the ratelimit directive from its chrony.conf (chronyd applies it to 127.0.0.1 too, and this "+
				"chronyd serves only fastntp), or poll it less often than its limit; polling every %v meanwhile",
				server, p.interval)
		case "DENY", "RSTR":
			return nil, CauseRefused, fmt.Sprintf("backend %s refuses fastntp's polls (kiss code %s): "+
				"its chrony.conf must allow fastntp's address (\"allow 127.0.0.1\"); polling every %v meanwhile",
				server, kiss.code, p.interval)
		}
		return nil, CauseKissOfDeath, fmt.Sprintf("backend %s sent a kiss-o'-death with code %q; polling every %v meanwhile",
			server, kiss.code, p.interval)
	}
	if timedOut {
		if n := answeredOf(p.answered, p.polls); n > 0 && min(p.polls, 8)-n >= 3 {
			return nil, CauseFewAnswers, fmt.Sprintf("backend %s answered only %d of the last %d polls: "+
				"a ratelimit directive in its chrony.conf drops polls this way (chronyd applies it to 127.0.0.1 too); "+
				"remove it, as this chronyd serves only fastntp", server, n, min(p.polls, 8))
		}
		return nil, CauseNoAnswer, fmt.Sprintf("no answer from backend %s within %v: is chronyd running, "+
			"with \"port %d\" and \"allow\" for fastntp's address?", server, p.cfg.Timeout, server.Port())
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		// The backend's host answered that nothing listens on the port.
		return nil, CauseNoAnswer, fmt.Sprintf("nothing listens on backend %s (connection refused): is chronyd running, "+
			"with \"port %d\"?", server, server.Port())
	}
	if err != nil {
		return nil, CauseBadAnswer, fmt.Sprintf("backend %s: %v", server, err)
	}
	p.interval = p.cfg.Interval
	h := &a.header
	if h.Stratum == 0 || h.Stratum >= ntp.MaxStratum {
		p.lastGood = nil // the backend itself says not to trust it
		const reason = "backend is not synchronized"
		return Unsynchronized(h.Precision, CauseBackendUnsynchronized, reason), CauseBackendUnsynchronized, reason
	}
	// The true offset lies within a sample's error bound of its measured
	// offset: a sample proves the clocks apart when even the nearest end
	// of that interval is beyond MaxOffset, however slow it was. Proving
	// them together takes a fast sample, the best of the recent ones.
	latest := measure(a)
	if latest.delay >= 0 {
		// A negative round trip means the clock was stepped during the
		// poll; such a sample measures nothing.
		p.filter.add(latest)
	}
	best, ok := p.filter.best()
	// The sample that proves the clocks apart, if one does: the best, or
	// else the latest, however slow.
	proof, apart := best, ok && p.apart(best)
	if !apart && latest.delay >= 0 && p.apart(latest) {
		proof, apart = latest, true
	}
	if apart {
		p.lastGood = nil
		reason := fmt.Sprintf("backend clock is %v (±%v) away from the system clock, beyond the %v bound",
			proof.offset, proof.errorBound(), p.cfg.MaxOffset)
		u := Unsynchronized(h.Precision, CauseOffset, reason)
		u.Offset, u.Delay = proof.offset, proof.delay
		return u, CauseOffset, reason
	}
	if !ok || best.errorBound() > p.cfg.MaxOffset {
		return nil, CauseSlowAnswers, fmt.Sprintf("backend %s answers too slowly to check its clock against "+
			"the %v bound: the shortest of the last %d round trips took %v", server, p.cfg.MaxOffset, p.filter.n, best.delay)
	}
	snap := &Snapshot{
		Synchronized:  true,
		Leap:          h.Leap,
		Stratum:       h.Stratum,
		Precision:     max(h.Precision, p.precision),
		ReferenceID:   h.ReferenceID,
		ReferenceTime: h.ReferenceTime,
		RootDelay:     h.RootDelay,
		// The system clock we serve may differ from the backend's by the
		// measured offset, known to within the error bound; both belong in
		// the bound we advertise.
		RootDispersion: h.RootDispersion.Add(ntp.ShortFromSeconds((best.offset.Abs() + best.errorBound()).Seconds())),
		Taken:          a.received,
		Expires:        a.received.Add(p.cfg.MaxAge),
		Offset:         best.offset,
		Delay:          best.delay,
	}
	p.mirrorLeap(snap, a.received)
	p.lastGood = snap
	p.lastAnswer.Store(a.received.UnixNano())
	return snap, CauseNone, ""
}

// apart reports whether a sample proves the clocks further apart than
// MaxOffset: even the nearest end of its error interval is beyond it.
func (p *Poller) apart(s sample) bool {
	return s.offset.Abs()-s.errorBound() > p.cfg.MaxOffset
}

// mirrorLeap settles the leap second a new snapshot announces; see leap.go.
func (p *Poller) mirrorLeap(snap *Snapshot, taken time.Time) {
	prev := p.lastGood
	switch snap.Leap {
	case ntp.LeapInsertSecond, ntp.LeapDeleteSecond:
		if prev != nil && prev.Leap == snap.Leap && !prev.LeapStart.IsZero() {
			// Keep the window dated before the leap bent the clock.
			snap.LeapStart = prev.LeapStart
		} else if isLeapSecondDay(taken) {
			snap.LeapStart = leapWindowStart(snap.Leap, taken)
		} else {
			snap.Leap = ntp.LeapNone // chronyd too ignores it on other days
		}
	case ntp.LeapUnsynchronized:
		// Leap 3 with a stratum: chronyd is applying a leap second. Keep
		// serving the window already running; without one, chronyd's
		// own leap 3 is served until its next answer.
		if prev != nil && !prev.LeapStart.IsZero() {
			snap.Leap, snap.LeapStart = prev.Leap, prev.LeapStart
		}
	}
}

// measure computes the offset and round trip of an answer (RFC 5905's
// on-wire calculation). The server's times are placed in the era of the
// local clock.
func measure(a *answer) sample {
	t1, t4 := a.sent.Round(0), a.arrived.Round(0) // wall clock, as the backend's
	t2 := a.header.ReceiveTime.Time(t1)
	t3 := a.header.TransmitTime.Time(t1)
	return sample{
		offset: (t2.Sub(t1) + t3.Sub(t4)) / 2,
		delay:  t4.Sub(t1) - t3.Sub(t2),
	}
}

// answeredOf counts the answered polls among the last eight.
func answeredOf(bits uint8, polls int) int {
	n := 0
	for i := range min(polls, 8) {
		n += int(bits >> i & 1)
	}
	return n
}

// log reports a change of state, or of the cause of trouble, once.
func (p *Poller) log(prev, next *Snapshot, cause Cause, reason string, now time.Time) {
	wasValid, isValid := prev.Valid(now), next.Valid(now)
	level := zapcore.WarnLevel
	if cause == CauseRefused {
		level = zapcore.ErrorLevel
	}
	server := zap.Stringer("server", p.cfg.Server)
	if isValid && !wasValid {
		p.cfg.Logger.Info("synchronized to backend", server,
			zap.Uint8("stratum", next.Stratum),
			zap.String("reference_id", formatReferenceID(next.ReferenceID, next.Stratum)),
			zap.Duration("offset", next.Offset), zap.Duration("delay", next.Delay))
	} else if !isValid && (wasValid || prev.Cause != next.Cause) {
		p.cfg.Logger.Log(level, "serving unsynchronized replies", server,
			zap.Stringer("cause", next.Cause), zap.String("reason", next.Reason))
	} else if isValid && cause != CauseNone && cause != p.problem {
		p.cfg.Logger.Log(level, "backend trouble; serving its last valid state until it expires", server,
			zap.Stringer("cause", cause), zap.String("reason", reason),
			zap.Duration("expires_in", next.Expires.Sub(now).Round(time.Millisecond)))
	} else if isValid && cause == CauseNone && p.problem != CauseNone {
		p.cfg.Logger.Info("backend answers again", server)
	}
	p.problem, p.reason = cause, reason
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

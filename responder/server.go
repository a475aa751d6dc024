// Package responder answers NTP requests at the rate a socket can carry.
//
// A Server runs workers that each own one socket of an SO_REUSEPORT group.
// A worker reads a batch of requests, turns each valid one into a reply in
// its own buffer and writes them as a batch; an eBPF program (package
// egress) writes each reply's transmit timestamp as it reaches the network
// device, or, where it cannot be attached, the worker stamps each reply with
// its predicted departure before the send. The synchronization state comes from an upstream.Snapshot loaded
// once per batch; nothing on this path locks, logs at normal levels, or
// allocates.
package responder

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/responder/egress"
	"github.com/fastntp/fastntp/responder/xdp"
	"github.com/fastntp/fastntp/upstream"
)

// Source provides the synchronization state to serve. *upstream.Poller is
// one.
type Source interface {
	// Load returns the current Snapshot, never nil. It is called once per
	// batch from every worker.
	Load() *upstream.Snapshot
}

// Listener is one address to serve.
type Listener struct {
	Address netip.AddrPort
	// Workers is how many sockets, each with its own goroutine, share the
	// address. Zero disables the listener.
	Workers int
	// Optional makes a listener whose address family the host lacks (no
	// IPv6, say) a logged warning instead of an error.
	Optional bool
}

// Config configures a Server.
type Config struct {
	Listeners []Listener
	// Source is required.
	Source Source
	// Path selects the batch I/O implementation; the zero value is the
	// fastest available.
	Path batch.Path
	// BatchSize is the most requests a worker handles per system call. If
	// zero, batch.DefaultBatchSize.
	BatchSize int
	// ReceiveBuffer and SendBuffer request socket buffer sizes in bytes;
	// zero keeps the kernel's defaults.
	ReceiveBuffer, SendBuffer int
	// Logger receives the start-up summary and, at debug level, a line per
	// request. If nil, nothing is logged.
	Logger *zap.Logger
	// RateLimit, if not nil, limits the responses to each client address
	// (see RateLimit). Its memory is shared out among the workers.
	RateLimit *RateLimit
	// Access, if not nil, decides which client addresses are served.
	Access *AccessList
	// TransmitStamps selects where replies get their transmit timestamps.
	// The zero value is StampAuto.
	TransmitStamps Stamping
	// FastPath, if not nil, adds the XDP fast path at the devices it
	// names. With a rate limit, it takes half of RateLimit.Memory for its
	// records and the workers share the rest.
	FastPath *FastPath
	// StampCheckInterval is how often a server that stamps at the device
	// compares the replies stamped there with those sent, and warns when
	// fewer than 99% were stamped. If zero, once a minute.
	StampCheckInterval time.Duration

	// listen opens one worker's socket; tests replace it to inject faults.
	// If nil, batch.Listen.
	listen func(batch.Config) (batch.Conn, error)
}

// maxRequestSize is the receive buffer per datagram: the header, the most
// extension fields chronyd accepts and the longest MAC. A longer request is
// truncated and dropped.
const maxRequestSize = ntp.HeaderSize + 1024 + 4 + 64

// A Server answers NTP requests on its listeners.
type Server struct {
	cfg     Config
	workers []*worker
	once    sync.Once
	running atomic.Int32
	// stamper is the eBPF program that stamps replies at the device, or
	// nil; deviceStamps says whether it is attached.
	stamper      *egress.Stamper
	deviceStamps atomic.Bool
	// fastPath is the XDP program, or nil.
	fastPath *xdp.Path
}

// Listen opens every socket that cfg asks for. The sockets are bound when it
// returns, so privileges needed to bind can be dropped before Serve.
func Listen(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("responder: no Source")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = batch.DefaultBatchSize
	}
	if cfg.listen == nil {
		cfg.listen = batch.Listen
	}
	if cfg.RateLimit != nil {
		if err := cfg.RateLimit.Validate(); err != nil {
			return nil, fmt.Errorf("responder: %w", err)
		}
	}
	s := &Server{cfg: cfg}
	for _, l := range cfg.Listeners {
		if l.Workers < 0 {
			s.close()
			return nil, fmt.Errorf("responder: %d workers for %s", l.Workers, l.Address)
		}
		ws, err := s.listen(l)
		// An address family the host lacks is no reason to stop; an address
		// that someone else serves is.
		if err != nil && l.Optional && !errors.Is(err, batch.ErrAddressInUse) {
			cfg.Logger.Warn("not serving an optional address", zap.Stringer("address", l.Address), zap.Error(err))
			continue
		}
		if err != nil {
			s.close()
			return nil, err
		}
		s.workers = append(s.workers, ws...)
	}
	if len(s.workers) == 0 {
		return nil, errors.New("responder: no listener has workers")
	}
	socketMemory, fastPathMemory := 0, 0
	if cfg.RateLimit != nil {
		socketMemory = cfg.RateLimit.Memory
		if cfg.FastPath != nil {
			fastPathMemory = socketMemory / 2
			socketMemory -= fastPathMemory
		}
	}
	if cfg.RateLimit != nil {
		// Each worker owns the records of the addresses steered to it.
		memory := socketMemory / len(s.workers)
		if memory < minClientMemory {
			s.close()
			return nil, fmt.Errorf("responder: rate-limit memory of %d bytes leaves %d bytes to each of %d workers, under one slot of records (%d bytes)",
				cfg.RateLimit.Memory, memory, len(s.workers), minClientMemory)
		}
		for _, w := range s.workers {
			t, err := newClientTable(*cfg.RateLimit, memory)
			if err != nil {
				s.close()
				return nil, fmt.Errorf("responder: %w", err)
			}
			w.limiter = t
			w.template.pollRaise = int8(cfg.RateLimit.Interval - minPoll)
		}
	}
	if err := s.attachStamper(); err != nil {
		s.close()
		return nil, err
	}
	if cfg.FastPath != nil {
		if err := s.attachFastPath(fastPathMemory); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

// listen opens the sockets of one listener, all of them or none. Its
// workers share the address; no other socket may.
func (s *Server) listen(l Listener) ([]*worker, error) {
	if l.Workers == 0 {
		return nil, nil
	}
	addr, err := batch.CheckFree(l.Address)
	if err != nil {
		return nil, fmt.Errorf("responder: %w", err)
	}
	steer := 0
	if s.cfg.RateLimit != nil {
		// One worker owns each client's rate-limit record, without locks,
		// because every request from the client reaches that worker.
		steer = l.Workers
	}
	var ws []*worker
	for i := range l.Workers {
		conn, err := s.cfg.listen(batch.Config{
			Address:       addr,
			Path:          s.cfg.Path,
			BatchSize:     s.cfg.BatchSize,
			ReceiveBuffer: s.cfg.ReceiveBuffer,
			SendBuffer:    s.cfg.SendBuffer,
			SteerGroup:    steer,
		})
		if err != nil {
			for _, w := range ws {
				w.conn.Close()
			}
			return nil, fmt.Errorf("responder: worker %d: %w", i, err)
		}
		w := newWorker(conn, s.cfg)
		w.index = i
		w.deviceStamps = &s.deviceStamps
		ws = append(ws, w)
	}
	return ws, nil
}

// Addrs returns the bound address of each listener, in order, with the port
// the kernel chose where the configuration said 0.
func (s *Server) Addrs() []netip.AddrPort {
	var addrs []netip.AddrPort
	for _, w := range s.workers {
		if a := w.conn.LocalAddr(); len(addrs) == 0 || addrs[len(addrs)-1] != a {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// Sockets describes each open socket, for the start-up log.
func (s *Server) Sockets() []SocketInfo {
	infos := make([]SocketInfo, len(s.workers))
	for i, w := range s.workers {
		infos[i] = SocketInfo{Address: w.conn.LocalAddr(), Info: w.conn.Info()}
	}
	return infos
}

// SocketInfo describes one worker's socket.
type SocketInfo struct {
	Address netip.AddrPort
	batch.Info
}

// Serve runs the workers until ctx is done, then closes the sockets, waits
// for every worker to return, and returns nil. If a worker fails (its socket
// became unusable), Serve stops them all the same way and returns the
// error: a server one worker short would keep losing the clients that
// SO_REUSEPORT sends its way, and its supervisor (systemd) can only restart
// a process that exits. A Server serves once.
func (s *Server) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	failed := make(chan error, len(s.workers))
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	if s.stamper != nil {
		wg.Go(func() {
			if err := s.stamper.Run(ctx, s.logStamperEvent); err != nil {
				// The program is detached; the replies carry the stamps
				// read before each send, which the workers now predict.
				s.deviceStamps.Store(false)
				s.cfg.Logger.Warn("stamping replies before each send from now on", zap.Error(err))
			}
		})
		wg.Go(func() { s.watchDeviceStamps(ctx, cmp.Or(s.cfg.StampCheckInterval, defaultStampCheck)) })
	}
	if s.fastPath != nil {
		wg.Go(func() {
			if err := s.fastPath.Run(ctx, s.cfg.Source); err != nil {
				// The program is detached: the sockets answer
				// everything.
				s.cfg.Logger.Error("the XDP fast path is detached; the sockets answer every request", zap.Error(err))
			}
		})
	}
	for _, w := range s.workers {
		s.running.Add(1)
		wg.Go(func() {
			defer s.running.Add(-1)
			if err := w.run(); err != nil {
				failed <- err
			}
		})
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-failed:
	}
	s.close()
	stop()
	wg.Wait()
	return err
}

// Close releases the sockets of a server that is not going to Serve. Serve
// closes them itself when it returns.
func (s *Server) Close() { s.close() }

func (s *Server) close() {
	s.once.Do(func() {
		for _, w := range s.workers {
			w.conn.Close()
		}
		if s.stamper != nil {
			s.stamper.Close()
		}
		if s.fastPath != nil {
			s.fastPath.Close()
		}
	})
}

// Counters sums every worker's counters, and the fast path's. It is safe
// to call at any time.
func (s *Server) Counters() Counters {
	var c Counters
	for _, w := range s.workers {
		w.addTo(&c)
	}
	if fast, ok := s.FastPathStats(); ok {
		for k := range c {
			c[k] += fast.IPv4[k] + fast.IPv6[k]
		}
	}
	return c
}

// WorkerStats are one worker's counters.
type WorkerStats struct {
	// Address is the address the worker serves, and Index its place among
	// that address's workers, from 0.
	Address netip.AddrPort
	Index   int
	Counters
}

// Workers returns each worker's counters, in the order of the listeners
// and of their workers. It is safe to call at any time.
func (s *Server) Workers() []WorkerStats {
	stats := make([]WorkerStats, len(s.workers))
	for i, w := range s.workers {
		stats[i] = WorkerStats{Address: w.conn.LocalAddr(), Index: w.index}
		w.addTo(&stats[i].Counters)
	}
	return stats
}

// Running returns how many workers are serving: as many as were opened from
// Serve's start until one fails or Serve is told to stop.
func (s *Server) Running() int { return int(s.running.Load()) }

// Size returns how many workers the server has.
func (s *Server) Size() int { return len(s.workers) }

func (w *worker) addTo(c *Counters) {
	w.counters.addTo(c)
	c[KernelDrops] += w.conn.Dropped()
}

// worker owns one socket and everything its loop touches.
type worker struct {
	index    int // among its address's workers
	conn     batch.Conn
	source   Source
	msgs     []batch.Message
	template replyTemplate
	batch    Counters // this batch's counts, published per batch
	counters workerCounters
	logger   *zap.Logger
	debug    bool
	// batchStart is when the last batch was read.
	batchStart time.Time
	sendCosts  sendCosts
	// deviceStamps is the server's: whether an eBPF program stamps the
	// replies at the device.
	deviceStamps *atomic.Bool
	access       *AccessList
	limiter      *clientTable // nil without rate limiting
}

// yieldInterval is how often a worker passes through the scheduler: half of
// sysmon's 10 ms preemption time slice. A yield is not free: with an idle P
// (GOMAXPROCS is one more than the workers), Gosched wakes another thread,
// which may take the goroutine while this one sleeps. Once a millisecond,
// that futex traffic was a quarter of the worker's CPU samples at 20,000
// requests/s; every 5 ms, under 1% (docs/benchmarking.md).
const yieldInterval = 5 * time.Millisecond

func newWorker(conn batch.Conn, cfg Config) *worker {
	return &worker{
		conn:   conn,
		source: cfg.Source,
		msgs:   batch.NewMessages(cfg.BatchSize, maxRequestSize),
		// A worker outside a Server stamps before each send.
		deviceStamps: new(atomic.Bool),
		access:       cfg.Access,
		logger:       cfg.Logger,
		debug:        cfg.Logger.Core().Enabled(zap.DebugLevel),
	}
}

// run serves until the socket is closed, and returns nil then. On any other
// end it closes the socket itself, so that the kernel stops steering
// clients to it, and returns why.
func (w *worker) run() error {
	backoff := time.Duration(0)
	var lastYield time.Time
	for {
		// A worker blocked in recvmmsg never passes through the scheduler.
		// After 10 ms the runtime's monitor (sysmon) takes it for a
		// goroutine that ran too long, takes its P in the middle of a
		// blocking call and polls every 20 µs, and the goroutine moves
		// between threads at every request: at 20,000 requests/s that
		// doubled the CPU cost of a reply. Yielding every yieldInterval keeps
		// sysmon asleep.
		if w.batchStart.Sub(lastYield) > yieldInterval {
			runtime.Gosched()
			lastYield = w.batchStart
		}
		n, err := w.conn.ReadBatch(w.msgs)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Errors that are not the socket's end are transient (ENOMEM,
			// say): count them and back off rather than spin.
			w.counters.counts[ReadErrors].Add(1)
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if err := w.serveBatch(n); err != nil {
			// Only an unusable socket fails a whole send; closing is the
			// normal way.
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			w.conn.Close()
			return fmt.Errorf("responder: worker on %s: %w", w.conn.LocalAddr(), err)
		}
	}
}

// serveBatch answers the n requests that ReadBatch left in w.msgs.
func (w *worker) serveBatch(n int) error {
	now := time.Now()
	w.batchStart = now
	w.template.prepare(w.source.Load(), now)
	replies, kods := 0, 0
	for i := range n {
		m := &w.msgs[i]
		v := w.handle(m, now)
		switch v {
		case KoDSent:
			kods++
		case Replied:
		default:
			w.batch[v]++
			continue
		}
		// Gather the replies at the front, for one WriteBatch.
		w.msgs[replies], w.msgs[i] = w.msgs[i], w.msgs[replies]
		replies++
	}
	w.batch[Received] += uint64(n)

	sent, err := w.sendReplies(replies)
	// Refused sends are counted as errors, not as kiss-o'-death or replies.
	w.batch[KoDSent] += uint64(min(kods, sent))
	w.batch[Replied] += uint64(sent - min(kods, sent))
	w.batch[SendErrors] += uint64(replies - sent)
	if w.limiter != nil {
		w.batch[ClientEvictions] += w.limiter.evictions
		w.limiter.evictions = 0
	}
	w.counters.add(&w.batch)
	return err
}

// handle checks one request and, if it deserves a reply, builds the reply in
// its buffer.
func (w *worker) handle(m *batch.Message, now time.Time) Counter {
	if m.Flags&batch.ControlTruncated != 0 {
		w.batch[ControlTruncations]++
	}
	if m.Flags&batch.Truncated != 0 {
		w.logDrop(m, DroppedTruncated)
		return DroppedTruncated
	}
	mode, v := classify(m.Buffer[:m.N], m.Peer.Port())
	if v != Replied {
		w.logDrop(m, v)
		return v
	}
	if w.access != nil && !w.access.Allowed(m.Peer.Addr()) {
		w.logDrop(m, DroppedDenied)
		return DroppedDenied
	}
	received := m.Received
	if received.IsZero() {
		// The kernel attached no timestamp (the socket could not enable
		// it, or MSG_CTRUNC cut it off). The time the batch was read is
		// the closest honest substitute, and the counter says it happened.
		w.batch[MissingTimestamps]++
		received = now
	}
	if w.limiter != nil {
		switch w.limiter.check(m.Peer.Addr(), received) {
		case limitDrop:
			w.logDrop(m, DroppedRateLimited)
			return DroppedRateLimited
		case limitKoD:
			m.N = w.template.buildKoD(m.Buffer, mode, ntp.TimeFrom(received))
			w.logDrop(m, KoDSent)
			return KoDSent
		}
	}
	m.N = w.template.build(m.Buffer, mode, ntp.TimeFrom(received))
	if w.debug {
		w.logger.Debug("reply", zap.Stringer("client", m.Peer), zap.Uint8("mode", mode))
	}
	return Replied
}

func (w *worker) logDrop(m *batch.Message, reason Counter) {
	if w.debug {
		w.logger.Debug("drop", zap.Stringer("client", m.Peer), zap.Int("length", m.N), zap.Stringer("reason", reason))
	}
}

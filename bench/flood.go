package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/ntp"
)

// FloodConfig configures a Flooder.
type FloodConfig struct {
	// Target is the server to load. See CheckTarget.
	Target netip.AddrPort
	// AllowRemote permits a target that is not an address of this host.
	AllowRemote bool
	// Clients is how many sockets, each a client with its own source
	// address and port, send requests. SO_REUSEPORT servers spread flows
	// over their sockets by hash, so many clients keep every server worker
	// busy. If zero, 32.
	Clients int
	// SourceAddresses is how many loopback addresses (127.0.0.1, .2, ...)
	// the clients are spread over when the target is on IPv4 loopback. If
	// zero, 4.
	SourceAddresses int
	// BatchSize is the most requests one send call carries. If zero, 32,
	// or 256 for the raw generator.
	BatchSize int
	// Path is the clients' socket I/O. If zero, PathPortable: with many
	// client sockets on few cores, Go's network poller collects the
	// readiness of all of them in one epoll_wait and runs the readers on
	// one thread, where blocking readers would each need a thread woken
	// per batch.
	Path batch.Path
	// ReplyWait is how long replies still count after a step's last
	// request. If zero, 200 ms.
	ReplyWait time.Duration
	// TargetPID, if not zero, is the server's process, whose CPU time per
	// reply each step reports.
	TargetPID int
	// ServingCPUs, if set, are the CPUs that serve the target: the CPUs it
	// is pinned to, where its device's receive path is steered too. Each
	// step then reports everything they did per reply, softirq included
	// (see Step.ServingCPUPerResponse).
	ServingCPUs []int
	// ScrapeURL, if set, is fetched every ScrapeInterval for as long as the
	// Flooder is open, as a Prometheus server would: the cost of being
	// monitored then shows in the server's figures. Each step reports how
	// many fetches succeeded.
	ScrapeURL      string
	ScrapeInterval time.Duration
	// Raw, if its Interface is set, sends raw frames from a network of
	// spoofed clients instead of sending through sockets: see RawConfig.
	// Clients, SourceAddresses and Path are then unused.
	Raw RawConfig
}

// RawConfig configures the raw-frame generator, which builds every request
// frame itself, from Ethernet up, and sends it on a device through a
// memory-mapped packet ring, as ntpperf does. It needs no socket per
// client, so that one core offers far more requests, from as many client
// addresses as a source network holds, and captures the replies with the
// kernel's receive timestamps through a second ring.
//
// The device is the generator's end of a link to the server (one end of a
// veth pair whose other end is in the server's network namespace, or a
// port cabled to it). The server routes the source network back through
// it; docs/benchmarking.md gives the commands that set up such a pair.
type RawConfig struct {
	// Interface is the device frames leave on and replies arrive on.
	Interface string
	// SourceNetwork is the clients' network, inside 198.18.0.0/15 or
	// 2001:2::/48 (see CheckSourceNetwork). If zero, 198.18.0.0/16 for an
	// IPv4 target and 2001:2::/112 for IPv6: 65,536 clients.
	SourceNetwork netip.Prefix
	// NextHop is the Ethernet address frames are sent to. If nil, the
	// target's entry in the neighbour table of Interface, which the
	// generator makes the kernel resolve if it has none.
	NextHop net.HardwareAddr
	// SourceMAC is the Ethernet source of the frames, where a server that
	// answers at the link layer (fastntp --xdp swaps the addresses) sends
	// its replies. If nil, Interface's own address.
	SourceMAC net.HardwareAddr
	// XDPPeer attaches to Interface, for as long as the generator runs,
	// an XDP program that passes every frame: a veth delivers the replies
	// an XDP program on its other end sends back (XDP_TX) only to a device
	// with an XDP program of its own.
	XDPPeer bool
}

// A Flooder sends paced requests to one server and accounts for every
// reply. It is not safe for concurrent use; Close it when done.
type Flooder struct {
	cfg     FloodConfig
	engine  engine
	step    atomic.Uint32
	wg      sync.WaitGroup
	scrapes atomic.Uint64 // successful fetches of ScrapeURL
	stop    context.CancelFunc
}

// Transmit timestamps identify requests: step, client and sequence number.
// The server echoes them as the origin timestamp.
const (
	seqBits    = 40
	clientBits = 16
)

func requestID(step uint32, client int, seq uint64) uint64 {
	return uint64(step&0xff)<<(seqBits+clientBits) | uint64(client)<<seqBits | seq
}

func splitID(id uint64) (step uint32, client int, seq uint64) {
	return uint32(id >> (seqBits + clientBits)), int(id >> seqBits & (1<<clientBits - 1)), id & (1<<seqBits - 1)
}

// engine sends a Flooder's requests and accounts for the replies.
type engine interface {
	// clients returns how many clients the requests come from.
	clients() int
	// begin starts the accounting of a step of about n requests.
	begin(step uint32, n int)
	// send sends at most k of the step's requests. It returns how many it
	// sent, and how many the local kernel refused; the rest it could not
	// send yet.
	send(step uint32, k int) (sent, refused int, err error)
	// finish sends whatever the requests sent so far left waiting.
	finish()
	// end closes the step's accounting and returns its tally, with the
	// replies the generator itself failed to capture.
	end(step uint32) (tally accumulator, missed uint64)
	close()
}

// socketEngine sends from client sockets, round-robin.
type socketEngine struct {
	cfg     FloodConfig
	sockets []*client
	next    int
}

// client is one socket with its receive loop.
type client struct {
	index  int
	conn   batch.Conn
	sent   atomic.Uint64 // requests sent in the current step
	mu     sync.Mutex    // guards acc, swapped by the coordinator per step
	acc    accumulator
	outbox []batch.Message
}

// accumulator holds one client's view of one step.
type accumulator struct {
	step          uint32
	done          bool     // the step is over: replies are late
	seen          []uint64 // bitmap of answered sequence numbers
	valid         uint64
	invalid       uint64
	kod           uint64
	unsynced      uint64
	late          uint64
	responseTimes []time.Duration
	txErrors      []time.Duration // arrival minus transmit timestamp, signed
	noTimestamp   uint64
}

// NewFlooder opens the client sockets and starts their receive loops.
func NewFlooder(cfg FloodConfig) (*Flooder, error) {
	if err := CheckTarget(cfg.Target, cfg.AllowRemote); err != nil {
		return nil, err
	}
	if cfg.TargetPID < 0 {
		return nil, fmt.Errorf("bench: invalid target PID %d", cfg.TargetPID)
	}
	if cfg.Clients == 0 {
		cfg.Clients = 32
	}
	if cfg.SourceAddresses == 0 {
		cfg.SourceAddresses = 4
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 32
		if cfg.Raw.Interface != "" {
			cfg.BatchSize = 256 // requests per flush of the ring
		}
	}
	if cfg.Path == batch.PathAuto {
		cfg.Path = batch.PathPortable
	}
	if cfg.ReplyWait == 0 {
		cfg.ReplyWait = 200 * time.Millisecond
	}
	if cfg.Clients < 1 || cfg.Clients > 1<<clientBits || cfg.BatchSize < 1 || cfg.BatchSize > 1024 {
		return nil, fmt.Errorf("bench: %d clients or batch size %d out of range", cfg.Clients, cfg.BatchSize)
	}
	f := &Flooder{cfg: cfg}
	if cfg.Raw.Interface != "" {
		e, err := newRawEngine(cfg)
		if err != nil {
			return nil, err
		}
		f.engine = e
	} else {
		e := &socketEngine{cfg: cfg}
		f.engine = e
		for i := range cfg.Clients {
			conn, err := batch.Listen(batch.Config{
				Address:       sourceAddress(cfg, i),
				Exclusive:     true, // or two clients may get one port, and each other's replies
				Path:          cfg.Path,
				BatchSize:     max(cfg.BatchSize, 64),
				ReceiveBuffer: 4 << 20,
				SendBuffer:    1 << 20,
			})
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("bench: client %d: %w", i, err)
			}
			c := &client{index: i, conn: conn, outbox: batch.NewMessages(cfg.BatchSize, ntp.HeaderSize)}
			for j := range c.outbox {
				m := &c.outbox[j]
				m.N = ntp.HeaderSize
				m.Buffer[0] = ntp.LeapVersionMode(ntp.LeapNone, 4, ntp.ModeClient)
				m.Peer = cfg.Target
			}
			e.sockets = append(e.sockets, c)
			f.wg.Go(func() { c.receive() })
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	f.stop = stop
	if cfg.ScrapeURL != "" && cfg.ScrapeInterval > 0 {
		f.wg.Go(func() { f.scrape(ctx) })
	}
	return f, nil
}

// scrape fetches ScrapeURL every ScrapeInterval until ctx is done.
func (f *Flooder) scrape(ctx context.Context) {
	client := http.Client{Timeout: f.cfg.ScrapeInterval}
	ticker := time.NewTicker(f.cfg.ScrapeInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.cfg.ScrapeURL, nil)
		if err != nil {
			return
		}
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode == http.StatusOK {
			f.scrapes.Add(1)
		}
	}
}

// sourceAddress spreads clients over loopback addresses when the target is
// on IPv4 loopback, where every 127.0.0.0/8 address is this host's.
func sourceAddress(cfg FloodConfig, i int) netip.AddrPort {
	t := cfg.Target.Addr().Unmap()
	switch {
	case t.Is4() && t.IsLoopback():
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i%cfg.SourceAddresses)}), 0)
	case t.Is4():
		return netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	default:
		return netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	}
}

// Clients returns the number of simulated clients.
func (f *Flooder) Clients() int { return f.engine.clients() }

// Close stops the receive loops and the scraper and closes the sockets.
func (f *Flooder) Close() error {
	if f.stop != nil {
		f.stop()
	}
	if f.engine != nil {
		f.engine.close()
	}
	f.wg.Wait()
	return nil
}

func (e *socketEngine) clients() int { return len(e.sockets) }

func (e *socketEngine) close() {
	for _, c := range e.sockets {
		c.conn.Close()
	}
}

func (e *socketEngine) begin(step uint32, n int) {
	perClient := n/len(e.sockets) + 4*e.cfg.BatchSize + 64
	for _, c := range e.sockets {
		c.mu.Lock()
		c.acc = newAccumulator(step, perClient)
		c.sent.Store(0)
		c.mu.Unlock()
	}
}

func (e *socketEngine) send(step uint32, k int) (sent, refused int, err error) {
	c := e.sockets[e.next]
	e.next = (e.next + 1) % len(e.sockets)
	k = min(k, e.cfg.BatchSize)
	base := c.sent.Load()
	for j := range k {
		binary.BigEndian.PutUint64(c.outbox[j].Buffer[40:], requestID(step, c.index, base+uint64(j)))
	}
	// Count before sending: a reply can arrive before WriteBatch returns.
	c.sent.Add(uint64(k))
	n, err := c.conn.WriteBatch(c.outbox[:k])
	if err != nil {
		return 0, 0, fmt.Errorf("bench: send: %w", err)
	}
	// Requests the local kernel refused (ENOBUFS) never left: they are the
	// generator's failure, not the server's loss.
	return n, k - n, nil
}

func (e *socketEngine) finish() {}

func (e *socketEngine) end(step uint32) (accumulator, uint64) {
	var total accumulator
	for _, c := range e.sockets {
		c.mu.Lock()
		a := c.acc
		c.acc = accumulator{step: step, done: true}
		c.mu.Unlock()
		total.merge(&a)
	}
	return total, 0
}

func (c *client) receive() {
	msgs := batch.NewMessages(64, 256)
	for {
		n, err := c.conn.ReadBatch(msgs)
		if err != nil {
			return
		}
		c.mu.Lock()
		for i := range n {
			c.acc.add(c, &msgs[i])
		}
		c.mu.Unlock()
	}
}

// newAccumulator returns the accounting of a step of about n requests.
func newAccumulator(step uint32, n int) accumulator {
	return accumulator{step: step, seen: make([]uint64, n/64+1),
		responseTimes: make([]time.Duration, 0, min(n, 1<<20)),
		txErrors:      make([]time.Duration, 0, min(n, 1<<20))}
}

// merge adds b's counts and samples to a.
func (a *accumulator) merge(b *accumulator) {
	a.valid += b.valid
	a.invalid += b.invalid
	a.kod += b.kod
	a.unsynced += b.unsynced
	a.late += b.late
	a.noTimestamp += b.noTimestamp
	a.responseTimes = append(a.responseTimes, b.responseTimes...)
	a.txErrors = append(a.txErrors, b.txErrors...)
}

// add accounts for one reply to client c.
func (a *accumulator) add(c *client, m *batch.Message) {
	var h ntp.Header
	if m.N < ntp.HeaderSize || h.Parse(m.Buffer[:m.N]) != nil || h.Mode != ntp.ModeServer {
		a.invalid++
		return
	}
	step, idx, seq := splitID(uint64(h.OriginTime))
	a.count(&h, step, seq, idx == c.index && seq < c.sent.Load(), m.Received)
}

// count accounts for a reply, parsed into h, to request seq of step (its
// low 8 bits); ours says whether the request is one this generator sent,
// from the address the reply went to.
func (a *accumulator) count(h *ntp.Header, step uint32, seq uint64, ours bool, received time.Time) {
	if a.done || step != a.step&0xff {
		a.late++ // an answer to an earlier step
		return
	}
	if !ours {
		a.invalid++ // not a request of ours
		return
	}
	if need := int(seq/64) + 1; need > len(a.seen) {
		// Round-robin gives clients uneven shares when the sender catches
		// up in bursts; grow rather than misjudge.
		a.seen = append(a.seen, make([]uint64, max(need-len(a.seen), len(a.seen)))...)
	}
	if a.seen[seq/64]&(1<<(seq%64)) != 0 {
		a.invalid++ // answered twice
		return
	}
	a.seen[seq/64] |= 1 << (seq % 64)
	// A kiss-o'-death is stratum 0 with a kiss code, whatever its leap bits
	// (chronyd's carry leap 3); stratum 0 with reference ID 0 is an
	// unsynchronized server's reply.
	if h.Stratum == 0 && h.ReferenceID != 0 {
		a.kod++
		return
	}
	if h.Leap == ntp.LeapUnsynchronized {
		a.unsynced++
	}
	a.valid++
	rx, tx := h.ReceiveTime.Time(received), h.TransmitTime.Time(received)
	if received.IsZero() {
		a.noTimestamp++
		return
	}
	a.responseTimes = append(a.responseTimes, tx.Sub(rx))
	a.txErrors = append(a.txErrors, received.Sub(tx))
}

// Step is what one rate step measured.
type Step struct {
	Target      string  `json:"target,omitempty"`
	Round       int     `json:"round,omitempty"`
	Point       string  `json:"point,omitempty"` // a compare's fixed point; empty in a ramp
	Rate        float64 `json:"rate"`            // requests per second asked for
	RequestRate float64 `json:"request_rate"`    // requests per second sent
	Clients     int     `json:"clients"`
	Duration    float64 `json:"duration_s"`
	Sent        uint64  `json:"sent"`
	Valid       uint64  `json:"valid"`
	Invalid     uint64  `json:"invalid"`
	KoD         uint64  `json:"kod"`
	Unsynced    uint64  `json:"unsynchronized"`
	// LostPercent, InvalidPercent and KoDPercent are shares of Sent.
	LostPercent    float64 `json:"lost_percent"`
	InvalidPercent float64 `json:"invalid_percent"`
	KoDPercent     float64 `json:"kod_percent"`
	ResponseRate   float64 `json:"response_rate"` // valid replies per second
	// ResponseTime is the server's transmit minus receive timestamp.
	ResponseTime Quantiles `json:"response_time"`
	// TransmitError is how far each reply's transmit timestamp was from
	// the reply's arrival here (the local kernel's receive time, on the same
	// clock). A client's offset is off by half of it.
	TransmitError ErrorStats `json:"transmit_error"`
	// Shortfall is set when the generator could not send at Rate, which
	// makes the step a measurement of the generator, not of the server.
	Shortfall bool `json:"shortfall"`
	// CPUPerResponse is the target process's CPU time per valid reply, if
	// its PID was known: its task clock, user and system time.
	CPUPerResponse time.Duration `json:"cpu_per_response_ns,omitempty"`
	// ServingCPUPerResponse is everything the serving CPUs did per valid
	// reply, when FloodConfig.ServingCPUs names them: user, system, irq and
	// softirq time, whoever ran it. It counts the kernel's receive and
	// transmit work for the server, which CPUPerResponse leaves out, and
	// anything else that ran there. ServingSoftirqPerResponse is the
	// softirq part of it.
	ServingCPUPerResponse     time.Duration `json:"serving_cpu_per_response_ns,omitempty"`
	ServingSoftirqPerResponse time.Duration `json:"serving_softirq_per_response_ns,omitempty"`
	// CaptureMissed counts replies the raw generator's capture ring had no
	// room for: the generator, not the server, lost them.
	CaptureMissed uint64 `json:"capture_missed,omitempty"`
	// Scrapes counts the successful fetches of the server's metrics
	// during the step, when FloodConfig.ScrapeURL is set.
	Scrapes uint64 `json:"scrapes,omitempty"`
}

// Quantiles of a duration sample.
type Quantiles struct {
	Min    time.Duration `json:"min_ns"`
	Median time.Duration `json:"median_ns"`
	P99    time.Duration `json:"p99_ns"`
	Max    time.Duration `json:"max_ns"`
}

// ErrorStats describe the size of a sample of errors that can fall on
// either side of zero: percentiles of their absolute values, and their
// signed mean, which shows a bias.
type ErrorStats struct {
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
	Mean time.Duration `json:"mean_ns"`
}

func errorStats(errs []time.Duration) ErrorStats {
	if len(errs) == 0 {
		return ErrorStats{}
	}
	var sum time.Duration
	abs := make([]time.Duration, len(errs))
	for i, e := range errs {
		sum += e
		abs[i] = e.Abs()
	}
	slices.Sort(abs)
	at := func(q float64) time.Duration { return abs[min(len(abs)-1, int(q*float64(len(abs))))] }
	return ErrorStats{P50: at(0.5), P90: at(0.9), P99: at(0.99), P999: at(0.999), Max: abs[len(abs)-1],
		Mean: sum / time.Duration(len(errs))}
}

// Run sends requests at rate per second for d, waits ReplyWait for the last
// replies, and returns the step's figures. It stops early, with ctx's
// error, if ctx ends.
func (f *Flooder) Run(ctx context.Context, rate float64, d time.Duration) (Step, error) {
	if rate <= 0 || d <= 0 {
		return Step{}, fmt.Errorf("bench: rate %v and duration %v must be positive", rate, d)
	}
	step := f.step.Add(1)
	f.engine.begin(step, int(rate*d.Seconds()))

	cpuBefore, cpuErr := f.targetCPU()
	servingBefore, servingErr := ReadCPUTimes(f.cfg.ServingCPUs)
	scrapesBefore := f.scrapes.Load()
	start := time.Now()
	var sent uint64
	shortfall := false
	refused := 0
	for {
		elapsed := time.Since(start)
		if elapsed >= d || ctx.Err() != nil {
			break
		}
		due := int64(rate*elapsed.Seconds()) - int64(sent)
		if due <= 0 {
			// Sleep until the next request is due; the kernel's timer
			// slack makes sleeps under ~100µs pointless, so yield instead.
			wait := time.Duration(float64(sent+1)/rate*float64(time.Second)) - elapsed
			if wait > 200*time.Microsecond {
				time.Sleep(wait - 100*time.Microsecond)
			} else {
				runtime.Gosched() // let the receivers run meanwhile
			}
			continue
		}
		// A backlog of more than 50 ms of requests means the generator
		// cannot keep up.
		if float64(due) > rate*0.05+float64(f.cfg.BatchSize) {
			shortfall = true
		}
		n, r, err := f.engine.send(step, min(int(due), f.cfg.BatchSize))
		if err != nil {
			return Step{}, err
		}
		refused += r
		sent += uint64(n)
	}
	f.engine.finish()
	elapsed := time.Since(start)
	select {
	case <-time.After(f.cfg.ReplyWait):
	case <-ctx.Done():
	}

	s := Step{Rate: rate, Clients: f.engine.clients(), Duration: elapsed.Seconds(), Sent: sent}
	s.RequestRate = float64(sent) / elapsed.Seconds()
	a, missed := f.engine.end(step)
	s.CaptureMissed = missed
	s.Shortfall = shortfall || refused > 0 || missed > 0 || s.RequestRate < 0.97*rate
	s.Valid, s.Invalid, s.KoD, s.Unsynced = a.valid, a.invalid, a.kod, a.unsynced
	s.TransmitError = errorStats(a.txErrors)
	s.ResponseTime = quantiles(a.responseTimes)
	if sent > 0 {
		received := s.Valid + s.KoD
		s.LostPercent = 100 * float64(sent-min(sent, received)) / float64(sent)
		s.InvalidPercent = 100 * float64(s.Invalid) / float64(sent)
		s.KoDPercent = 100 * float64(s.KoD) / float64(sent)
	}
	s.ResponseRate = float64(s.Valid) / elapsed.Seconds()
	s.Scrapes = f.scrapes.Load() - scrapesBefore
	if cpuAfter, err := f.targetCPU(); err == nil && cpuErr == nil && s.Valid > 0 {
		s.CPUPerResponse = (cpuAfter - cpuBefore) / time.Duration(s.Valid)
	}
	if servingAfter, err := ReadCPUTimes(f.cfg.ServingCPUs); err == nil && servingErr == nil && s.Valid > 0 && len(f.cfg.ServingCPUs) > 0 {
		s.ServingCPUPerResponse = servingAfter.Busy(servingBefore) / time.Duration(s.Valid)
		s.ServingSoftirqPerResponse = servingAfter.SoftirqPart(servingBefore) / time.Duration(s.Valid)
	}
	if ctx.Err() != nil {
		return s, ctx.Err()
	}
	return s, nil
}

func quantiles(d []time.Duration) Quantiles {
	if len(d) == 0 {
		return Quantiles{}
	}
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	return Quantiles{Min: d[0], Median: at(0.5), P99: at(0.99), Max: d[len(d)-1]}
}

// targetCPU returns the target's CPU time so far, or an error if it has none
// to read.
func (f *Flooder) targetCPU() (time.Duration, error) {
	if f.cfg.TargetPID == 0 {
		return 0, errors.New("no target process")
	}
	return ProcessCPU(f.cfg.TargetPID)
}

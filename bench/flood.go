package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
	// BatchSize is the most requests one send call carries. If zero, 32.
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
	// ScrapeURL, if set, is fetched every ScrapeInterval for as long as the
	// Flooder is open, as a Prometheus server would: the cost of being
	// monitored then shows in the server's figures. Each step reports how
	// many fetches succeeded.
	ScrapeURL      string
	ScrapeInterval time.Duration
}

// A Flooder sends paced requests to one server and accounts for every
// reply. It is not safe for concurrent use; Close it when done.
type Flooder struct {
	cfg     FloodConfig
	clients []*client
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
		f.clients = append(f.clients, c)
		f.wg.Go(func() { f.receive(c) })
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
func (f *Flooder) Clients() int { return len(f.clients) }

// Close stops the receive loops and the scraper and closes the sockets.
func (f *Flooder) Close() error {
	if f.stop != nil {
		f.stop()
	}
	for _, c := range f.clients {
		c.conn.Close()
	}
	f.wg.Wait()
	return nil
}

func (f *Flooder) receive(c *client) {
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

// add accounts for one reply.
func (a *accumulator) add(c *client, m *batch.Message) {
	var h ntp.Header
	if m.N < ntp.HeaderSize || h.Parse(m.Buffer[:m.N]) != nil || h.Mode != ntp.ModeServer {
		a.invalid++
		return
	}
	step, idx, seq := splitID(uint64(h.OriginTime))
	if a.done || step != a.step&0xff {
		a.late++ // an answer to an earlier step
		return
	}
	if idx != c.index || seq >= c.sent.Load() {
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
	rx, tx := h.ReceiveTime.Time(m.Received), h.TransmitTime.Time(m.Received)
	if m.Received.IsZero() {
		a.noTimestamp++
		return
	}
	a.responseTimes = append(a.responseTimes, tx.Sub(rx))
	a.txErrors = append(a.txErrors, m.Received.Sub(tx))
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
	// its PID was known.
	CPUPerResponse time.Duration `json:"cpu_per_response_ns,omitempty"`
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
	perClient := int(rate*d.Seconds())/len(f.clients) + 4*f.cfg.BatchSize + 64
	for _, c := range f.clients {
		c.mu.Lock()
		c.acc = accumulator{step: step, seen: make([]uint64, perClient/64+1),
			responseTimes: make([]time.Duration, 0, min(perClient, 1<<20)),
			txErrors:      make([]time.Duration, 0, min(perClient, 1<<20))}
		c.sent.Store(0)
		c.mu.Unlock()
	}

	cpuBefore, cpuErr := f.targetCPU()
	scrapesBefore := f.scrapes.Load()
	start := time.Now()
	var sent uint64
	next := 0
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
		c := f.clients[next]
		next = (next + 1) % len(f.clients)
		k := min(int(due), f.cfg.BatchSize)
		base := c.sent.Load()
		for j := range k {
			binary.BigEndian.PutUint64(c.outbox[j].Buffer[40:], requestID(step, c.index, base+uint64(j)))
		}
		// Count before sending: a reply can arrive before WriteBatch returns.
		c.sent.Add(uint64(k))
		n, err := c.conn.WriteBatch(c.outbox[:k])
		if err != nil {
			return Step{}, fmt.Errorf("bench: send: %w", err)
		}
		// Requests the local kernel refused (ENOBUFS) never left: they
		// are the generator's failure, not the server's loss.
		refused += k - n
		sent += uint64(n)
	}
	elapsed := time.Since(start)
	select {
	case <-time.After(f.cfg.ReplyWait):
	case <-ctx.Done():
	}

	s := Step{Rate: rate, Clients: len(f.clients), Duration: elapsed.Seconds(), Sent: sent}
	s.RequestRate = float64(sent) / elapsed.Seconds()
	s.Shortfall = shortfall || refused > 0 || s.RequestRate < 0.97*rate
	var times []time.Duration
	var txErrors []time.Duration
	for _, c := range f.clients {
		c.mu.Lock()
		a := c.acc
		c.acc = accumulator{step: step, done: true}
		c.mu.Unlock()
		s.Valid += a.valid
		s.Invalid += a.invalid
		s.KoD += a.kod
		s.Unsynced += a.unsynced
		times = append(times, a.responseTimes...)
		txErrors = append(txErrors, a.txErrors...)
	}
	s.TransmitError = errorStats(txErrors)
	s.ResponseTime = quantiles(times)
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

package responder

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/responder/egress"
	"github.com/fastntp/fastntp/upstream"
)

// staticSource serves one Snapshot, replaced with Store.
type staticSource struct {
	p atomic.Pointer[upstream.Snapshot]
}

func newStaticSource(s *upstream.Snapshot) *staticSource {
	src := &staticSource{}
	src.p.Store(s)
	return src
}

func (s *staticSource) Load() *upstream.Snapshot { return s.p.Load() }

// freshSnapshot is synchronized for the next minute.
func freshSnapshot() *upstream.Snapshot {
	s := syncedSnapshot(time.Now())
	s.Expires = s.Taken.Add(time.Minute)
	return s
}

// startServer serves cfg until the test ends, then checks that Serve returns
// and that no worker goroutine outlives it. Unless cfg asks for stamps at
// the device, replies are stamped before the send: the test's namespace
// is the host's, whose devices are not the test's to attach programs to.
func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	cfg.TransmitStamps = hostStamps(cfg.TransmitStamps)
	before := runtime.NumGoroutine()
	srv, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	serve(t, srv, before)
	return srv
}

// hostStamps is how a test in the host's namespace stamps: never with the
// device stamper, which StampAuto would attach to every device of the host.
func hostStamps(s Stamping) Stamping {
	if s == StampAuto {
		return StampSyscall
	}
	return s
}

// serve runs srv until the test ends, then checks that Serve returns and
// that no more goroutines than before remain.
func serve(t testing.TB, srv *Server, before int) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		srv.Serve(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return within 5s of cancellation")
		}
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Errorf("%d goroutines after shutdown, %d before start", n, before)
		}
	})
}

// TestTransmitStamps checks where each setting stamps replies, in a
// namespace whose only device is lo, and that a reply's transmit timestamp
// follows its receive timestamp and is close to its arrival at the client:
// before it, when read at the device. A stamp predicted before the send may
// run ahead of the arrival, by as much as the predictor misjudges. At the
// device, the program must have stamped every reply: the stamp user space
// writes before the send meets the same bounds.
func TestTransmitStamps(t *testing.T) {
	chronytest.KeepTAI(t)
	ns := chronytest.Namespace(t)
	for _, tc := range []struct {
		stamping Stamping
		devices  []string
	}{{StampDevice, []string{"lo"}}, {StampAuto, []string{"lo"}}, {StampSyscall, nil}} {
		t.Run(tc.stamping.String(), func(t *testing.T) {
			before := runtime.NumGoroutine()
			var srv *Server
			var client *net.UDPConn
			err := chronytest.InNamespace(ns, func() error {
				var err error
				srv, err = Listen(Config{Listeners: loopbackListeners(2)[:1], Source: newStaticSource(freshSnapshot()), TransmitStamps: tc.stamping})
				if err != nil {
					return err
				}
				client, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(srv.Addrs()[0]))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			serve(t, srv, before)
			if got := srv.StampDevices(); !slices.Equal(got, tc.devices) {
				t.Errorf("StampDevices() = %q, want %q", got, tc.devices)
			}
			raw, _ := client.SyscallConn()
			raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) })
			client.SetDeadline(time.Now().Add(5 * time.Second))
			reply, oob := make([]byte, 64), make([]byte, 128)
			for range 50 {
				if _, err := client.Write(packet(4, ntp.ModeClient)); err != nil {
					t.Fatal(err)
				}
				n, oobn, _, _, err := client.ReadMsgUDP(reply, oob)
				if err != nil || n != ntp.HeaderSize {
					t.Fatalf("reply: %d bytes, %v", n, err)
				}
				arrived := arrival(t, oob[:oobn])
				var h ntp.Header
				if err := h.Parse(reply[:n]); err != nil {
					t.Fatal(err)
				}
				received, transmit := h.ReceiveTime.Time(arrived), h.TransmitTime.Time(arrived)
				ahead := transmit.After(arrived) && tc.devices != nil
				if transmit.Before(received) || ahead || arrived.Sub(transmit).Abs() > 10*time.Millisecond {
					t.Fatalf("received %v, transmitted %v, arrived %v", received, transmit, arrived)
				}
			}
			counts, atDevice := srv.DeviceStamps()
			if want := tc.devices != nil; atDevice != want || (want && counts != egress.Counts{Stamped: 50}) {
				t.Errorf("DeviceStamps() = %+v, %v; want 50 stamped: %v", counts, atDevice, want)
			}
		})
	}
}

// arrival returns the kernel's receive time from SCM_TIMESTAMPNS.
func arrival(t *testing.T, oob []byte) time.Time {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			return time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16])))
		}
	}
	t.Fatal("no receive timestamp")
	return time.Time{}
}

// waitCounters returns the server's counters once done accepts them, or
// after a second.
func waitCounters(srv *Server, done func(Counters) bool) Counters {
	deadline := time.Now().Add(time.Second)
	c := srv.Counters()
	for !done(c) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		c = srv.Counters()
	}
	return c
}

func loopbackListeners(workers int) []Listener {
	return []Listener{
		{Address: netip.MustParseAddrPort("127.0.0.1:0"), Workers: workers},
		{Address: netip.MustParseAddrPort("[::1]:0"), Workers: workers},
	}
}

func TestServeBothFamilies(t *testing.T) {
	for _, path := range []batch.Path{batch.PathFast, batch.PathPortable} {
		t.Run(path.String(), func(t *testing.T) {
			src := newStaticSource(freshSnapshot())
			srv := startServer(t, Config{Listeners: loopbackListeners(2), Source: src, Path: path})
			for _, addr := range srv.Addrs() {
				before := time.Now()
				h, err := chronytest.Query(addr, 2*time.Second)
				if err != nil {
					t.Fatalf("query %s: %v", addr, err)
				}
				after := time.Now()
				if h.Stratum != 2 || h.Mode != ntp.ModeServer || h.Version != 4 || h.ReferenceID != 0xc0000201 {
					t.Errorf("%s: reply %+v", addr, h)
				}
				rx, tx := h.ReceiveTime.Time(before), h.TransmitTime.Time(before)
				if rx.Before(before) || tx.Before(rx) || tx.After(after) {
					t.Errorf("%s: receive %v, transmit %v outside [%v, %v]", addr, rx, tx, before, after)
				}
			}
			// A worker publishes its counts after the send returns, which
			// can be after the client has its reply.
			c := waitCounters(srv, func(c Counters) bool { return c[Replied] == 2 })
			if c[Replied] != 2 || c[Received] != 2 || c[MissingTimestamps] != 0 {
				t.Errorf("counters %+v", c)
			}
		})
	}
}

// Many clients on many ports, all at once: every request gets the reply that
// answers it, whichever worker the kernel hands it to.
func TestManyConcurrentClients(t *testing.T) {
	src := newStaticSource(freshSnapshot())
	srv := startServer(t, Config{Listeners: loopbackListeners(2)[:1], Source: src, BatchSize: 16, ReceiveBuffer: 4 << 20})
	addr := srv.Addrs()[0]
	const clients, requests = 100, 10
	var wg sync.WaitGroup
	var failures atomic.Int32
	for c := range clients {
		wg.Go(func() {
			conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			req := packet(4, ntp.ModeClient)
			for r := range requests {
				binary.BigEndian.PutUint64(req[40:], uint64(c)<<32|uint64(r))
				conn.Write(req)
			}
			seen := map[uint64]bool{}
			buf := make([]byte, 100)
			for range requests {
				n, err := conn.Read(buf)
				if err != nil {
					failures.Add(1)
					t.Errorf("client %d: %v after %d replies", c, err, len(seen))
					return
				}
				origin := binary.BigEndian.Uint64(buf[24:32])
				if n != ntp.HeaderSize || origin>>32 != uint64(c) || seen[origin] {
					t.Errorf("client %d: unexpected reply (%d bytes, origin %x)", c, n, origin)
				}
				seen[origin] = true
			}
		})
	}
	wg.Wait()
	if c := waitCounters(srv, func(c Counters) bool { return c[Replied] == clients*requests }); c[Replied] != clients*requests {
		t.Errorf("replied %d, want %d (counters %+v)", c[Replied], clients*requests, c)
	}
}

func TestStaleSnapshotServedUnsynchronized(t *testing.T) {
	snap := freshSnapshot()
	src := newStaticSource(snap)
	srv := startServer(t, Config{Listeners: loopbackListeners(1)[:1], Source: src})
	if h, err := chronytest.Query(srv.Addrs()[0], time.Second); err != nil || h.Leap != ntp.LeapNone {
		t.Fatalf("fresh: %+v, %v", h, err)
	}
	stale := *snap
	stale.Expires = time.Now().Add(-time.Millisecond)
	src.p.Store(&stale)
	h, err := chronytest.Query(srv.Addrs()[0], time.Second)
	if err != nil || h.Leap != ntp.LeapUnsynchronized || h.Stratum != 0 {
		t.Fatalf("stale: %+v, %v; want leap 3 stratum 0", h, err)
	}
}

func TestListenErrors(t *testing.T) {
	src := newStaticSource(freshSnapshot())
	for name, cfg := range map[string]Config{
		"no source":      {Listeners: loopbackListeners(1)},
		"no workers":     {Listeners: loopbackListeners(0), Source: src},
		"negative":       {Listeners: []Listener{{Address: netip.MustParseAddrPort("127.0.0.1:0"), Workers: -1}}, Source: src},
		"unbindable":     {Listeners: []Listener{{Address: netip.MustParseAddrPort("192.0.2.1:0"), Workers: 1}}, Source: src},
		"bad batch size": {Listeners: loopbackListeners(1), Source: src, BatchSize: -4},
		"bad rate limit": {Listeners: loopbackListeners(1), Source: src, RateLimit: &RateLimit{Interval: 20, Burst: 8, Leak: 2, Memory: 1 << 20}},
		"rate-limit memory under a slot per worker": {Listeners: loopbackListeners(2), Source: src,
			RateLimit: &RateLimit{Interval: 3, Burst: 8, Leak: 2, Memory: 3 * minClientMemory}},
	} {
		if srv, err := Listen(cfg); err == nil {
			srv.close()
			t.Errorf("%s: Listen succeeded", name)
		}
	}
	// An optional listener that cannot bind is skipped.
	srv, err := Listen(Config{Source: src, TransmitStamps: StampSyscall, Listeners: []Listener{
		{Address: netip.MustParseAddrPort("127.0.0.1:0"), Workers: 1},
		{Address: netip.MustParseAddrPort("192.0.2.1:0"), Workers: 1, Optional: true},
	}})
	if err != nil {
		t.Fatalf("optional listener failure: %v", err)
	}
	srv.close()
}

// The reply path allocates nothing per request once warm: not the fast
// path, and on the portable path nothing beyond the source address x/net's
// ReadBatch allocates.
func TestServeAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are checked by the run without -race")
	}
	// With rate limiting and an access list the hot path allocates no more.
	access, err := NewAccessList(manyRules(1000))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path     batch.Path
		defenses bool
		device   bool // stamped at the device: one send per batch
		max      float64
	}{
		{batch.PathFast, false, false, 0}, {batch.PathPortable, false, false, 2},
		{batch.PathFast, true, false, 0}, {batch.PathPortable, true, false, 2},
		{batch.PathFast, false, true, 0}, {batch.PathPortable, false, true, 2},
	} {
		t.Run(fmt.Sprintf("%v/defenses=%v/device=%v", tc.path, tc.defenses, tc.device), func(t *testing.T) {
			conn, err := batch.Listen(batch.Config{Address: netip.MustParseAddrPort("0.0.0.0:0"), Path: tc.path})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			w := newWorker(conn, Config{Source: newStaticSource(freshSnapshot()), BatchSize: 8, Logger: nopLogger})
			w.deviceStamps.Store(tc.device)
			if tc.defenses {
				// A limit the client stays under, so that every request
				// is answered.
				limit := RateLimit{Interval: MinRateLimitInterval, Burst: 255, Leak: 2, Memory: 1 << 20}
				if w.limiter, err = newClientTable(limit, limit.Memory); err != nil {
					t.Fatal(err)
				}
				w.access = access
			}
			client, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(
				netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), conn.LocalAddr().Port())))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			client.SetDeadline(time.Now().Add(10 * time.Second))
			req, resp := packet(4, ntp.ModeClient), make([]byte, 64)
			allocs := testing.AllocsPerRun(500, func() {
				client.Write(req)
				n, err := conn.ReadBatch(w.msgs)
				if err != nil || n != 1 {
					t.Fatalf("ReadBatch = %d, %v", n, err)
				}
				if err := w.serveBatch(n); err != nil {
					t.Fatal(err)
				}
				if n, err := client.Read(resp); err != nil || n != ntp.HeaderSize {
					t.Fatalf("reply: %d bytes, %v", n, err)
				}
			})
			if allocs > tc.max {
				t.Errorf("%v allocations per request, want at most %v", allocs, tc.max)
			}
		})
	}
}

// startChronydPoller starts a chronyd for the test and a poller of it,
// polling every 200 ms until the test ends.
func startChronydPoller(t *testing.T) (*chronytest.Chronyd, *upstream.Poller) {
	t.Helper()
	chronyd := chronytest.StartChronyd(t, chronytest.Options{})
	poller, err := upstream.New(upstream.Config{Server: chronyd.Addr, Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go poller.Run(ctx)
	return chronyd, poller
}

// waitSynchronized waits until poller serves chronyd's state as
// synchronized.
func waitSynchronized(t *testing.T, poller *upstream.Poller) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !poller.Load().Valid(time.Now()); {
		if time.Now().After(deadline) {
			t.Fatal("fastntp did not synchronize to chronyd")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgainstChronyd sends every request class to a real chronyd and to
// fastntp mirroring it, and checks that both answer the same classes, in the
// same mode and version.
func TestAgainstChronyd(t *testing.T) {
	chronyd, poller := startChronydPoller(t)
	srv := startServer(t, Config{Listeners: loopbackListeners(1)[:1], Source: poller})
	waitSynchronized(t, poller)

	type answer struct {
		replied bool
		header  ntp.Header
		length  int
	}
	ask := func(addr netip.AddrPort, req []byte) answer {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
		conn.Write(req)
		buf := make([]byte, 2048)
		n, err := conn.Read(buf)
		if err != nil {
			return answer{}
		}
		var a answer
		a.replied, a.length = true, n
		a.header.Parse(buf[:n])
		return a
	}
	var wg sync.WaitGroup
	for _, tc := range requestClasses {
		wg.Go(func() {
			want := ask(chronyd.Addr, tc.pkt)
			got := ask(srv.Addrs()[0], tc.pkt)
			switch {
			case got.replied != want.replied:
				t.Errorf("%s: fastntp replied=%v, chronyd replied=%v", tc.name, got.replied, want.replied)
			case !got.replied:
			case got.header.Mode != want.header.Mode || got.header.Version != want.header.Version ||
				got.header.Stratum != want.header.Stratum || got.header.Leap != want.header.Leap ||
				got.header.ReferenceID != want.header.ReferenceID || got.header.OriginTime != want.header.OriginTime ||
				got.header.Poll != want.header.Poll:
				t.Errorf("%s:\nfastntp %+v\nchronyd %+v", tc.name, got.header, want.header)
			case got.length > len(tc.pkt) || got.length != ntp.HeaderSize:
				t.Errorf("%s: fastntp sent %d bytes for %d", tc.name, got.length, len(tc.pkt))
			}
			if (tc.want == Replied) != got.replied {
				t.Errorf("%s: replied=%v, the table says %s", tc.name, got.replied, tc.want)
			}
		})
	}
	wg.Wait()
}

// BenchmarkThroughput floods a one-worker server on loopback and reports the
// replies it sustains per second, for both I/O paths and for batching on and
// off. The client keeps a window of requests in flight and sends a new
// request for every Replied, in batches, so it does no more work per packet
// than the server; on a 2-core machine each gets a core.
//
// The defenses variant adds what a public server may turn on: rate limiting
// with a limit the client stays under (so that every request is checked and
// answered) and 10,000 access rules.
func BenchmarkThroughput(b *testing.B) {
	for _, path := range []batch.Path{batch.PathFast, batch.PathPortable} {
		for _, size := range []int{batch.DefaultBatchSize, 1} {
			b.Run(fmt.Sprintf("path=%v/batch=%d", path, size), func(b *testing.B) {
				benchmarkThroughput(b, Config{Path: path, BatchSize: size})
			})
		}
	}
	access, err := NewAccessList(manyRules(10000))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("path=fast/batch=64/defenses", func(b *testing.B) {
		benchmarkThroughput(b, Config{Path: batch.PathFast, BatchSize: batch.DefaultBatchSize, Access: access,
			RateLimit: &RateLimit{Interval: MinRateLimitInterval, Burst: 255, Leak: 2, Memory: 1 << 20}})
	})
}

// benchmarkThroughput measures a one-worker server configured as cfg.
func benchmarkThroughput(b *testing.B, cfg Config) {
	const window = 256
	cfg.Listeners = loopbackListeners(1)[:1]
	cfg.Source = newStaticSource(freshSnapshot())
	cfg.ReceiveBuffer = 4 << 20
	srv := startServer(b, cfg)
	// Exclusive: a SO_REUSEPORT client socket could be given the server's
	// port and join its group.
	client, err := batch.Listen(batch.Config{Address: netip.MustParseAddrPort("127.0.0.1:0"), ReceiveBuffer: 4 << 20, Exclusive: true})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	requests := batch.NewMessages(window, ntp.HeaderSize)
	for i := range requests {
		requests[i].N = copy(requests[i].Buffer, packet(4, ntp.ModeClient))
		requests[i].Peer = srv.Addrs()[0]
	}
	replies := batch.NewMessages(batch.DefaultBatchSize, 128)

	// A lost reply would stall the loop for ever; end the run instead.
	var received atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		ticker := time.NewTicker(200 * time.Millisecond)
		defer ticker.Stop()
		last := int64(-1)
		for {
			select {
			case <-stop:
				return
			case <-ticker.C:
				if r := received.Load(); r == last {
					client.Close()
					return
				} else {
					last = r
				}
			}
		}
	}()

	b.ResetTimer()
	start := time.Now()
	sent, _ := client.WriteBatch(requests[:min(window, b.N)])
	for received.Load() < int64(b.N) {
		n, err := client.ReadBatch(replies)
		if err != nil {
			break
		}
		received.Add(int64(n))
		if k := min(n, b.N-sent); k > 0 {
			m, _ := client.WriteBatch(requests[:k])
			sent += m
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	got := received.Load()
	b.ReportMetric(float64(got)/elapsed.Seconds(), "replies/s")
	b.ReportMetric(100*(1-float64(got)/float64(b.N)), "loss%")
}

var nopLogger = zap.NewNop()

// failingConn is a real socket whose sends fail, as a socket that has become
// unusable does.
type failingConn struct {
	batch.Conn
	closed atomic.Bool
}

func (c *failingConn) WriteBatch([]batch.Message) (int, error) {
	return 0, os.NewSyscallError("sendmmsg", syscall.EBADF)
}

func (c *failingConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// A worker whose socket fails leaves the SO_REUSEPORT group at once, and
// Serve stops the others and returns the error, so that the process exits
// non-zero and its supervisor restarts it.
func TestWorkerFailureStopsServe(t *testing.T) {
	var conns []*failingConn
	cfg := Config{Listeners: loopbackListeners(2)[:1], Source: newStaticSource(freshSnapshot()), TransmitStamps: StampSyscall}
	cfg.Listeners[0].Workers = 2
	cfg.listen = func(c batch.Config) (batch.Conn, error) {
		conn, err := batch.Listen(c)
		if err != nil {
			return nil, err
		}
		fc := &failingConn{Conn: conn}
		conns = append(conns, fc)
		return fc, nil
	}
	srv, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	// Requests from many ports reach both workers; the first batch fails.
	for i := 0; i < 20; i++ {
		chronytest.Query(srv.Addrs()[0], 20*time.Millisecond)
	}
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, syscall.EBADF) || !strings.Contains(err.Error(), "worker on 127.0.0.1:") {
			t.Errorf("Serve returned %v, want the worker's EBADF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running 5s after its workers' sockets failed")
	}
	for i, c := range conns {
		if !c.closed.Load() {
			t.Errorf("socket %d still open after Serve returned", i)
		}
	}
	if n := srv.Running(); n != 0 {
		t.Errorf("Running() = %d after Serve returned", n)
	}
}

// Running counts the workers from Serve's start until it stops them.
func TestRunning(t *testing.T) {
	srv, err := Listen(Config{Listeners: loopbackListeners(3)[:1], Source: newStaticSource(freshSnapshot()), TransmitStamps: StampSyscall})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Size() != 3 || srv.Running() != 0 {
		t.Fatalf("before Serve: Size() = %d, Running() = %d; want 3 and 0", srv.Size(), srv.Running())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	for deadline := time.Now().Add(5 * time.Second); srv.Running() != 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Running() = %d 5 s into Serve, want 3", srv.Running())
		}
	}
	if _, err := chronytest.Query(srv.Addrs()[0], 2*time.Second); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := srv.Running(); n != 0 {
		t.Errorf("Running() = %d after Serve returned", n)
	}
}

// Another socket on the address, such as a chronyd left serving the port,
// would take a share of the clients through SO_REUSEPORT: Listen refuses.
func TestListenRefusesSharedAddress(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{})
	src := newStaticSource(freshSnapshot())
	for _, l := range []Listener{
		{Address: chronyd.Addr, Workers: 2},
		{Address: netip.AddrPortFrom(netip.IPv4Unspecified(), chronyd.Addr.Port()), Workers: 1},
		{Address: chronyd.Addr, Workers: 1, Optional: true},
	} {
		srv, err := Listen(Config{Listeners: []Listener{l}, Source: src, TransmitStamps: StampSyscall})
		if err == nil {
			srv.close()
			t.Errorf("Listen(%v) beside chronyd on %v succeeded", l, chronyd.Addr)
			continue
		}
		if !errors.Is(err, batch.ErrAddressInUse) {
			t.Errorf("Listen(%v): %v, want ErrAddressInUse", l, err)
		}
	}
	// A second fastntp on the same address is refused too.
	first := startServer(t, Config{Listeners: loopbackListeners(2)[:1], Source: src})
	if srv, err := Listen(Config{Listeners: []Listener{{Address: first.Addrs()[0], Workers: 1}}, Source: src, TransmitStamps: StampSyscall}); err == nil {
		srv.close()
		t.Errorf("a second server on %v started", first.Addrs()[0])
	}
}

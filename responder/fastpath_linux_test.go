package responder

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/responder/xdp"
)

// fastPathRig is a namespace pair whose server side runs two servers of
// one source: one with sockets alone, one with the fast path on the
// server's device as well.
type fastPathRig struct {
	*chronytest.Rig
	plain, fast *Server
}

// newFastPathRig starts the two servers, serving cfg's source with cfg's
// defenses, in a rig of its own; they stop when the test ends.
func newFastPathRig(t *testing.T, cfg Config) *fastPathRig {
	t.Helper()
	// A test elsewhere that changes the kernel's TAI offset would have
	// the program pass requests on to the sockets.
	chronytest.KeepTAI(t)
	r := &fastPathRig{Rig: chronytest.NewRig(t)}
	chronytest.XDPPeer(t, r.Client, r.ClientDevice, "")
	cfg.Listeners = []Listener{
		{Address: netip.AddrPortFrom(r.Server4, 0), Workers: 1},
		{Address: netip.AddrPortFrom(r.Server6, 0), Workers: 1},
	}
	cfg.TransmitStamps = StampSyscall
	fastCfg := cfg
	fastCfg.FastPath = &FastPath{Devices: []string{r.ServerDevice}}
	before := runtime.NumGoroutine()
	err := chronytest.InNamespace(r.Server, func() error {
		var err error
		if r.plain, err = Listen(cfg); err != nil {
			return err
		}
		r.fast, err = Listen(fastCfg)
		return err
	})
	if err != nil {
		if r.plain != nil {
			r.plain.Close()
		}
		t.Fatal(err)
	}
	// Both stop before the check of what is left running.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, srv := range []*Server{r.plain, r.fast} {
		wg.Go(func() { srv.Serve(ctx) })
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Errorf("%d goroutines after shutdown, %d before start", n, before)
		}
	})
	return r
}

// resolveNeighbours has the client side learn the server side's link-layer
// addresses. A request that waits for that resolution is sent on when the
// answer arrives, from the kernel's receive path, and a reply the program
// sends at once to such a request is lost on its way back into the same
// kernel: the client side counts it as for no socket (Udp6NoPorts).
// Clients on other hosts never meet this.
func (r *fastPathRig) resolveNeighbours(t *testing.T) {
	t.Helper()
	// The sockets-only server answers after the resolution.
	for _, addr := range r.plain.Addrs() {
		if r.ask(t, addr, requestClasses[0].pkt, 2*time.Second) == nil {
			t.Fatalf("no reply from %s", addr)
		}
	}
}

// ask sends req from the client side to addr and returns the reply, or nil
// if none came within the timeout.
func (r *fastPathRig) ask(t *testing.T, addr netip.AddrPort, req []byte, timeout time.Duration) []byte {
	t.Helper()
	var reply []byte
	err := chronytest.InNamespace(r.Client, func() error {
		conn, err := net.ListenUDP("udp", nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(timeout))
		if _, err := conn.WriteToUDPAddrPort(req, addr); err != nil {
			return err
		}
		buf := make([]byte, 2048)
		n, err := conn.Read(buf)
		if err == nil {
			reply = buf[:n]
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return reply
}

// sameReply reports how two replies to one request differ, beyond the
// root dispersion and the receive and transmit stamps, which depend on
// when they were made.
func sameReply(a, b []byte) string {
	if len(a) != len(b) {
		return "lengths differ"
	}
	if len(a) < ntp.HeaderSize {
		return "short"
	}
	mask := func(p []byte) []byte {
		p = bytes.Clone(p)
		clear(p[8:12])
		clear(p[32:48])
		return p
	}
	if !bytes.Equal(mask(a), mask(b)) {
		return "fields differ"
	}
	return ""
}

// TestFastPathAgainstSockets sends every request class over IPv4 and IPv6
// across a veth pair to a server with sockets alone and to one with the
// fast path too, both mirroring a real chronyd, and checks that they
// answer the same classes with the same bytes (stamps and dispersion
// aside), and that the program answered the plain requests itself and
// passed the rest on.
func TestFastPathAgainstSockets(t *testing.T) {
	_, poller := startChronydPoller(t)
	r := newFastPathRig(t, Config{Source: poller})
	waitSynchronized(t, poller)
	plainAddrs, fastAddrs := r.plain.Addrs(), r.fast.Addrs()
	r.resolveNeighbours(t)
	var wantFast [2]uint64
	var wg sync.WaitGroup
	for family := range 2 {
		for _, tc := range requestClasses {
			if len(tc.pkt) == ntp.HeaderSize && tc.want == Replied {
				wantFast[family]++
			}
			name := tc.name + []string{" over IPv4", " over IPv6"}[family]
			wg.Go(func() {
				want := r.ask(t, plainAddrs[family], tc.pkt, 300*time.Millisecond)
				got := r.ask(t, fastAddrs[family], tc.pkt, 300*time.Millisecond)
				switch {
				case (want == nil) != (got == nil):
					t.Errorf("%s: fast path replied %v, sockets %v", name, got != nil, want != nil)
				case want == nil:
				case sameReply(got, want) != "":
					if got[1] == want[1] && binary.BigEndian.Uint64(got[16:]) != binary.BigEndian.Uint64(want[16:]) {
						// A poll between the two changed the reference
						// time: ask again.
						want = r.ask(t, plainAddrs[family], tc.pkt, 300*time.Millisecond)
						got = r.ask(t, fastAddrs[family], tc.pkt, 300*time.Millisecond)
					}
					if d := sameReply(got, want); d != "" {
						t.Errorf("%s: %s:\nfast    %x\nsockets %x", name, d, got, want)
					}
				}
			})
		}
	}
	wg.Wait()
	stats, ok := r.fast.FastPathStats()
	if !ok || !stats.Attached {
		t.Fatalf("no fast path: %+v", stats)
	}
	for family, c := range []Counters{stats.IPv4, stats.IPv6} {
		// At least the plain requests of the table; a retry adds one.
		if c[Replied] < wantFast[family] || c[Replied] > 2*wantFast[family] {
			t.Errorf("family %d: the program replied to %d requests, want the table's %d plain ones; passed on %v", family, c[Replied], wantFast[family], stats.Passed)
		}
	}
	// Everything else went to the sockets: the fast server's own counts
	// hold the sockets' replies to the requests with extension fields.
	if stats.Passed[xdp.PassRequest] == 0 {
		t.Errorf("the program passed on no request it does not answer: %v", stats.Passed)
	}
	if total := r.fast.Counters(); total[Replied] <= stats.IPv4[Replied]+stats.IPv6[Replied] {
		t.Errorf("the sockets of the fast server replied to nothing: %v", total)
	}
}

// TestFastPathDevices checks what Listen says of devices the program
// cannot take: one that does not exist, and one that has an XDP program
// of someone else's, which fastntp names and does not replace.
func TestFastPathDevices(t *testing.T) {
	rig := chronytest.NewRig(t)
	chronytest.XDPPeer(t, rig.Server, rig.ServerDevice, "someones_prog")
	for _, tc := range []struct {
		device, want string
	}{
		{"nosuchdevice", "device nosuchdevice"},
		{rig.ServerDevice, `already has an XDP program, "someones_prog"`},
		{"lo", "not an Ethernet device"},
	} {
		err := chronytest.InNamespace(rig.Server, func() error {
			srv, err := Listen(Config{
				Listeners:      []Listener{{Address: netip.AddrPortFrom(rig.Server4, 0), Workers: 1}},
				Source:         newStaticSource(freshSnapshot()),
				TransmitStamps: StampSyscall,
				FastPath:       &FastPath{Devices: []string{tc.device}},
			})
			if err == nil {
				srv.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--xdp %s: %v, want an error saying %q", tc.device, err, tc.want)
		}
	}
}

// TestFastPathRateLimitAgainstChronyd is TestRateLimitAgainstChronyd with
// the fast path answering: clients polling fastntp across the rig, whose
// program limits them, get the share of answers that clients polling a
// chronyd with the same settings at the same rate get from it.
func TestFastPathRateLimitAgainstChronyd(t *testing.T) {
	const interval, burst, leak = -5, 8, 2
	limit := 32.0
	chronyd := chronytest.StartChronyd(t, chronytest.Options{
		Config: []string{fmt.Sprintf("ratelimit interval %d burst %d leak %d", interval, burst, leak)},
	})
	r := newFastPathRig(t, Config{
		Source:    newStaticSource(freshSnapshot()),
		RateLimit: &RateLimit{Interval: interval, Burst: burst, Leak: leak, Memory: 1 << 20},
	})
	r.resolveNeighbours(t)
	cases := rateLimitCases
	// Each client of the rig has an address of its own on the client
	// side, as each of chronyd's has on the loopback.
	fastAddr := r.fast.Addrs()[0]
	type result struct{ fast, chrony answers }
	results := make([][]result, len(cases))
	var wg sync.WaitGroup
	for i, tc := range cases {
		results[i] = make([]result, tc.clients)
		for c := range tc.clients {
			local := netip.AddrFrom4([4]byte{127, 0, byte(1 + i), byte(1 + c)})
			rigClient := netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + 8*i + c)})
			if out, err := chronytest.Command(r.Client, "ip", "address", "add", rigClient.String()+"/24", "dev", r.ClientDevice).CombinedOutput(); err != nil {
				t.Fatalf("address %s: %v: %s", rigClient, err, out)
			}
			wg.Go(func() {
				results[i][c].chrony = pollBoth(t, local, []netip.AddrPort{chronyd.Addr}, tc.factor*limit, 4*time.Second)[0]
			})
			wg.Go(func() {
				err := chronytest.InNamespace(r.Client, func() error {
					results[i][c].fast = pollBoth(t, rigClient, []netip.AddrPort{fastAddr}, tc.factor*limit, 4*time.Second)[0]
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	for i, tc := range cases {
		var fast, chrony answers
		for c, r := range results[i] {
			t.Logf("%s: client %d: fastntp answered %d of %d, chronyd %d of %d", tc.name, c, r.fast.replies, r.fast.sent, r.chrony.replies, r.chrony.sent)
			fast.sent += r.fast.sent
			fast.replies += r.fast.replies
			chrony.sent += r.chrony.sent
			chrony.replies += r.chrony.replies
		}
		if tc.factor < 1 {
			if fast.replies != fast.sent || chrony.replies != chrony.sent {
				t.Errorf("%s: %d of %d and %d of %d requests answered", tc.name, fast.replies, fast.sent, chrony.replies, chrony.sent)
			}
			continue
		}
		share := func(a answers) float64 { return float64(a.replies) / float64(a.sent) }
		if ratio := share(fast) / share(chrony); ratio < 0.8 || ratio > 1.2 {
			t.Errorf("%s: fastntp answered %.2f times the share chronyd did", tc.name, ratio)
		}
	}
	// The program did it, not the sockets.
	stats, _ := r.fast.FastPathStats()
	if stats.IPv4[DroppedRateLimited] == 0 || stats.IPv4[Replied] == 0 {
		t.Errorf("the program limited nothing: %+v", stats.IPv4)
	}
	if c := r.fast.Counters(); c[Replied]+c[DroppedRateLimited] != c[Received] {
		t.Errorf("counters %+v", c)
	}
}

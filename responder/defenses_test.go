package responder

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
)

// answers counts what one client got from one server.
type answers struct {
	sent, replies, kods int
	// poll is the poll field of the last reply.
	poll int8
}

// requestPoll is the poll field of pollBoth's requests: below any limit's
// interval, so that a server that raises it to its limit shows it.
var requestPoll int8 = -10

// pollBoth sends requests from src at rate per second for d to every server
// in turn, each request to all of them back to back so that each sees the
// same timing, and counts the answers of each.
func pollBoth(t *testing.T, src netip.Addr, servers []netip.AddrPort, rate float64, d time.Duration) []answers {
	t.Helper()
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make([]answers, len(servers))
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1024)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			var h ntp.Header
			if n > ntp.HeaderSize || h.Parse(buf[:n]) != nil {
				t.Errorf("%d-byte answer from %v to a %d-byte request", n, from, ntp.HeaderSize)
				continue
			}
			mu.Lock()
			for i, s := range servers {
				if s != from {
					continue
				}
				if h.Stratum == 0 {
					if h.ReferenceID != 0x52415445 || h.Leap != 3 {
						t.Errorf("kiss-o'-death from %v: %+v", from, h)
					}
					got[i].kods++
				} else {
					got[i].replies++
					got[i].poll = h.Poll
				}
			}
			mu.Unlock()
		}
	}()
	req := packet(4, ntp.ModeClient)
	req[2] = byte(requestPoll)
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for i := 0; time.Since(start) < d; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		binary.BigEndian.PutUint64(req[40:], uint64(i))
		for j, s := range servers {
			if _, err := conn.WriteToUDPAddrPort(req, s); err != nil {
				t.Fatal(err)
			}
			got[j].sent++
		}
	}
	time.Sleep(300 * time.Millisecond)
	conn.SetReadDeadline(time.Now())
	<-done
	mu.Lock()
	defer mu.Unlock()
	return got
}

// rateLimitCases are the clients of the rate limit's comparisons with
// chronyd: how many, each sending how many times the limit's rate.
var rateLimitCases = []struct {
	name    string
	clients int
	factor  float64
}{
	{"one client under the limit", 1, 0.5},
	{"one client at 4x", 1, 4},
	{"one client at 8x", 1, 8},
	{"four clients at 4x", 4, 4},
}

// TestRateLimitAgainstChronyd runs chronyd and fastntp with the same
// ratelimit settings side by side and checks that clients polling at the
// same times get the same share of answers from both.
func TestRateLimitAgainstChronyd(t *testing.T) {
	// Interval -5 (32 responses a second) keeps the test short while the
	// leak's randomness averages out over hundreds of limited requests.
	const interval, burst, leak = -5, 8, 2
	limit := 32.0
	chronyd := chronytest.StartChronyd(t, chronytest.Options{
		Config: []string{fmt.Sprintf("ratelimit interval %d burst %d leak %d", interval, burst, leak)},
	})
	srv := startServer(t, Config{
		Listeners: loopbackListeners(2)[:1],
		Source:    newStaticSource(freshSnapshot()),
		RateLimit: &RateLimit{Interval: interval, Burst: burst, Leak: leak, Memory: 1 << 20},
	})
	servers := []netip.AddrPort{srv.Addrs()[0], chronyd.Addr}
	cases := rateLimitCases
	// The cases run at once, each from its own addresses: both servers
	// remember the addresses they have seen. Four seconds make the leak's
	// chance a small part of the answers: the counts of the two servers
	// differ by chance by about 5% (one standard deviation).
	results := make([][][]answers, len(cases))
	var wg sync.WaitGroup
	for i, tc := range cases {
		results[i] = make([][]answers, tc.clients)
		for c := range tc.clients {
			src := netip.AddrFrom4([4]byte{127, 0, byte(1 + i), byte(1 + c)})
			wg.Go(func() { results[i][c] = pollBoth(t, src, servers, tc.factor*limit, 4*time.Second) })
		}
	}
	wg.Wait()
	for i, tc := range cases {
		var fast, chrony answers
		for c, r := range results[i] {
			t.Logf("%s: client %d sent %d; fastntp answered %d, chronyd %d", tc.name, c, r[0].sent, r[0].replies, r[1].replies)
			fast.sent += r[0].sent
			fast.replies += r[0].replies
			fast.kods += r[0].kods
			chrony.replies += r[1].replies
			chrony.kods += r[1].kods
		}
		if fast.kods != 0 || chrony.kods != 0 {
			t.Errorf("%s: kiss-o'-death without the kod option", tc.name)
		}
		// Both raise the poll of their replies to the limit's interval.
		if poll := results[i][0][0].poll; poll != results[i][0][1].poll || poll != interval {
			t.Errorf("%s: poll %d in fastntp's replies, %d in chronyd's, want %d", tc.name, poll, results[i][0][1].poll, interval)
		}
		if tc.factor < 1 {
			if fast.replies != fast.sent || chrony.replies != fast.sent {
				t.Errorf("%s: %d and %d of %d requests answered", tc.name, fast.replies, chrony.replies, fast.sent)
			}
			continue
		}
		if ratio := float64(fast.replies) / float64(chrony.replies); ratio < 0.8 || ratio > 1.2 {
			t.Errorf("%s: fastntp answered %.2f times as many as chronyd", tc.name, ratio)
		}
		if fast.replies >= fast.sent*3/4 {
			t.Errorf("%s: %d of %d answered above the limit", tc.name, fast.replies, fast.sent)
		}
	}
	c := srv.Counters()
	if c[DroppedRateLimited] == 0 || c[Replied]+c[DroppedRateLimited] != c[Received] {
		t.Errorf("counters %+v", c)
	}
}

// With the kod option, limited requests that are not let through are
// answered with a RATE kiss-o'-death at the configured chance instead of
// dropped. (Debian's chronyd 4.3 predates the option, so there is nothing
// to compare with here.)
func TestRateLimitKissOfDeath(t *testing.T) {
	srv := startServer(t, Config{
		Listeners: loopbackListeners(1)[:1],
		Source:    newStaticSource(freshSnapshot()),
		RateLimit: &RateLimit{Interval: -5, Burst: 8, Leak: 2, KoD: 1, Memory: 1 << 20},
	})
	got := pollBoth(t, netip.MustParseAddr("127.0.9.1"), srv.Addrs(), 256, time.Second)[0]
	limited := got.sent - got.replies
	t.Logf("sent %d: %d replies, %d kiss-o'-death", got.sent, got.replies, got.kods)
	// Half of the limited requests, give or take chance.
	if limited < got.sent/2 || got.kods < limited*3/10 || got.kods > limited*7/10 {
		t.Errorf("%d kiss-o'-death for %d limited requests of %d", got.kods, limited, got.sent)
	}
	c := waitCounters(srv, func(c Counters) bool { return c[KoDSent] == uint64(got.kods) })
	if c[KoDSent] != uint64(got.kods) || c[Replied] != uint64(got.replies) {
		t.Errorf("counters %+v after %d replies and %d kiss-o'-death", c, got.replies, got.kods)
	}
}

// One client sending from many ports meets one worker, and so one limit,
// while several clients spread over the workers.
func TestRateLimitOneWorkerPerClient(t *testing.T) {
	const workers = 4
	limit := DefaultRateLimit()
	srv := startServer(t, Config{
		Listeners: loopbackListeners(workers)[:1],
		Source:    newStaticSource(freshSnapshot()),
		RateLimit: &limit,
	})
	addr := srv.Addrs()[0]
	sources := []string{"127.0.10.1", "127.0.10.2", "127.0.10.3", "127.0.10.4", "127.0.10.5", "127.0.10.6"}
	const ports = 10
	want := make([]uint64, workers)
	for _, s := range sources {
		src := netip.MustParseAddr(s)
		want[batch.SteerIndex(src, workers)] += ports
		for range ports {
			conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(addr))
			if err != nil {
				t.Fatal(err)
			}
			conn.Write(packet(4, ntp.ModeClient))
			conn.Close()
		}
	}
	waitCounters(srv, func(c Counters) bool { return c[Received] == uint64(len(sources)*ports) })
	busy := 0
	for _, w := range srv.Workers() {
		if w.Counters[Received] != want[w.Index] {
			t.Errorf("worker %d received %d, want %d", w.Index, w.Counters[Received], want[w.Index])
		}
		if w.Counters[Received] > 0 {
			busy++
		}
	}
	if busy < 2 {
		t.Errorf("%d clients all on one worker", len(sources))
	}
	// Each client had ten requests against a burst of eight.
	c := srv.Counters()
	if c[Replied]+c[DroppedRateLimited] != c[Received] || c[Replied] < uint64(len(sources)*8) || c[Replied] == c[Received] {
		t.Errorf("counters %+v", c)
	}
}

func TestAccessControl(t *testing.T) {
	access, err := NewAccessList([]AccessRule{
		{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Allow: true},
		{Prefix: netip.MustParsePrefix("127.0.20.0/24"), Allow: false},
		{Prefix: netip.MustParsePrefix("127.0.20.7/32"), Allow: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, Config{Listeners: loopbackListeners(1), Source: newStaticSource(freshSnapshot()), Access: access})
	for _, tc := range []struct {
		from   string
		answer bool
	}{{"127.0.0.1", true}, {"127.0.20.1", false}, {"127.0.20.7", true}, {"127.0.21.1", true}, {"::1", false}} {
		from := netip.MustParseAddr(tc.from)
		to := srv.Addrs()[0]
		if from.Is6() {
			to = srv.Addrs()[1]
		}
		got := pollBoth(t, from, []netip.AddrPort{to}, 100, 50*time.Millisecond)[0]
		if answered := got.replies > 0; answered != tc.answer || got.replies != 0 && got.replies != got.sent {
			t.Errorf("%s: %d of %d answered", tc.from, got.replies, got.sent)
		}
	}
	if c := srv.Counters(); c[DroppedDenied] == 0 || c[Replied]+c[DroppedDenied] != c[Received] {
		t.Errorf("counters %+v", c)
	}
}

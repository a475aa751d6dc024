package upstream

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
)

// fakeBackend is an NTP server on loopback whose answers a test scripts:
// reply gets the poll's number (from 0) and returns the answer's header, or
// nil to stay silent. Origin, receive and transmit times are filled in.
type fakeBackend struct {
	addr  netip.AddrPort
	mu    sync.Mutex
	polls []time.Time // when each poll arrived
}

func startFakeBackend(t *testing.T, reply func(n int) *ntp.Header) *fakeBackend {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{addr: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			received := time.Now()
			var req ntp.Header
			if req.Parse(buf[:n]) != nil {
				continue
			}
			b.mu.Lock()
			i := len(b.polls)
			b.polls = append(b.polls, received)
			b.mu.Unlock()
			h := reply(i)
			if h == nil {
				continue
			}
			h.Version, h.Mode, h.OriginTime = 4, ntp.ModeServer, req.TransmitTime
			if h.Stratum != 0 {
				h.ReceiveTime = ntp.TimeFrom(received.Add(time.Duration(h.RootDelay))) // RootDelay abused as offset, see offsetBy
				h.TransmitTime = ntp.TimeFrom(time.Now().Add(time.Duration(h.RootDelay)))
				h.RootDelay = 0
			}
			out := make([]byte, ntp.HeaderSize)
			h.Encode(out)
			conn.WriteToUDPAddrPort(out, from)
		}
	}()
	return b
}

// pollTimes returns when the polls arrived.
func (b *fakeBackend) pollTimes() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.polls...)
}

// synced is a synchronized answer whose clock is offset from the system's.
func synced(offset time.Duration) *ntp.Header {
	return &ntp.Header{Stratum: 2, ReferenceID: 0x0a000001, RootDelay: ntp.Short(offset)}
}

// kiss is chronyd's kiss-o'-death: leap 3, stratum 0, the code as reference.
func kiss(code string) *ntp.Header {
	return &ntp.Header{Leap: ntp.LeapUnsynchronized, ReferenceID: uint32(code[0])<<24 | uint32(code[1])<<16 | uint32(code[2])<<8 | uint32(code[3])}
}

// observed returns a logger and what it logged.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}

func countLogs(logs *observer.ObservedLogs, message string) int {
	return logs.FilterMessage(message).Len()
}

// A backend that rate-limits fastntp with kiss-o'-death RATE (a chronyd
// newer than 4.3, with ratelimit's kod option): the last good state is served
// until it expires, the polls slow down, and one warning says how to fix
// chrony.conf.
func TestKissOfDeathRate(t *testing.T) {
	backend := startFakeBackend(t, func(n int) *ntp.Header {
		if n < 2 {
			return synced(0)
		}
		return kiss("RATE")
	})
	logger, logs := observed()
	const interval, maxAge = 200 * time.Millisecond, 2 * time.Second
	p := startPoller(t, Config{Server: backend.addr, Interval: interval, MaxAge: maxAge, Logger: logger})
	waitFor(t, 2*time.Second, "a kiss-o'-death", func() bool { return len(backend.pollTimes()) >= 3 })
	time.Sleep(50 * time.Millisecond)
	if s := p.Load(); !s.Valid(time.Now()) || s.Taken.After(backend.pollTimes()[2]) {
		t.Fatalf("after a RATE kiss-o'-death the state is %+v, want the last good one until it expires", s)
	}
	// The poller publishes the unsynchronized form when the last good state
	// expires; on a busy machine that can come a moment after the expiry.
	waitFor(t, maxAge+2*time.Second, "the unsynchronized form published", func() bool { return !p.Load().Synchronized })
	if s := p.Load(); s.Cause != CauseRateLimited {
		t.Errorf("expired with cause %v, want rate limited", s.Cause)
	}
	// 200ms apart, then doubled by each kiss: polls 2, 3 and 4 (the first
	// three kisses) are 400ms and 800ms apart, and poll 4 came before expiry.
	polls := backend.pollTimes()
	if len(polls) < 5 {
		t.Fatalf("%d polls before expiry, want 5", len(polls))
	}
	if gap3, gap4 := polls[3].Sub(polls[2]), polls[4].Sub(polls[3]); gap3 < 350*time.Millisecond || gap4 < 700*time.Millisecond {
		t.Errorf("polls after kisses %v and %v apart, want 400ms and 800ms: no back-off", gap3, gap4)
	}
	trouble := logs.FilterMessage("backend trouble; serving its last valid state until it expires").All()
	if len(trouble) != 1 || !strings.Contains(trouble[0].ContextMap()["reason"].(string), "remove the ratelimit directive") {
		t.Errorf("want one warning with the fix, got %v", trouble)
	}
	if n := countLogs(logs, "serving unsynchronized replies"); n != 1 {
		t.Errorf("%d unsynchronized lines, want 1 at expiry", n)
	}
}

// DENY is an error that names the cause.
func TestKissOfDeathDeny(t *testing.T) {
	backend := startFakeBackend(t, func(int) *ntp.Header { return kiss("DENY") })
	logger, logs := observed()
	p := startPoller(t, Config{Server: backend.addr, Interval: 100 * time.Millisecond, Logger: logger})
	waitFor(t, 2*time.Second, "refused", func() bool { return p.Load().Cause == CauseRefused })
	time.Sleep(500 * time.Millisecond)
	entries := logs.FilterMessage("serving unsynchronized replies").All()
	if len(entries) != 1 || entries[0].Level != zap.ErrorLevel || !strings.Contains(entries[0].ContextMap()["reason"].(string), `"allow 127.0.0.1"`) {
		t.Errorf("want one error naming the fix, got %v", entries)
	}
}

// A backend whose clock drifts further from the system clock at every poll
// is reported once, not once per poll with its new offset.
func TestCauseLoggedOnce(t *testing.T) {
	backend := startFakeBackend(t, func(n int) *ntp.Header {
		if n == 0 {
			return synced(0)
		}
		return synced(time.Duration(50+n) * time.Millisecond)
	})
	logger, logs := observed()
	p := startPoller(t, Config{Server: backend.addr, Interval: 100 * time.Millisecond, Logger: logger})
	waitFor(t, 3*time.Second, "six polls", func() bool { return len(backend.pollTimes()) >= 7 })
	if s := p.Load(); s.Cause != CauseOffset {
		t.Fatalf("cause %v, want clock offset", s.Cause)
	}
	if n := countLogs(logs, "serving unsynchronized replies"); n != 1 {
		t.Errorf("%d warnings for one cause, want 1:\n%v", n, logs.All())
	}
}

// chronyd's ratelimit drops polls (chrony 4.3 sends no kiss): the
// log says what is going on and how to fix it.
func TestRateLimitingChronyd(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{Config: []string{"ratelimit interval 3 burst 4 leak 2"}})
	logger, logs := observed()
	startPoller(t, Config{Server: chronyd.Addr, Interval: 200 * time.Millisecond, Logger: logger})
	waitFor(t, 10*time.Second, "a warning about dropped polls", func() bool {
		for _, e := range logs.All() {
			if e.ContextMap()["cause"] == CauseFewAnswers.String() {
				return strings.Contains(e.ContextMap()["reason"].(string), "ratelimit")
			}
		}
		return false
	})
}

// A starved reader is no clock error. With one P and a goroutine spinning
// on it, the poller's goroutine runs up to a scheduler time slice (10 ms)
// after the answer arrived; fastntp must date the answer by the kernel's
// receive timestamp and keep serving as synchronized.
func TestStarvedPollerKeepsSync(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{})
	logger, logs := observed()
	p := startPoller(t, Config{Server: chronyd.Addr, Interval: 100 * time.Millisecond, MaxOffset: 2 * time.Millisecond, Logger: logger})
	waitFor(t, 3*time.Second, "synchronized", func() bool { return p.Load().Valid(time.Now()) })

	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var spins atomic.Uint64
	go func() {
		for ctx.Err() == nil {
			spins.Add(1)
		}
	}()
	bad := 0
	for ctx.Err() == nil {
		if !p.Load().Valid(time.Now()) {
			bad++
		}
		time.Sleep(10 * time.Millisecond)
	}
	if bad > 0 || countLogs(logs, "serving unsynchronized replies") > 0 {
		t.Errorf("unsynchronized %d times while starved:\n%v", bad, logs.All())
	}
}

package responder

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/responder/egress"
)

func TestJudgeStamps(t *testing.T) {
	for _, tt := range []struct {
		name   string
		sent   uint64
		seen   egress.Counts
		judged bool
		short  bool
		cause  []string // in this order
	}{
		{"all stamped", 1000, egress.Counts{Stamped: 1000}, true, false, nil},
		{"one batch more stamped than counted sent", 1000, egress.Counts{Stamped: 1064}, true, false, nil},
		{"99% stamped", 1000, egress.Counts{Stamped: 990, Unsure: 10}, true, false, nil},
		{"too few to judge", 99, egress.Counts{}, false, false, nil},
		{"just enough to judge", 100, egress.Counts{}, true, true, []string{"100 replies never reached the program"}},
		{"none reached the program", 1000, egress.Counts{}, true, true, []string{"1000 replies never reached the program"}},
		{"TAI offset", 1000, egress.Counts{Stamped: 900, Unsure: 100}, true, true, []string{"100 the program's clock disagreed"}},
		{"commonest first", 1000, egress.Counts{Stamped: 800, Unsure: 50, ChecksumFailed: 100}, true, true,
			[]string{"100 the kernel refused to adjust the UDP checksum", "50 replies never reached", "50 the program's clock"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := judgeStamps(tt.sent, tt.seen)
			if v.judged != tt.judged || v.short != tt.short {
				t.Fatalf("judged %v, short %v; want %v, %v", v.judged, v.short, tt.judged, tt.short)
			}
			if !v.short {
				return
			}
			cause := v.cause([]string{"eth1"})
			at := 0
			for _, want := range tt.cause {
				i := strings.Index(cause[at:], want)
				if i < 0 {
					t.Fatalf("cause %q lacks %q after byte %d", cause, want, at)
				}
				at += i + len(want)
			}
			if v.notSeen > 0 && !strings.Contains(cause, "eth1") {
				t.Errorf("cause %q does not name the device that refused the program", cause)
			}
			// Only what happened is named.
			for part, happened := range map[string]bool{
				"never reached": v.notSeen > 0, "clock disagreed": tt.seen.Unsure > 0, "checksum": tt.seen.ChecksumFailed > 0,
			} {
				if strings.Contains(cause, part) != happened {
					t.Errorf("cause %q: mentions %q: %v, want %v", cause, part, !happened, happened)
				}
			}
			if v.notSeen > 0 && strings.Contains(v.cause(nil), "refused by") {
				t.Errorf("cause %q names refusals where none were", v.cause(nil))
			}
		})
	}
}

// observedServer listens in namespace ns with replies stamped at the
// device, serves until the test ends, and returns the server, a client
// socket connected to it with kernel receive timestamps, and its logs.
func observedServer(t *testing.T, ns string, cfg Config) (*Server, *net.UDPConn, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	cfg.Listeners = loopbackListeners(1)[:1]
	cfg.Source = newStaticSource(freshSnapshot())
	cfg.TransmitStamps = StampDevice
	cfg.Logger = zap.New(core)
	before := runtime.NumGoroutine()
	var srv *Server
	var client *net.UDPConn
	err := chronytest.InNamespace(ns, func() error {
		var err error
		if srv, err = Listen(cfg); err != nil {
			return err
		}
		client, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(srv.Addrs()[0]))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	serve(t, srv, before)
	raw, _ := client.SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) })
	return srv, client, logs
}

// poll sends one request on client and returns the reply's transmit
// timestamp and the kernel's time of its arrival.
func poll(t *testing.T, client *net.UDPConn) (transmit, arrived time.Time) {
	t.Helper()
	client.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := client.Write(packet(4, ntp.ModeClient)); err != nil {
		t.Fatal(err)
	}
	reply, oob := make([]byte, 64), make([]byte, 128)
	n, oobn, _, _, err := client.ReadMsgUDP(reply, oob)
	if err != nil || n != ntp.HeaderSize {
		t.Fatalf("reply: %d bytes, %v", n, err)
	}
	arrived = arrival(t, oob[:oobn])
	var h ntp.Header
	if err := h.Parse(reply[:n]); err != nil {
		t.Fatal(err)
	}
	return h.TransmitTime.Time(arrived), arrived
}

// TestTAIOffsetChange changes the kernel's TAI offset as chronyd does with
// leapsectz (0 to 37 s at its first clock update), and by a second either
// way as at a leap second, while a client polls every half millisecond,
// and checks that no reply's transmit timestamp is more than a
// millisecond from the client's receive timestamp: the program, which
// learns of the change up to a quarter of a second late, corrects its
// reading by the whole seconds it differs from the stamp user space wrote.
func TestTAIOffsetChange(t *testing.T) {
	setTAI := chronytest.ChangeTAI(t)
	ns := chronytest.Namespace(t)
	srv, client, _ := observedServer(t, ns, Config{})
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		t.Fatal(err)
	}
	original := int(tx.Tai)
	worst, polls := time.Duration(0), 0
	for _, offset := range []int{37, 38, 37, 36, 0, 37, original} {
		setTAI(offset)
		for end := time.Now().Add(400 * time.Millisecond); time.Now().Before(end); time.Sleep(500 * time.Microsecond) {
			transmit, arrived := poll(t, client)
			polls++
			if off := arrived.Sub(transmit).Abs(); off > worst {
				worst = off
			}
			if off := arrived.Sub(transmit); off > time.Millisecond || off < -time.Millisecond {
				t.Fatalf("TAI offset set to %d s: a reply's transmit timestamp is %v from its arrival", offset, off)
			}
		}
	}
	counts, ok := srv.DeviceStamps()
	t.Logf("%d polls, worst |transmit - arrival| %v, program's counts %+v", polls, worst, counts)
	if !ok || counts.Stamped != uint64(polls) || counts.Corrected == 0 || counts.Unsure != 0 {
		t.Errorf("counts %+v (%v): want every one of %d replies stamped by the program, some corrected", counts, ok, polls)
	}
}

// TestStampCheck puts a program that ends the chain ahead of fastntp's, and
// checks that the server warns, once, that replies are not stamped at the
// device and why, and says so when they are again.
func TestStampCheck(t *testing.T) {
	chronytest.KeepTAI(t)
	ns := chronytest.Namespace(t)
	_, client, logs := observedServer(t, ns, Config{StampCheckInterval: 300 * time.Millisecond})
	const (
		warning = "fewer than 99% of the replies were stamped at the device"
		again   = "replies are stamped at the device again"
	)
	// pollFor polls for d, hundreds of times per check interval on any
	// machine.
	pollFor := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			poll(t, client)
		}
	}
	// pollUntil polls until message is logged, for 10 s at most.
	pollUntil := func(message string) {
		for deadline := time.Now().Add(10 * time.Second); logs.FilterMessageSnippet(message).Len() == 0; {
			if time.Now().After(deadline) {
				t.Fatalf("%q not logged within 10 s", message)
			}
			pollFor(100 * time.Millisecond)
		}
	}
	pollFor(time.Second)
	if n := logs.FilterMessageSnippet(warning).Len(); n != 0 {
		t.Fatalf("warned %d times while every reply was stamped", n)
	}
	remove, err := chronytest.OtherProgram(t, ns, "lo", chronytest.TCXPass, true)
	if err != nil {
		t.Fatal(err)
	}
	pollUntil(warning)
	pollFor(time.Second) // three more intervals without stamps
	warnings := logs.FilterMessageSnippet(warning).All()
	if len(warnings) != 1 {
		t.Fatalf("warned %d times, want once", len(warnings))
	}
	if cause := warnings[0].ContextMap()["likely_cause"]; !strings.Contains(cause.(string), "never reached the program") {
		t.Errorf("likely cause %q", cause)
	}
	remove()
	pollUntil(again)
	pollFor(time.Second)
	if n := logs.FilterMessage(again).Len(); n != 1 {
		t.Errorf("said %d times that replies are stamped again, want once", n)
	}
}

// TestStamperRefusalLogged fills a device's egress with programs until it
// takes no more, and checks that the server says that replies through it
// are not stamped there.
func TestStamperRefusalLogged(t *testing.T) {
	ns := chronytest.Namespace(t)
	if out, err := chronytest.Command(ns, "ip", "link", "add", "full0", "type", "veth", "peer", "name", "full1").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	chronytest.FillEgress(t, ns, "full0")
	_, _, logs := observedServer(t, ns, Config{})
	deadline := time.Now().Add(2 * time.Second)
	for logs.FilterMessageSnippet("it refused the stamper").FilterField(zap.String("device", "full0")).Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("full0's refusal not logged within 2 s; logs: %v", logs.All())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The replies the stamp check expects stamped are those sent, kiss-o'-death
// included: the program stamps every mode-4 reply.
func TestSent(t *testing.T) {
	w := newWorker(noDropsConn{}, Config{BatchSize: 8, Source: newStaticSource(freshSnapshot()), Logger: nopLogger})
	w.counters.counts[Replied].Add(5)
	w.counters.counts[KoDSent].Add(3)
	w.counters.counts[DroppedRateLimited].Add(7)
	s := &Server{workers: []*worker{w}}
	if got := s.sent(); got != 8 {
		t.Errorf("sent() = %d, want 8", got)
	}
}

// noDropsConn is a socket that reports no kernel drops, and nothing else.
type noDropsConn struct{ batch.Conn }

func (noDropsConn) Dropped() uint64 { return 0 }

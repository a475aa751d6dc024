package bench_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fastntp/fastntp/bench"
	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/responder"
	"github.com/fastntp/fastntp/upstream"
)

// startFastntp serves fastntp in-process, mirroring a real chronyd.
func startFastntp(t *testing.T, backend netip.AddrPort) netip.AddrPort {
	t.Helper()
	// Its two workers each keep a P while blocked in recvmmsg; the
	// generator in this process needs Ps of its own, as cmd/fastntp
	// reserves one for its other goroutines.
	if procs := runtime.GOMAXPROCS(0); procs < 4 {
		runtime.GOMAXPROCS(4)
		t.Cleanup(func() { runtime.GOMAXPROCS(procs) })
	}
	poller, err := upstream.New(upstream.Config{Server: backend})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := responder.Listen(responder.Config{
		Listeners:     []responder.Listener{{Address: netip.MustParseAddrPort("127.0.0.1:0"), Workers: 2}},
		Source:        poller,
		ReceiveBuffer: 4 << 20,
		// Not at the device: the host's devices are not the test's.
		TransmitStamps: responder.StampSyscall,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { poller.Run(ctx); done <- struct{}{} }()
	go func() { srv.Serve(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	for deadline := time.Now().Add(3 * time.Second); !poller.Load().Valid(time.Now()); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("fastntp did not synchronize")
		}
	}
	return srv.Addrs()[0]
}

// startChronyd starts the bench's built-in chronyd target for the test.
func startChronyd(t *testing.T) *bench.Target {
	t.Helper()
	chronytest.Require(t, "chronyd")
	targets, err := bench.StartTargets(context.Background(), []bench.TargetSpec{{Name: "chronyd", Chronyd: true}}, bench.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(targets[0].Stop)
	return targets[0]
}

// TestEndToEnd runs a short ramp against a real chronyd and against fastntp
// mirroring it: every reply must match, none be invalid, and nothing be lost
// at these modest rates.
func TestEndToEnd(t *testing.T) {
	chronyd := startChronyd(t)
	servers := map[string]netip.AddrPort{"chronyd": chronyd.Addr, "fastntp": startFastntp(t, chronyd.Addr)}
	for name, addr := range servers {
		t.Run(name, func(t *testing.T) {
			pid := 0
			if name == "chronyd" {
				pid = chronyd.PID
			}
			f, err := bench.NewFlooder(bench.FloodConfig{Target: addr, Clients: 8, TargetPID: pid})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// 1000 × 2.5 steps over --max: the last step is at 4000. A
			// ramp whose generator fell behind, as it can while other
			// tests load this machine, measured nothing and runs again.
			var result bench.RampResult
			for try := 0; try == 0 || result.Stop == bench.StopGenerator && try < 3; try++ {
				if result, err = f.Ramp(context.Background(), bench.RampConfig{Start: 1000, Multiplier: 2.5, Max: 4000, StepDuration: 300 * time.Millisecond}); err != nil {
					t.Fatal(err)
				}
			}
			steps := result.Steps
			if len(steps) != 3 || steps[2].Rate != 4000 || result.Stop != bench.StopMax {
				t.Fatalf("%d steps, last at %v/s, stopped because %s; want 1000, 2500 and 4000/s, then --max", len(steps), steps[len(steps)-1].Rate, result.Stop)
			}
			if !strings.Contains(result.String(), "stopped at 4000/s (0.0% lost) because it reached --max") {
				t.Errorf("summary line %q", result.String())
			}
			for _, s := range steps {
				if s.Sent == 0 || s.Valid != s.Sent || s.Invalid != 0 || s.KoD != 0 || s.Unsynced != 0 || s.LostPercent != 0 {
					t.Errorf("rate %.0f: sent %d valid %d invalid %d kod %d unsynced %d lost %.2f%%",
						s.Rate, s.Sent, s.Valid, s.Invalid, s.KoD, s.Unsynced, s.LostPercent)
				}
				if s.ResponseTime.Min <= 0 || s.ResponseTime.Max > 50*time.Millisecond || s.TransmitError.P50 <= 0 {
					t.Errorf("rate %.0f: response time %+v, transmit error %+v", s.Rate, s.ResponseTime, s.TransmitError)
				}
			}
			if result.MaxRate != 4000 || result.PeakResponse < 3500 {
				t.Errorf("saturation %v, peak %v", result.MaxRate, result.PeakResponse)
			}
			if pid != 0 {
				// /proc counts CPU time in 10 ms ticks: a second at 20000/s
				// gives the server enough of them to measure.
				s, err := f.Run(context.Background(), 20000, time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if s.CPUPerResponse < 500*time.Nanosecond || s.CPUPerResponse > time.Millisecond {
					t.Errorf("CPU per response %v at 20000/s", s.CPUPerResponse)
				}
			}
		})
	}
}

// TestCompare runs two short interleaved rounds against chronyd and fastntp
// and checks the summary's bookkeeping.
func TestCompare(t *testing.T) {
	chronyd := startChronyd(t)
	fastntp := &bench.Target{Name: "fastntp", Addr: startFastntp(t, chronyd.Addr)}
	var seen []string
	summaries, steps, err := bench.Compare(context.Background(), []*bench.Target{fastntp, chronyd}, bench.CompareConfig{
		Rounds:        2,
		Ramp:          bench.RampConfig{Start: 1000, Multiplier: 2, Max: 2000, StepDuration: 200 * time.Millisecond},
		Points:        []bench.Point{{Rate: 1000}, {Share: 0.5}},
		FixedDuration: 200 * time.Millisecond,
		Flood:         bench.FloodConfig{Clients: 4},
		OnStep:        func(s bench.Step) { seen = append(seen, s.Target) },
	})
	if err != nil {
		t.Fatal(err)
	}
	// Per round and target: two ramp steps and two fixed ones, interleaved.
	want := []string{"fastntp", "fastntp", "fastntp", "fastntp", "chronyd", "chronyd", "chronyd", "chronyd"}
	want = append(want, want...)
	if len(steps) != 16 || len(seen) != 16 {
		t.Fatalf("%d steps (%d seen), want 16", len(steps), len(seen))
	}
	for i := range want {
		if seen[i] != want[i] || steps[i].Target != want[i] || steps[i].Round != 1+i/8 {
			t.Fatalf("step %d: target %s round %d, want %s round %d", i, steps[i].Target, steps[i].Round, want[i], 1+i/8)
		}
	}
	// The share is of the first target's peak in the same round.
	for round := range 2 {
		peak := summaries[0].PeakPerRound[round]
		for _, target := range []int{0, 4} {
			if s := steps[8*round+target+3]; s.Rate != 0.5*peak || s.Point != "50%" {
				t.Errorf("round %d: the 50%% point ran at %v/s (%q), want half of %v", round+1, s.Rate, s.Point, peak)
			}
		}
	}
	if len(summaries) != 2 || summaries[0].Ratio != 1 || len(summaries[1].PeakPerRound) != 2 || len(summaries[1].StopPerRound) != 2 {
		t.Fatalf("summaries %+v", summaries)
	}
	for _, s := range summaries {
		if s.MaxRate != 2000 || s.PeakResponse < 1800 || s.ResponseTime.Median <= 0 || len(s.Points) != 2 ||
			s.Points[0].Point != "1000" || s.Points[1].Point != "50%" || s.Points[0].TransmitError.P50 <= 0 {
			t.Errorf("%s: %+v", s.Target, s)
		}
	}
	if r := summaries[1].Ratio; r < 0.8 || r > 1.25 {
		t.Errorf("chronyd/fastntp ratio %v at rates both answer in full", r)
	}
}

// A Flooder with a ScrapeURL fetches it on its interval for as long as it
// is open, and each step counts the fetches that succeeded.
func TestScrape(t *testing.T) {
	var fetched atomic.Int64
	metrics := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		io.WriteString(w, "fastntp_synchronized 1\n")
	}))
	defer metrics.Close()
	chronyd := startChronyd(t)
	f, err := bench.NewFlooder(bench.FloodConfig{Target: chronyd.Addr, Clients: 2,
		ScrapeURL: metrics.URL + "/metrics", ScrapeInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s, err := f.Run(context.Background(), 1000, 500*time.Millisecond)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if s.Scrapes < 3 || s.Scrapes > 20 || int64(s.Scrapes) > fetched.Load() {
		t.Errorf("%d scrapes counted in a 0.7 s step at 50 ms, %d served", s.Scrapes, fetched.Load())
	}
	// A fetch sent just before Close may reach the handler after it, so
	// let in-flight requests land before counting; a scraper that kept
	// running would fetch several more times in the next 300 ms.
	time.Sleep(100 * time.Millisecond)
	after := fetched.Load()
	time.Sleep(300 * time.Millisecond)
	if n := fetched.Load() - after; n != 0 {
		t.Errorf("%d fetches after Close", n)
	}
}

package bench_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fastntp/fastntp/bench"
	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/responder"
	"github.com/fastntp/fastntp/upstream"
)

// startFastntp serves fastntp in-process on 127.0.0.1, mirroring a real
// chronyd.
func startFastntp(t *testing.T, backend netip.AddrPort) netip.AddrPort {
	t.Helper()
	return startFastntpIn(t, "", netip.MustParseAddrPort("127.0.0.1:0"), backend)
}

// startFastntpIn serves fastntp in-process on address, in network namespace
// ns (the test's own if empty), mirroring a real chronyd.
func startFastntpIn(t *testing.T, ns string, address, backend netip.AddrPort) netip.AddrPort {
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
	// Sockets stay in the namespace they were opened in: the listeners
	// and the poller's open there, on a thread that entered it.
	inNamespace := func(f func() error) error {
		if ns == "" {
			return f()
		}
		return chronytest.InNamespace(ns, f)
	}
	var srv *responder.Server
	err = inNamespace(func() error {
		var err error
		srv, err = responder.Listen(responder.Config{
			Listeners:     []responder.Listener{{Address: address, Workers: 2}},
			Source:        poller,
			ReceiveBuffer: 4 << 20,
			// Not at the device: the host's devices are not the test's.
			TransmitStamps: responder.StampSyscall,
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { inNamespace(func() error { return poller.Run(ctx) }); done <- struct{}{} }()
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
				// Bookkeeping, not speed: a busy machine may hold a reply
				// for tens of milliseconds, a unit mixed up makes it hours.
				if s.ResponseTime.Min <= 0 || s.ResponseTime.Max > time.Second || s.TransmitError.P50 <= 0 {
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
// and checks the summary's bookkeeping: the order of the steps, the rates
// of the points, and that each summary figure is the median of the rounds.
// Which server is faster is bench-check's question, not this test's: on a
// busy machine a ramp may stop at its first step for either.
func TestCompare(t *testing.T) {
	chronyd := startChronyd(t)
	fastntp := &bench.Target{Name: "fastntp", Addr: startFastntp(t, chronyd.Addr)}
	var seen []bench.Step
	summaries, steps, err := bench.Compare(context.Background(), []*bench.Target{fastntp, chronyd}, bench.CompareConfig{
		Rounds:        2,
		Ramp:          bench.RampConfig{Start: 1000, Multiplier: 2, Max: 2000, StepDuration: 200 * time.Millisecond},
		Points:        []bench.Point{{Rate: 1000}, {Share: 0.5}},
		FixedDuration: 200 * time.Millisecond,
		Flood:         bench.FloodConfig{Clients: 4},
		OnStep:        func(s bench.Step) { seen = append(seen, s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(steps) {
		t.Fatalf("%d steps returned, %d seen", len(steps), len(seen))
	}
	if len(summaries) != 2 {
		t.Fatalf("%d summaries", len(summaries))
	}
	// Per round, each target in turn: its ramp (one or two steps), then
	// its two points; the second, a share of fastntp's peak, only if
	// fastntp answered anything that round (a generator starved by a busy
	// machine may have measured nothing).
	rest := steps
	for round := 1; round <= 2; round++ {
		firstPeak := summaries[0].PeakPerRound[round-1]
		points := 2
		if firstPeak == 0 {
			points = 1
		}
		for i, target := range []string{"fastntp", "chronyd"} {
			ramp := 0
			for ramp < len(rest) && rest[ramp].Point == "" {
				ramp++
			}
			if ramp < 1 || ramp > 2 || len(rest) < ramp+points {
				t.Fatalf("round %d, %s: %d ramp steps, then %d steps", round, target, ramp, len(rest)-ramp)
			}
			for j, s := range rest[:ramp+points] {
				if s.Target != target || s.Round != round {
					t.Fatalf("round %d, %s: step %d is %s's of round %d", round, target, j, s.Target, s.Round)
				}
			}
			if peak := summaries[i].PeakPerRound[round-1]; peak != maxResponse(rest[:ramp]) {
				t.Errorf("round %d, %s: peak %v, ramp's highest response rate %v", round, target, peak, maxResponse(rest[:ramp]))
			}
			if one := rest[ramp]; one.Point != "1000" || one.Rate != 1000 {
				t.Errorf("round %d, %s: point %q at %v/s, want 1000", round, target, one.Point, one.Rate)
			}
			if half := rest[ramp+points-1]; points == 2 && (half.Point != "50%" || half.Rate != 0.5*firstPeak) {
				t.Errorf("round %d, %s: point %q at %v/s, want 50%% of %v", round, target, half.Point, half.Rate, firstPeak)
			}
			rest = rest[ramp+points:]
		}
	}
	if len(rest) != 0 {
		t.Errorf("%d steps after the last round", len(rest))
	}
	for i, s := range summaries {
		if s.PeakResponse != median(s.PeakPerRound) || len(s.StopPerRound) != 2 || s.MaxRate > 2000 ||
			len(s.Points) != 2 || s.Points[0].Point != "1000" || s.Points[1].Point != "50%" {
			t.Errorf("%s: %+v", s.Target, s)
		}
		want := 0.0
		if summaries[0].PeakResponse > 0 {
			want = s.PeakResponse / summaries[0].PeakResponse
		}
		if s.Ratio != want && !(i == 0 && s.Ratio == 1) {
			t.Errorf("%s: ratio %v, want %v", s.Target, s.Ratio, want)
		}
	}
}

func maxResponse(steps []bench.Step) float64 {
	peak := 0.0
	for _, s := range steps {
		if !s.Shortfall {
			peak = max(peak, s.ResponseRate)
		}
	}
	return peak
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
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

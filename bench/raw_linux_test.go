package bench_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fastntp/fastntp/bench"
	"github.com/fastntp/fastntp/internal/chronytest"
)

// TestRaw floods a real chronyd, and fastntp mirroring it, across a veth
// pair with raw frames from 65,536 client addresses, over IPv4 and IPv6:
// every address sends at least once, and every reply must match the
// request it answers (its address, port and origin timestamp) and be
// synchronized.
// Requests the server never saw, or dropped, are lost: a busy machine makes
// a single-threaded server lose some, but malformed frames, which its
// kernel would drop, would lose all.
func TestRaw(t *testing.T) {
	chronytest.Require(t, "chronyd")
	rig := chronytest.NewRig(t)
	for _, host := range []netip.Addr{rig.Server4, rig.Server6} {
		t.Run(host.String(), func(t *testing.T) {
			var chronyd *bench.Target
			err := chronytest.InNamespace(rig.Client, func() error {
				targets, err := bench.StartTargets(context.Background(), []bench.TargetSpec{{Name: "chronyd", Chronyd: true}},
					bench.StartOptions{Namespace: rig.Server, Host: host})
				if err == nil {
					chronyd = targets[0]
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(chronyd.Stop)
			servers := map[string]netip.AddrPort{
				"chronyd": chronyd.Addr,
				"fastntp": startFastntpIn(t, rig.Server, netip.AddrPortFrom(host, 0), chronyd.Addr),
			}
			for name, addr := range servers {
				t.Run(name, func(t *testing.T) {
					const rate, clients = 30000, 1 << 16
					var s bench.Step
					err := chronytest.InNamespace(rig.Client, func() error {
						f, err := bench.NewFlooder(bench.FloodConfig{Target: addr, Raw: bench.RawConfig{Interface: rig.ClientDevice}})
						if err != nil {
							return err
						}
						defer f.Close()
						if f.Clients() != clients {
							t.Errorf("%d clients, want %d", f.Clients(), clients)
						}
						s, err = f.Run(context.Background(), rate, time.Duration(clients+rate/10)*time.Second/rate)
						return err
					})
					if err != nil {
						t.Fatal(err)
					}
					t.Logf("sent %d, %d valid, lost %.2f%%, response time median %v, |transmit error| p50 %v p99 %v",
						s.Sent, s.Valid, s.LostPercent, s.ResponseTime.Median, s.TransmitError.P50, s.TransmitError.P99)
					if s.Sent < clients || s.Invalid != 0 || s.KoD != 0 || s.Unsynced != 0 || s.CaptureMissed != 0 {
						t.Errorf("sent %d (want at least %d), %d invalid, %d kiss-o'-death, %d unsynchronized, %d missed by the capture",
							s.Sent, clients, s.Invalid, s.KoD, s.Unsynced, s.CaptureMissed)
					}
					if s.LostPercent > 50 {
						t.Errorf("lost %.2f%% of %d requests", s.LostPercent, s.Sent)
					}
					if s.ResponseTime.Median <= 0 || s.TransmitError.P50 <= 0 || s.TransmitError.P50 > 100*time.Millisecond {
						t.Errorf("response time %v, transmit error %v: the replies' stamps or the capture's are wrong",
							s.ResponseTime, s.TransmitError)
					}
				})
			}
		})
	}
}

// TestRawRefusals checks that the raw generator spoofs only benchmark
// addresses, of the target's family, and loads only this host's servers.
func TestRawRefusals(t *testing.T) {
	rig := chronytest.NewRig(t)
	server := netip.AddrPortFrom(rig.Server4, 123)
	cases := []struct {
		name   string
		target netip.AddrPort
		source string
		want   string
	}{
		{"documentation network", server, "192.0.2.0/24", "benchmark range 198.18.0.0/15"},
		{"wider than the range", server, "198.0.0.0/8", "benchmark range"},
		{"other family", server, "2001:2::/112", "not of the target's family"},
		{"IPv6 outside the range", netip.AddrPortFrom(rig.Server6, 123), "2001:db8::/112", "benchmark range 2001:2::/48"},
		{"remote target", netip.MustParseAddrPort("192.0.2.1:123"), "198.18.0.0/16", "not an address of this host"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := chronytest.InNamespace(rig.Client, func() error {
				f, err := bench.NewFlooder(bench.FloodConfig{Target: c.target,
					Raw: bench.RawConfig{Interface: rig.ClientDevice, SourceNetwork: netip.MustParsePrefix(c.source)}})
				if err == nil {
					f.Close()
				}
				return err
			})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one saying %q", err, c.want)
			}
		})
	}
}

// TestRawRingsClosed checks that a closed raw generator leaves no packet
// socket behind in its namespace.
func TestRawRingsClosed(t *testing.T) {
	rig := chronytest.NewRig(t)
	err := chronytest.InNamespace(rig.Client, func() error {
		open := func() int {
			b, err := os.ReadFile("/proc/thread-self/net/packet")
			if err != nil {
				t.Fatal(err)
			}
			return strings.Count(string(b), "\n") - 1 // a line per socket, after the header
		}
		f, err := bench.NewFlooder(bench.FloodConfig{Target: netip.AddrPortFrom(rig.Server4, 123),
			Raw: bench.RawConfig{Interface: rig.ClientDevice}})
		if err != nil {
			return err
		}
		if n := open(); n != 2 {
			t.Errorf("%d packet sockets open, want the generator's 2", n)
		}
		if _, err := f.Run(context.Background(), 1000, 100*time.Millisecond); err != nil {
			return err
		}
		f.Close()
		if n := open(); n != 0 {
			t.Errorf("%d packet sockets left open after Close", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRawGenerator measures the raw generator alone: it offers 3
// million requests a second for b.N × 100 ms to a device that drops them,
// and reports the rate it reached. Run it pinned to one CPU (taskset -c 0
// go test ...): the device's receive path runs on CPU 1, laid out as
// .ci/in-rig does: in softirq steered by RPS, whose interrupt per burst the
// generator's CPU pays, or in the device's NAPI thread, which spares it.
func BenchmarkRawGenerator(b *testing.B) {
	for _, receive := range []string{"rps", "napi"} {
		b.Run(receive, func(b *testing.B) {
			rig := chronytest.NewRig(b)
			rig.Steer(b, 0, 1, receive == "napi")
			chronytest.DropIngress(b, rig.Server, rig.ServerDevice)
			err := chronytest.InNamespace(rig.Client, func() error {
				f, err := bench.NewFlooder(bench.FloodConfig{Target: netip.AddrPortFrom(rig.Server4, 123),
					Raw: bench.RawConfig{Interface: rig.ClientDevice}, ReplyWait: time.Millisecond, BatchSize: 256})
				if err != nil {
					return err
				}
				defer f.Close()
				b.ResetTimer()
				s, err := f.Run(context.Background(), 3e6, time.Duration(b.N)*100*time.Millisecond)
				b.ReportMetric(s.RequestRate, "requests/s")
				b.ReportMetric(0, "ns/op")
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestRawSendAllocs proves that sending allocates nothing once warm: not
// per request, and not per flush of the ring.
func TestRawSendAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are checked by the run without -race")
	}
	rig := chronytest.NewRig(t)
	err := chronytest.InNamespace(rig.Client, func() error {
		f, err := bench.NewFlooder(bench.FloodConfig{Target: netip.AddrPortFrom(rig.Server4, 123),
			Raw: bench.RawConfig{Interface: rig.ClientDevice}})
		if err != nil {
			return err
		}
		defer f.Close()
		if allocs := bench.SendAllocs(f); allocs != 0 {
			t.Errorf("%v allocations per send of a batch", allocs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

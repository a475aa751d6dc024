package bench_test

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/fastntp/fastntp/bench"
	"github.com/fastntp/fastntp/internal/ntp"
	"golang.org/x/sys/unix"
)

// TestServingCPU reads back the whole-CPU figure of a server that spins a
// known amount of CPU time per request, on a CPU of its own: the figure
// must be at least that amount, and within an order of it. Other work on
// that CPU, on a loaded machine, counts too (the figure is everything the
// CPU did), and a server starved by it answers fewer requests, each
// costing more of the CPU's time: the upper bound leaves room for both.
// Counting another CPU, or in the wrong unit, falls outside the bounds.
func TestServingCPU(t *testing.T) {
	const spin = 500 * time.Microsecond
	cpu := runtime.NumCPU() - 1
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		// The thread stays pinned until it ends with the goroutine.
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			t.Error(err)
			return
		}
		buf := make([]byte, 512)
		for {
			n, client, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			var request ntp.Header
			if request.Parse(buf[:n]) != nil {
				continue
			}
			for start := threadCPU(); threadCPU()-start < spin; {
			}
			now := ntp.TimeFrom(time.Now())
			reply := ntp.Header{Version: 4, Mode: ntp.ModeServer, Stratum: 1, ReferenceID: 0x4c4f434c,
				OriginTime: request.TransmitTime, ReceiveTime: now, TransmitTime: now}
			reply.Encode(buf)
			conn.WriteToUDPAddrPort(buf[:ntp.HeaderSize], client)
		}
	}()
	f, err := bench.NewFlooder(bench.FloodConfig{Target: conn.LocalAddr().(*net.UDPAddr).AddrPort(), Clients: 4,
		ServingCPUs: []int{cpu}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := f.Run(context.Background(), 1000, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d replies, serving CPU %v per reply, of it softirq %v, for %v spun", s.Valid, s.ServingCPUPerResponse,
		s.ServingSoftirqPerResponse, spin)
	if s.Valid < 100 {
		t.Fatalf("%d replies: too few to measure", s.Valid)
	}
	if got := s.ServingCPUPerResponse; got < spin*8/10 || got > 10*spin {
		t.Errorf("serving CPU %v per reply, for %v spun per request", got, spin)
	}
}

// threadCPU returns the calling thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

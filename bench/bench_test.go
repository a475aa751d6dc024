package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/ntp"
)

func TestRequestID(t *testing.T) {
	for _, tc := range []struct {
		step   uint32
		client int
		seq    uint64
	}{{1, 0, 0}, {255, 65535, 1<<40 - 1}, {7, 31, 123456}} {
		step, client, seq := splitID(requestID(tc.step, tc.client, tc.seq))
		if step != tc.step || client != tc.client || seq != tc.seq {
			t.Errorf("%+v came back as %d %d %d", tc, step, client, seq)
		}
	}
}

// reply builds a server reply to request id, as a message a client received.
func reply(id uint64, mutate func(h *ntp.Header)) batch.Message {
	now := time.Now()
	h := ntp.Header{Version: 4, Mode: ntp.ModeServer, Stratum: 2, OriginTime: ntp.Time64(id),
		ReceiveTime: ntp.TimeFrom(now.Add(-30 * time.Microsecond)), TransmitTime: ntp.TimeFrom(now.Add(-10 * time.Microsecond))}
	if mutate != nil {
		mutate(&h)
	}
	m := batch.Message{Buffer: make([]byte, 64), N: ntp.HeaderSize, Received: now}
	h.Encode(m.Buffer)
	return m
}

func TestAccounting(t *testing.T) {
	c := &client{index: 3}
	c.sent.Store(10)
	c.acc = accumulator{step: 5, seen: make([]uint64, 1)}
	add := func(m batch.Message) { c.acc.add(c, &m) }

	add(reply(requestID(5, 3, 0), nil))                                                              // valid
	add(reply(requestID(5, 3, 1), nil))                                                              // valid
	add(reply(requestID(5, 3, 1), nil))                                                              // duplicate: invalid
	add(reply(requestID(5, 4, 2), nil))                                                              // another client's: invalid
	add(reply(requestID(5, 3, 10), nil))                                                             // never sent: invalid
	add(reply(requestID(4, 3, 2), nil))                                                              // earlier step: late
	add(reply(requestID(5, 3, 3), func(h *ntp.Header) { h.Mode = ntp.ModeClient }))                  // invalid
	add(reply(requestID(5, 3, 4), func(h *ntp.Header) { h.Stratum, h.ReferenceID = 0, 0x52415445 })) // KoD
	// chronyd's KoD carries leap 3; it is a KoD all the same, not an
	// unsynchronized reply.
	add(reply(requestID(5, 3, 7), func(h *ntp.Header) { h.Leap, h.Stratum, h.ReferenceID = 3, 0, 0x52415445 })) // KoD
	add(reply(requestID(5, 3, 5), func(h *ntp.Header) { h.Leap, h.Stratum = 3, 0 }))                            // unsynchronized, valid
	short := reply(requestID(5, 3, 6), nil)
	short.N = 40
	add(short) // invalid
	c.sent.Store(1000)
	add(reply(requestID(5, 3, 900), nil)) // beyond the bitmap: grows, valid

	a := c.acc
	if a.valid != 4 || a.invalid != 5 || a.kod != 2 || a.late != 1 || a.unsynced != 1 {
		t.Errorf("valid %d invalid %d kod %d late %d unsynced %d; want 4 5 2 1 1", a.valid, a.invalid, a.kod, a.late, a.unsynced)
	}
	if len(a.responseTimes) != 4 || a.responseTimes[0] < 19*time.Microsecond || a.responseTimes[0] > 21*time.Microsecond {
		t.Errorf("response times %v, want four of 20µs", a.responseTimes)
	}
	if e := errorStats(a.txErrors); e.P50 < 9*time.Microsecond || e.Max > 11*time.Microsecond || e.Mean < 9*time.Microsecond {
		t.Errorf("transmit errors %+v, want 10µs", e)
	}
	c.acc.done = true
	add(reply(requestID(5, 3, 7), nil))
	if c.acc.late != 2 {
		t.Error("a reply after the step ended was not counted late")
	}
}

func TestQuantilesAndMedian(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	if q := quantiles(d); q != (Quantiles{Min: 1, Median: 51, P99: 100, Max: 100}) {
		t.Errorf("quantiles %+v", q)
	}
	if quantiles(nil) != (Quantiles{}) {
		t.Error("quantiles of nothing")
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median %v", m)
	}
}

func TestCheckTarget(t *testing.T) {
	tests := []struct {
		addr        string
		allowRemote bool
		ok          bool
	}{
		{"127.0.0.1:123", false, true},
		{"127.0.0.9:123", false, true},
		{"[::1]:123", false, true},
		{"192.0.2.1:123", false, false},
		{"8.8.8.8:123", false, false},
		{"[2001:db8::1]:123", false, false},
		{"192.0.2.1:123", true, true},
		{"127.0.0.1:0", false, false},
	}
	for _, tt := range tests {
		err := CheckTarget(netip.MustParseAddrPort(tt.addr), tt.allowRemote)
		if (err == nil) != tt.ok {
			t.Errorf("CheckTarget(%s, %v) = %v", tt.addr, tt.allowRemote, err)
		}
	}
	if _, err := NewFlooder(FloodConfig{Target: netip.MustParseAddrPort("192.0.2.1:123")}); err == nil {
		t.Error("NewFlooder accepted a remote target")
	}
}

func TestParseStat(t *testing.T) {
	fields := "S 1 2 3 4 5 6 7 8 9 10 250 150 0 0"
	for _, comm := range []string{"fastntp", "a b) (c", "x"} {
		got, err := parseStat([]byte("4242 (" + comm + ") " + fields + "\n"))
		if err != nil || got != 4*time.Second {
			t.Errorf("comm %q: %v, %v; want 4s", comm, got, err)
		}
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 u s"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

// TestProcessCPU spins until the kernel's own clock of this process's CPU
// time (CLOCK_PROCESS_CPUTIME_ID) has advanced 300 ms, however long that
// takes on a busy machine, and checks that ProcessCPU saw as much, give or
// take the 10 ms ticks /proc counts in.
func TestProcessCPU(t *testing.T) {
	cpuClock := func() time.Duration {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ts.Nano())
	}
	before, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	start := cpuClock()
	for deadline := time.Now().Add(30 * time.Second); cpuClock()-start < 300*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatal("300 ms of CPU not had in 30 s")
		}
	}
	spun := cpuClock() - start
	after, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < spun-30*time.Millisecond || d > spun+30*time.Millisecond {
		t.Errorf("%v of CPU read as %v", spun, d)
	}
	if _, err := ProcessCPU(1 << 30); err == nil {
		t.Error("ProcessCPU of no process succeeded")
	}
}

// lossyServer answers every other request and sends one junk datagram per
// request it drops, to check the generator's loss and invalid accounting.
func lossyServer(t *testing.T) netip.AddrPort {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 512)
		for n := 0; ; n++ {
			k, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if n%2 == 1 {
				conn.WriteToUDP([]byte("junk"), from)
				continue
			}
			now := ntp.TimeFrom(time.Now())
			copy(buf[24:32], buf[40:48])
			buf[0] = ntp.LeapVersionMode(0, 4, ntp.ModeServer)
			buf[1] = 3
			binary.BigEndian.PutUint64(buf[32:], uint64(now))
			binary.BigEndian.PutUint64(buf[40:], uint64(now))
			conn.WriteToUDP(buf[:k], from)
		}
	}()
	return conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestLossAndInvalidAccounting(t *testing.T) {
	f, err := NewFlooder(FloodConfig{Target: lossyServer(t), Clients: 4, BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := f.Run(context.Background(), 1000, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if s.Sent < 450 || s.Sent > 550 {
		t.Fatalf("sent %d in 0.5s at 1000/s", s.Sent)
	}
	if s.Valid+s.Invalid != s.Sent || s.Invalid < s.Sent/2-2 || s.Invalid > s.Sent/2+2 {
		t.Errorf("sent %d: valid %d, invalid %d; want half each", s.Sent, s.Valid, s.Invalid)
	}
	if s.LostPercent < 45 || s.LostPercent > 55 || s.InvalidPercent < 45 || s.InvalidPercent > 55 {
		t.Errorf("lost %.1f%%, invalid %.1f%%; want about 50%% each", s.LostPercent, s.InvalidPercent)
	}
}

func TestPacing(t *testing.T) {
	f, err := NewFlooder(FloodConfig{Target: lossyServer(t), Clients: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The generator never sends faster than asked, catches up after a
	// stall, and says so when it cannot keep up, as a machine busy with
	// other tests (and the race detector) may keep it from the higher
	// rates; 200/s it keeps up with anywhere.
	for _, rate := range []float64{200, 2000, 10000} {
		s, err := f.Run(context.Background(), rate, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if s.RequestRate > 1.05*rate || (s.RequestRate < 0.95*rate && (rate == 200 || !s.Shortfall)) {
			t.Errorf("asked %v/s, sent %.0f/s (shortfall %v)", rate, s.RequestRate, s.Shortfall)
		}
	}
}

func TestParseTargetSpec(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"a=addr:127.0.0.1:123", true},
		{"b=exec:fastntp -a 127.0.0.1:{port}", true},
		{"c=chronyd", true},
		{"=chronyd", false},
		{"d=exec:", false},
		{"e=addr:nowhere", false},
		{"f=ftp:x", false},
		{"127.0.0.1:123", false},
	} {
		if _, err := ParseTargetSpec(tc.in); (err == nil) != tc.ok {
			t.Errorf("ParseTargetSpec(%q) = %v", tc.in, err)
		}
	}
}

func TestReports(t *testing.T) {
	steps := []Step{
		{Target: "a", Round: 1, Rate: 1000, RequestRate: 1000, Sent: 1000, Valid: 1000, ResponseRate: 1000, ResponseTime: Quantiles{Median: 5000}},
		{Target: "a", Round: 1, Rate: 2000, RequestRate: 2000, Sent: 2000, Valid: 1500, LostPercent: 25, ResponseRate: 1500},
		{Target: "b", Round: 1, Rate: 1000, RequestRate: 500, Shortfall: true},
	}
	var table, js, cs bytes.Buffer
	for _, f := range []struct {
		w   *bytes.Buffer
		fmt Format
	}{{&table, Table}, {&js, JSON}, {&cs, CSV}} {
		sw := NewStepWriter(f.w, f.fmt)
		for _, s := range steps {
			if err := sw.Write(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !strings.Contains(table.String(), "25.00%") || !strings.Contains(table.String(), "Could not send requests at rate 1000") {
		t.Errorf("table:\n%s", table.String())
	}
	lines := strings.Split(strings.TrimSpace(js.String()), "\n")
	var back Step
	if len(lines) != 3 || json.Unmarshal([]byte(lines[1]), &back) != nil || back.LostPercent != 25 {
		t.Errorf("JSON lines:\n%s", js.String())
	}
	records, err := csv.NewReader(&cs).ReadAll()
	if err != nil || len(records) != 4 || records[0][0] != "target" || records[2][6] != "25" {
		t.Errorf("CSV %v, %v", records, err)
	}
	var sum bytes.Buffer
	WriteSummaries(&sum, []Summary{{Target: "a", PeakResponse: 1500, Ratio: 1, PeakPerRound: []float64{1500}}})
	if !strings.Contains(sum.String(), "1500") {
		t.Errorf("summary:\n%s", sum.String())
	}
	curves := Curves(append(steps, Step{Target: "a", Round: 2, Rate: 1000, ResponseRate: 800},
		Step{Target: "a", Round: 2, Rate: 1500, ResponseRate: 1500, Point: "50%"}))
	want := []Curve{{Target: "a", Points: []CurvePoint{{1000, 900}, {2000, 1500}}}}
	if !reflect.DeepEqual(curves, want) {
		t.Errorf("Curves = %+v, want %+v (b's only step is a shortfall)", curves, want)
	}
	if maxRate, peak := Saturation(steps, 1); maxRate != 1000 || peak != 1500 {
		t.Errorf("Saturation = %v, %v", maxRate, peak)
	}
}

// A command with {port6} is measured on ::1, at the port it was given.
func TestStartPort6(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want netip.Addr
	}{{"{port}", netip.MustParseAddr("127.0.0.1")}, {"[::1]:{port6}", netip.IPv6Loopback()}} {
		target := &Target{Name: "sh"}
		spec := TargetSpec{Name: "sh", Command: []string{"sh", "-c", "sleep 5", tc.arg}}
		if err := target.start(spec, nil, StartOptions{}); err != nil {
			t.Fatal(err)
		}
		target.Stop()
		if target.Addr.Addr() != tc.want || target.Addr.Port() == 0 {
			t.Errorf("%s: target at %v, want %v", tc.arg, target.Addr, tc.want)
		}
	}
}

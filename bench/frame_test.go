package bench

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestFrameTemplate builds requests from both families' templates and
// checks them the way a receiving kernel would: the IPv4 header and UDP
// checksums verify, and the frame parses back to the client it names.
func TestFrameTemplate(t *testing.T) {
	source, destination := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	cases := []struct {
		network string
		target  string
		index   uint32
		client  string
	}{
		{"198.18.0.0/16", "198.19.0.2:123", 0, "198.18.0.0"},
		{"198.18.0.0/16", "198.19.0.2:123", 65535, "198.18.255.255"},
		{"198.18.0.0/15", "198.19.0.2:1123", 1<<17 - 1, "198.19.255.255"},
		{"2001:2::/112", "[2001:2:0:ff::2]:123", 0xabcd, "2001:2::abcd"},
		{"2001:2:ffff:ffff:ffff:ffff:ff00:0/104", "[2001:2:0:ff::2]:123", 1<<24 - 1, "2001:2:ffff:ffff:ffff:ffff:ffff:ffff"},
	}
	for _, c := range cases {
		network, target := netip.MustParsePrefix(c.network), netip.MustParseAddrPort(c.target)
		tmpl, err := newFrameTemplate(source, destination, network, target)
		if err != nil {
			t.Fatal(err)
		}
		if got := tmpl.sourceFor(c.index); got != netip.MustParseAddr(c.client) {
			t.Errorf("%s: client %d is %s, want %s", c.network, c.index, got, c.client)
		}
		// Every identity, including those whose checksum sums to zero.
		for _, id := range []uint64{0, 1, 0xffffffffffffffff, rawRequestID(7, 123456), 0x1234_5678_9abc_def0} {
			frame := append([]byte(nil), tmpl.frame...)
			tmpl.fill(frame, c.index, 40000, id)
			r, err := parseReplyFrame(frame)
			if err != nil {
				t.Fatalf("%s: %v", c.network, err)
			}
			if want := netip.AddrPortFrom(netip.MustParseAddr(c.client), 40000); r.source != want || r.destination != target {
				t.Errorf("%s: frame from %s to %s, want from %s to %s", c.network, r.source, r.destination, want, target)
			}
			if got := binary.BigEndian.Uint64(r.payload[40:]); got != id || len(r.payload) != 48 {
				t.Errorf("%s: %d-byte payload with transmit %#x, want 48 bytes with %#x", c.network, len(r.payload), got, id)
			}
			ip := frame[ethernetHeaderSize:]
			udp := ip[ipv4HeaderSize:]
			pseudo := onesSum(0, ip[12:20])
			if target.Addr().Is6() {
				udp = ip[ipv6HeaderSize:]
				pseudo = onesSum(0, ip[8:40])
			} else if sum := fold(onesSum(0, ip[:ipv4HeaderSize])); sum != 0xffff {
				t.Errorf("%s: IPv4 header sums to %#x", c.network, sum)
			}
			pseudo += protocolUDP + uint32(len(udp))
			if sum := fold(onesSum(pseudo, udp)); sum != 0xffff || binary.BigEndian.Uint16(udp[6:]) == 0 {
				t.Errorf("%s, id %#x: UDP checksum %#x sums to %#x", c.network, id, binary.BigEndian.Uint16(udp[6:]), sum)
			}
		}
	}
}

// TestCheckSourceNetwork counts the clients of a source network, and
// refuses networks outside the benchmark ranges.
func TestCheckSourceNetwork(t *testing.T) {
	v4, v6 := netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("2001:2:0:ff::2")
	cases := []struct {
		network string
		target  netip.Addr
		clients int // 0: refused
	}{
		{"198.18.0.0/16", v4, 65536},
		{"198.18.7.7/32", v4, 1},
		{"198.18.0.0/15", v4, 1 << 17},
		{"198.19.0.0/24", v4, 256},
		{"198.18.0.0/14", v4, 0},
		{"198.20.0.0/16", v4, 0},
		{"10.0.0.0/8", v4, 0},
		{"2001:2::/48", v6, MaxSourceAddresses},
		{"2001:2::/104", v6, 1 << 24},
		{"2001:2::/112", v6, 65536},
		{"2001:2::/47", v6, 0},
		{"2001:3::/112", v6, 0},
		{"2001:2::/112", v4, 0},
		{"198.18.0.0/16", v6, 0},
		{"::ffff:198.18.0.0/112", v4, 0},
	}
	for _, c := range cases {
		n, err := CheckSourceNetwork(netip.MustParsePrefix(c.network), c.target)
		if n != c.clients || (err == nil) != (c.clients > 0) {
			t.Errorf("CheckSourceNetwork(%s, %s) = %d, %v; want %d clients", c.network, c.target, n, err, c.clients)
		}
	}
}

// TestParseCPUTimes reads /proc/stat text, and what Busy makes of it: the
// time that passed less what the CPUs idled, whatever the sampled fields
// say.
func TestParseCPUTimes(t *testing.T) {
	stat := []byte("cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 100 0 50 1000 10 0 5 0 0 0\ncpu1 200 1 100 2000 20 3 40 2 0 0\nintr 1 2\n")
	c, err := parseCPUTimes(stat, []int{1})
	if err != nil {
		t.Fatal(err)
	}
	tick := time.Second / clockTicks
	want := CPUTimes{User: 200 * tick, Nice: tick, System: 100 * tick, Idle: 2000 * tick, IOWait: 20 * tick, IRQ: 3 * tick,
		Softirq: 40 * tick, Steal: 2 * tick, CPUs: 1}
	if c != want {
		t.Errorf("cpu1 = %+v, want %+v", c, want)
	}
	both, err := parseCPUTimes(stat, []int{1, 0})
	if err != nil || both.CPUs != 2 || both.User != 300*tick || both.Idle != 3000*tick {
		t.Errorf("cpu0+cpu1 = %+v, %v", both, err)
	}
	if _, err := parseCPUTimes(stat, []int{2}); err == nil {
		t.Error("CPU 2, missing, read without error")
	}
	earlier := want
	earlier.At = time.Unix(100, 0)
	later := earlier
	later.At = earlier.At.Add(time.Second)
	later.Idle += 600 * time.Millisecond
	later.IOWait += 100 * time.Millisecond
	later.System += 100 * time.Millisecond // sampled: Busy does not read it
	later.Softirq += 100 * time.Millisecond
	if got := later.Busy(earlier); got != 300*time.Millisecond {
		t.Errorf("Busy = %v, want 300ms", got)
	}
	if got := later.SoftirqPart(earlier); got != 150*time.Millisecond {
		t.Errorf("SoftirqPart = %v, want half of Busy", got)
	}
}

// TestParseCPUList reads taskset's list syntax.
func TestParseCPUList(t *testing.T) {
	for s, want := range map[string][]int{"1": {1}, "0,2-3": {0, 2, 3}, "3,1-2,2": {1, 2, 3}} {
		got, err := ParseCPUList(s)
		if err != nil || len(got) != len(want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v", s, got, err, want)
			continue
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("ParseCPUList(%q) = %v, want %v", s, got, want)
			}
		}
	}
	for _, s := range []string{"", "a", "2-1", "-1", "1,", "0-99999"} {
		if got, err := ParseCPUList(s); err == nil {
			t.Errorf("ParseCPUList(%q) = %v, want an error", s, got)
		}
	}
}

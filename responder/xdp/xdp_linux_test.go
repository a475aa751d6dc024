package xdp

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/responder/kernel"
	"github.com/fastntp/fastntp/upstream"
)

// XDP verdicts.
const (
	xdpDrop = 1
	xdpPass = 2
	xdpTX   = 3
)

// loopbackIndex is the interface index the test runs give the program:
// the loopback device's, which every namespace has.
const loopbackIndex = 1

// xdpContext is struct xdp_md, the context of a test run.
type xdpContext struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// testPath loads the program for cfg, unattached, with the loopback
// device standing for the server's, and publishes s. The kernel's TAI
// offset stays as it is until the test ends: a test elsewhere that changes
// it would have the program pass requests on.
func testPath(t testing.TB, cfg Config, s *upstream.Snapshot) *Path {
	t.Helper()
	chronytest.KeepTAI(t)
	return newTestPath(t, cfg, s)
}

// newTestPath is testPath for a test that changes the TAI offset itself.
func newTestPath(t testing.TB, cfg Config, s *upstream.Snapshot) *Path {
	t.Helper()
	chronytest.RequireRoot(t)
	if cfg.Served == nil {
		cfg.Served = []netip.AddrPort{netip.AddrPortFrom(testServer4, 123), netip.AddrPortFrom(testServer6, 123)}
	}
	p, err := load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.objects.DeviceAddresses.Put(uint32(loopbackIndex), kernel.XDPDevice{Mac: testServerMAC}); err != nil {
		t.Fatal(err)
	}
	if s != nil {
		if err := p.Publish(s); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// run runs the program on frame and returns its verdict and the frame as
// it left it.
func (p *Path) run(t testing.TB, frame []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+256)
	verdict, err := p.objects.FastntpXdp.Run(&ebpf.RunOptions{
		Data:    frame,
		DataOut: out,
		Context: xdpContext{DataEnd: uint32(len(frame)), IngressIfindex: loopbackIndex},
		Repeat:  1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return verdict, out[:len(frame)]
}

// syncedSnapshot is synchronized from now for a minute, with fields of
// its own in every place a reply carries them.
func syncedSnapshot() *upstream.Snapshot {
	now := time.Now()
	return &upstream.Snapshot{
		Synchronized: true, Leap: 0, Stratum: 3, Precision: -23,
		ReferenceID: 0xc0000201, ReferenceTime: 0x1234567890abcdef,
		RootDelay: 0x00000abc, RootDispersion: 0x00000123,
		Taken: now, Expires: now.Add(time.Minute),
	}
}

func TestVerdicts(t *testing.T) {
	p := testPath(t, Config{}, syncedSnapshot())
	client4 := netip.AddrPortFrom(testClient4, 40000)
	client6 := netip.AddrPortFrom(testClient6, 40000)
	server4 := netip.AddrPortFrom(testServer4, 123)
	server6 := netip.AddrPortFrom(testServer6, 123)
	otherMAC := [6]byte{0x02, 0, 0, 0, 0, 9}
	groupMAC := [6]byte{0x01, 0, 0x5e, 0, 0, 1}
	for _, tc := range []struct {
		name    string
		frame   frameSpec
		verdict uint32
		reason  PassReason // if passed
	}{
		{"v4 client", frameSpec{from: client4, to: server4, payload: request(4, 3)}, xdpTX, 0},
		{"v6 client", frameSpec{from: client6, to: server6, payload: request(4, 3)}, xdpTX, 0},
		{"v4 client, VLAN", frameSpec{from: client4, to: server4, payload: request(4, 3), vlan: true}, xdpTX, 0},
		{"v6 client, VLAN", frameSpec{from: client6, to: server6, payload: request(4, 3), vlan: true}, xdpTX, 0},
		{"v4 no checksum", frameSpec{from: client4, to: server4, payload: request(4, 3), noChecksum: true}, xdpTX, 0},
		{"v6 no checksum", frameSpec{from: client6, to: server6, payload: request(4, 3), noChecksum: true}, xdpPass, PassChecksum},
		{"v4 bad checksum", frameSpec{from: client4, to: server4, payload: request(4, 3), badSum: true}, xdpPass, PassChecksum},
		{"v6 bad checksum", frameSpec{from: client6, to: server6, payload: request(4, 3), badSum: true}, xdpPass, PassChecksum},
		{"bad IPv4 header checksum", frameSpec{from: client4, to: server4, payload: request(4, 3), badHeader: true}, xdpPass, PassChecksum},
		{"v4 symmetric active", frameSpec{from: client4, to: server4, payload: request(4, 1)}, xdpTX, 0},
		{"v1 mode 0", frameSpec{from: client4, to: server4, payload: request(1, 0)}, xdpTX, 0},
		{"v1 mode 0 from port 123", frameSpec{from: netip.AddrPortFrom(testClient4, 123), to: server4, payload: request(1, 0)}, xdpPass, PassRequest},
		{"v4 mode 0", frameSpec{from: client4, to: server4, payload: request(4, 0)}, xdpPass, PassRequest},
		{"v4 server", frameSpec{from: client4, to: server4, payload: request(4, 4)}, xdpPass, PassRequest},
		{"v5 client", frameSpec{from: client4, to: server4, payload: request(5, 3)}, xdpPass, PassRequest},
		{"v0 client", frameSpec{from: client4, to: server4, payload: request(0, 3)}, xdpPass, PassRequest},
		{"source port 0", frameSpec{from: netip.AddrPortFrom(testClient4, 0), to: server4, payload: request(4, 3)}, xdpPass, PassRequest},
		{"52 bytes", frameSpec{from: client4, to: server4, payload: append(request(4, 3), 0, 0, 0, 0)}, xdpPass, PassRequest},
		{"v6 52 bytes", frameSpec{from: client6, to: server6, payload: append(request(4, 3), 0, 0, 0, 0)}, xdpPass, PassRequest},
		{"47 bytes", frameSpec{from: client4, to: server4, payload: request(4, 3)[:47]}, xdpPass, PassRequest},
		{"other port", frameSpec{from: client4, to: netip.AddrPortFrom(testServer4, 124), payload: request(4, 3)}, xdpPass, PassOther},
		{"other address", frameSpec{from: client4, to: netip.AddrPortFrom(testClient4, 123), payload: request(4, 3)}, xdpPass, PassOther},
		{"v6 other address", frameSpec{from: client6, to: netip.AddrPortFrom(testClient6, 123), payload: request(4, 3)}, xdpPass, PassOther},
		{"fragment", frameSpec{from: client4, to: server4, payload: request(4, 3), fragment: true}, xdpPass, PassForm},
		{"padding", frameSpec{from: client4, to: server4, payload: request(4, 3), trailer: make([]byte, 4)}, xdpPass, PassForm},
		{"v6 padding", frameSpec{from: client6, to: server6, payload: request(4, 3), trailer: make([]byte, 4)}, xdpPass, PassForm},
		{"another host's MAC", frameSpec{from: client4, to: server4, payload: request(4, 3), dstMAC: &otherMAC}, xdpPass, PassForm},
		{"group MAC", frameSpec{from: client4, to: server4, payload: request(4, 3), dstMAC: &groupMAC}, xdpPass, PassForm},
		{"loopback source", frameSpec{from: netip.MustParseAddrPort("127.0.0.1:40000"), to: server4, payload: request(4, 3)}, xdpPass, PassForm},
		{"multicast source", frameSpec{from: netip.MustParseAddrPort("224.0.0.1:40000"), to: server4, payload: request(4, 3)}, xdpPass, PassForm},
		{"v6 multicast source", frameSpec{from: netip.MustParseAddrPort("[ff02::1]:40000"), to: server6, payload: request(4, 3)}, xdpPass, PassForm},
		{"v6 mapped source", frameSpec{from: netip.MustParseAddrPort("[::ffff:198.18.0.1]:40000"), to: server6, payload: request(4, 3)}, xdpPass, PassForm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := p.Counts()
			if err != nil {
				t.Fatal(err)
			}
			frame := buildFrame(tc.frame)
			verdict, out := p.run(t, frame)
			if verdict != tc.verdict {
				after, _ := p.Counts()
				t.Fatalf("verdict %d, want %d; counts %+v", verdict, tc.verdict, after)
			}
			after, err := p.Counts()
			if err != nil {
				t.Fatal(err)
			}
			if verdict == xdpPass {
				if got := after.Passed[tc.reason] - before.Passed[tc.reason]; got != 1 {
					t.Errorf("passed %d frames as %s; counts %v", got, tc.reason, after.Passed)
				}
				if string(out) != string(frame) {
					t.Error("a passed frame was changed")
				}
			}
			if verdict == xdpTX {
				if err := checkReplyFrame(frame, out); err != "" {
					t.Errorf("%s\nrequest %x\nreply   %x", err, frame, out)
				}
			}
		})
	}
}

// checkReplyFrame says what is wrong with reply as the answer to request:
// addresses and ports not swapped, a length changed, a checksum that does
// not hold.
func checkReplyFrame(request, reply []byte) string {
	if len(reply) != len(request) {
		return "length changed"
	}
	if string(reply[0:6]) != string(request[6:12]) || string(reply[6:12]) != string(request[0:6]) {
		return "Ethernet addresses not swapped"
	}
	l3 := 14
	if binary.BigEndian.Uint16(request[12:]) == 0x8100 {
		l3 = 18
		if string(reply[12:18]) != string(request[12:18]) {
			return "VLAN tag changed"
		}
	}
	var pseudo []byte
	var udp []byte
	switch reply[l3] >> 4 {
	case 4:
		ip := reply[l3 : l3+20]
		if sum16(ip, 0) != 0xffff {
			return "bad IPv4 header checksum"
		}
		if string(ip[12:16]) != string(request[l3+16:l3+20]) || string(ip[16:20]) != string(request[l3+12:l3+16]) {
			return "IPv4 addresses not swapped"
		}
		udp = reply[l3+20:]
		pseudo = append(append([]byte{}, ip[12:20]...), 0, 17, byte(len(udp)>>8), byte(len(udp)))
	case 6:
		ip := reply[l3 : l3+40]
		if string(ip[8:24]) != string(request[l3+24:l3+40]) || string(ip[24:40]) != string(request[l3+8:l3+24]) {
			return "IPv6 addresses not swapped"
		}
		udp = reply[l3+40:]
		pseudo = append(append([]byte{}, ip[8:40]...), 0, 0, byte(len(udp)>>8), byte(len(udp)), 0, 0, 0, 17)
	default:
		return "not IP"
	}
	requestUDP := request[len(request)-len(udp):]
	if string(udp[0:2]) != string(requestUDP[2:4]) || string(udp[2:4]) != string(requestUDP[0:2]) {
		return "ports not swapped"
	}
	if sum16(udp, uint32(sum16(pseudo, 0))) != 0xffff {
		return "bad UDP checksum"
	}
	return ""
}

// reply runs the program on a v4 client request from client and returns
// the NTP part of its reply, failing unless it replied.
func (p *Path) reply(t testing.TB, client netip.AddrPort, req []byte) []byte {
	t.Helper()
	frame := buildFrame(frameSpec{from: client, to: netip.AddrPortFrom(testServer4, 123), payload: req})
	verdict, out := p.run(t, frame)
	if verdict != xdpTX {
		t.Fatalf("verdict %d, want a reply", verdict)
	}
	if err := checkReplyFrame(frame, out); err != "" {
		t.Fatal(err)
	}
	return out[len(out)-48:]
}

// TestReplyFields checks every field of the reply against the state
// published, as responder's replyTemplate builds them: synchronized,
// expired, unsynchronized, and around a leap second.
func TestReplyFields(t *testing.T) {
	withLeap := func(start time.Duration) func() *upstream.Snapshot {
		return func() *upstream.Snapshot {
			s := syncedSnapshot()
			s.Leap = 1
			s.LeapStart = time.Now().Add(start)
			return s
		}
	}
	for _, tc := range []struct {
		name     string
		snapshot func() *upstream.Snapshot
		leap     uint8
		stratum  uint8
		synced   bool
	}{
		{"synchronized", syncedSnapshot, 0, 3, true},
		{"expired", func() *upstream.Snapshot {
			s := syncedSnapshot()
			s.Expires = time.Now().Add(-time.Millisecond)
			return s
		}, 3, 0, false},
		{"unsynchronized", func() *upstream.Snapshot { return upstream.Unsynchronized(-20, upstream.CauseNoAnswer, "test") }, 3, 0, false},
		{"leap announced", withLeap(time.Hour), 1, 3, true},
		{"leap in progress", withLeap(-time.Second), 3, 3, true},
		{"leap over", withLeap(-3 * time.Second), 0, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.snapshot()
			p := testPath(t, Config{MinPoll: -6}, s)
			req := request(4, 3)
			req[2] = 0x80 // poll -128, raised to the floor
			before := time.Now()
			reply := p.reply(t, netip.AddrPortFrom(testClient4, 40000), req)
			after := time.Now()
			if got := reply[0]; got != tc.leap<<6|4<<3|4 {
				t.Errorf("leap, version, mode %#x, want leap %d, version 4, mode 4", got, tc.leap)
			}
			if reply[1] != tc.stratum {
				t.Errorf("stratum %d, want %d", reply[1], tc.stratum)
			}
			if int8(reply[2]) != -6 {
				t.Errorf("poll %d, want the floor -6", int8(reply[2]))
			}
			if int8(reply[3]) != s.Precision {
				t.Errorf("precision %d, want %d", int8(reply[3]), s.Precision)
			}
			wantDelay, wantID, wantRef := uint32(1<<16), uint32(0), uint64(0)
			minDispersion, maxDispersion := uint32(1<<16), uint32(1<<16)
			if tc.synced {
				wantDelay, wantID, wantRef = uint32(s.RootDelay), s.ReferenceID, uint64(s.ReferenceTime)
				minDispersion, maxDispersion = uint32(s.DispersionAt(before)), uint32(s.DispersionAt(after))+1
			}
			if got := binary.BigEndian.Uint32(reply[4:]); got != wantDelay {
				t.Errorf("root delay %#x, want %#x", got, wantDelay)
			}
			// Grown by 15 ppm of the snapshot's age, as the socket
			// path grows it, give or take the rounding of a unit.
			if got := binary.BigEndian.Uint32(reply[8:]); got+1 < minDispersion || got > maxDispersion {
				t.Errorf("root dispersion %#x, want %#x to %#x", got, minDispersion, maxDispersion)
			}
			if got := binary.BigEndian.Uint32(reply[12:]); got != wantID {
				t.Errorf("reference ID %#x, want %#x", got, wantID)
			}
			if got := binary.BigEndian.Uint64(reply[16:]); got != wantRef {
				t.Errorf("reference time %#x, want %#x", got, wantRef)
			}
			if got := binary.BigEndian.Uint64(reply[24:]); got != 0xdeadbeefcafef00d {
				t.Errorf("origin %#x, want the request's transmit stamp", got)
			}
			received := ntp.Time64(binary.BigEndian.Uint64(reply[32:])).Time(before)
			transmit := ntp.Time64(binary.BigEndian.Uint64(reply[40:])).Time(before)
			slack := time.Millisecond
			if received.Before(before.Add(-slack)) || transmit.After(after.Add(slack)) || transmit.Before(received) {
				t.Errorf("stamps %v and %v, want in order between %v and %v", received, transmit, before, after)
			}
		})
	}
}

// TestAccessRules checks that the program applies the longest prefix that
// holds a client, in both families, and the default where none does.
func TestAccessRules(t *testing.T) {
	rules := []AccessRule{
		{netip.MustParsePrefix("198.18.0.0/15"), true},
		{netip.MustParsePrefix("198.18.7.0/24"), false},
		{netip.MustParsePrefix("198.18.7.7/32"), true},
		{netip.MustParsePrefix("2001:2::/48"), true},
		{netip.MustParsePrefix("2001:2:0:5::/64"), false},
	}
	for _, tc := range []struct {
		name         string
		defaultAllow bool
		client       string
		want         uint32
	}{
		{"allowed network", false, "198.18.1.1", xdpTX},
		{"denied within it", false, "198.18.7.1", xdpDrop},
		{"allowed within that", false, "198.18.7.7", xdpTX},
		{"no rule, allow rules present", false, "203.0.113.1", xdpDrop},
		{"no rule, default allow", true, "203.0.113.1", xdpTX},
		{"IPv6 allowed", false, "2001:2::9", xdpTX},
		{"IPv6 denied", false, "2001:2:0:5::9", xdpDrop},
		{"IPv6 no rule", false, "2001:db8::1", xdpDrop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPath(t, Config{Access: rules, DefaultAllow: tc.defaultAllow}, syncedSnapshot())
			client := netip.MustParseAddr(tc.client)
			server := testServer4
			if client.Is6() {
				server = testServer6
			}
			verdict, _ := p.run(t, buildFrame(frameSpec{from: netip.AddrPortFrom(client, 40000), to: netip.AddrPortFrom(server, 123), payload: request(4, 3)}))
			if verdict != tc.want {
				t.Errorf("verdict %d, want %d", verdict, tc.want)
			}
			c, _ := p.Counts()
			family := c.IPv4
			if client.Is6() {
				family = c.IPv6
			}
			if (tc.want == xdpDrop) != (family.Denied == 1) || family.Received != 1 {
				t.Errorf("counts %+v", family)
			}
		})
	}
}

// TestRateLimitRecords checks the rate limit's memory: a slot of records
// holds SlotRecords addresses, the least recently heard one makes room for
// a new one, counted as evicted, and a client's bucket, burst and then
// limit, holds across its requests.
func TestRateLimitRecords(t *testing.T) {
	limit := &RateLimit{TokensPerHit: 1 << 4, MaxTokens: 4 << 4, Leak: 4, Slots: 1, HashSeed: 1}
	p := testPath(t, Config{RateLimit: limit}, syncedSnapshot())
	client := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), 40000)
	}
	send := func(c netip.AddrPort) uint32 {
		v, _ := p.run(t, buildFrame(frameSpec{from: c, to: netip.AddrPortFrom(testServer4, 123), payload: request(4, 3)}))
		return v
	}
	// A burst of four, then mostly nothing: one in 16 leaks.
	replies := 0
	for range 40 {
		if send(client(0)) == xdpTX {
			replies++
		}
	}
	if replies < 4 || replies > 12 {
		t.Errorf("%d of 40 back-to-back requests answered with a burst of 4", replies)
	}
	for i := 1; i < SlotRecords; i++ {
		send(client(i))
	}
	if c, _ := p.Counts(); c.IPv4.Evicted != 0 {
		t.Fatalf("%d records evicted with room for all", c.IPv4.Evicted)
	}
	// A seventeenth address takes the record heard from least recently
	// (in the records' 1/16 s ticks, all alike here), and least often:
	// not client 0's, whose bucket stays empty.
	send(client(SlotRecords))
	if c, _ := p.Counts(); c.IPv4.Evicted != 1 {
		t.Fatalf("%d records evicted, want 1", c.IPv4.Evicted)
	}
	replies = 0
	for range 8 {
		if send(client(0)) == xdpTX {
			replies++
		}
	}
	if replies > 3 {
		t.Errorf("client 0 got %d of 8 answers: its record was forgotten", replies)
	}
}

// TestKissOfDeath checks the RATE kiss-o'-death of a limited request.
func TestKissOfDeath(t *testing.T) {
	// Leak 4 and KoD 1: about half the limited requests get one.
	limit := &RateLimit{TokensPerHit: 1 << 4, MaxTokens: 1 << 4, Leak: 4, KoD: 1, Slots: 1, HashSeed: 1}
	p := testPath(t, Config{RateLimit: limit}, syncedSnapshot())
	kods := 0
	for range 64 {
		frame := buildFrame(frameSpec{from: netip.AddrPortFrom(testClient4, 40000), to: netip.AddrPortFrom(testServer4, 123), payload: request(4, 3)})
		verdict, out := p.run(t, frame)
		if verdict != xdpTX {
			continue
		}
		if err := checkReplyFrame(frame, out); err != "" {
			t.Fatal(err)
		}
		reply := out[len(out)-48:]
		if reply[1] != 0 {
			continue
		}
		kods++
		if reply[0]>>6 != 3 || binary.BigEndian.Uint32(reply[12:]) != 0x52415445 || binary.BigEndian.Uint64(reply[24:]) != 0xdeadbeefcafef00d {
			t.Errorf("kiss-o'-death %x", reply)
		}
	}
	c, _ := p.Counts()
	if kods < 16 || kods > 48 || uint64(kods) != c.IPv4.KoDSent {
		t.Errorf("%d kiss-o'-death of 64 (counted %d), want about half", kods, c.IPv4.KoDSent)
	}
}

// TestClockGuard checks that the program stops answering, and passes
// every request on, when the TAI clock's distance from the monotonic one
// is not what the daemon last told it: the system clock was stepped, or
// the TAI offset changed, and its offset may be stale.
func TestClockGuard(t *testing.T) {
	p := testPath(t, Config{}, syncedSnapshot())
	frame := buildFrame(frameSpec{from: netip.AddrPortFrom(testClient4, 40000), to: netip.AddrPortFrom(testServer4, 123), payload: request(4, 3)})
	if v, _ := p.run(t, frame); v != xdpTX {
		t.Fatalf("verdict %d before the step", v)
	}
	p.mu.Lock()
	c := p.config
	c.Clock.TaiMinusMonoNs += int64(2 * kernel.ClockGuard)
	err := p.objects.Configuration.Put(uint32(0), &c)
	p.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := p.run(t, frame); v != xdpPass {
		t.Fatalf("verdict %d after the step, want it passed on", v)
	}
	if counts, _ := p.Counts(); counts.Passed[PassClock] != 1 {
		t.Errorf("passed %v", counts.Passed)
	}
	// The daemon's next word tells it the truth again.
	if err := p.Publish(p.last); err != nil {
		t.Fatal(err)
	}
	if v, _ := p.run(t, frame); v != xdpTX {
		t.Fatalf("verdict %d after the refresh", v)
	}
}

// TestLayouts checks the sizes the Go side assumes of the program's types.
func TestLayouts(t *testing.T) {
	if got := binary.Size(kernel.XDPRecord{}); got != RecordSize {
		t.Errorf("a record is %d bytes, RecordSize says %d", got, RecordSize)
	}
	var slot kernel.XDPSlot
	if len(slot.Records) != SlotRecords {
		t.Errorf("a slot holds %d records, SlotRecords says %d", len(slot.Records), SlotRecords)
	}
}

type staticSource struct{ s *upstream.Snapshot }

func (s staticSource) Load() *upstream.Snapshot { return s.s }

// TestRunFailure checks that Run, when it can no longer tell the program
// the clock, detaches it and says why, and that its counts outlive it.
func TestRunFailure(t *testing.T) {
	p := testPath(t, Config{}, syncedSnapshot())
	frame := buildFrame(frameSpec{from: netip.AddrPortFrom(testClient4, 40000), to: netip.AddrPortFrom(testServer4, 123), payload: request(4, 3)})
	if v, _ := p.run(t, frame); v != xdpTX {
		t.Fatalf("verdict %d", v)
	}
	p.readClock = func() (kernel.Clock, error) { return kernel.Clock{}, errors.New("no clock") }
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background(), staticSource{syncedSnapshot()}) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no clock") {
			t.Errorf("Run: %v, want the clock's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if p.Attached() {
		t.Error("still attached after Run failed")
	}
	c, err := p.Counts()
	if err != nil || c.IPv4.Replied != 1 {
		t.Errorf("counts after the detach: %+v, %v", c.IPv4, err)
	}
	if err := p.Publish(syncedSnapshot()); err == nil {
		t.Error("Publish after the detach succeeded")
	}
}

// changingSource announces each new state, as upstream.Poller does.
type changingSource struct {
	mu       sync.Mutex
	snapshot *upstream.Snapshot
	changed  chan struct{}
}

func (c *changingSource) Load() *upstream.Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snapshot
}

func (c *changingSource) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *changingSource) publish(s *upstream.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.snapshot = s
	close(c.changed)
	c.changed = make(chan struct{})
}

// quietSource never changes, and says so.
type quietSource struct{ s *upstream.Snapshot }

func (q quietSource) Load() *upstream.Snapshot { return q.s }
func (q quietSource) Changed() <-chan struct{} { return nil }

// TestRunWakes checks that Run, with a source that says when it changes,
// wakes for nothing else than the clock's occasional check: an idle server
// costs nothing more.
func TestRunWakes(t *testing.T) {
	p := testPath(t, Config{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, quietSource{syncedSnapshot()}) }()
	time.Sleep(time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if wakes := p.wakes.Load(); wakes != 1 {
		t.Errorf("Run woke %d times in a second, want once", wakes)
	}
}

// TestTAIOffsetNoticed changes the kernel's TAI offset under a running
// Run: at its next look (here, the next new state) it tells the program,
// which passed every request on to the sockets meanwhile and then answers
// with the new offset.
func TestTAIOffsetNoticed(t *testing.T) {
	set := chronytest.ChangeTAI(t)
	p := newTestPath(t, Config{}, nil)
	snapshot := syncedSnapshot()
	source := &changingSource{snapshot: snapshot, changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, source) }()
	defer func() {
		cancel()
		<-done
	}()
	written := func() (*upstream.Snapshot, time.Duration) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.last, time.Duration(p.config.Clock.TaiOffsetNs)
	}
	for deadline := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
		if last, _ := written(); last == snapshot {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not write the configuration")
		}
	}
	start, err := kernel.ReadClock()
	if err != nil {
		t.Fatal(err)
	}
	frame := buildFrame(frameSpec{from: netip.AddrPortFrom(testClient4, 40000), to: netip.AddrPortFrom(testServer4, 123), payload: request(4, 3)})
	next := start.TAIOffset + 3*time.Second
	set(int(next / time.Second))
	changed := time.Now()
	if verdict, _ := p.run(t, frame); verdict != xdpPass {
		t.Errorf("verdict %d right after the change, want the request passed on", verdict)
	}
	source.publish(syncedSnapshot())
	for {
		if _, offset := written(); offset == next {
			break
		}
		if time.Since(changed) > 2*time.Second {
			t.Fatalf("the program still has the old TAI offset 2 s after it became %v", next)
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := time.Now()
	verdict, out := p.run(t, frame)
	if verdict != xdpTX {
		t.Fatalf("verdict %d with the new offset", verdict)
	}
	if transmit := ntp.Time64(binary.BigEndian.Uint64(out[len(out)-8:])).Time(before); transmit.Sub(before).Abs() > 100*time.Millisecond {
		t.Errorf("transmit stamp %v, %v from the system clock", transmit, transmit.Sub(before))
	}
}

// TestServedWildcard checks that a socket bound to a family's unspecified
// address has the program answer requests to the addresses the namespace
// has, and pass on those to any other (another host's, routed through
// this one) and to loopback addresses, as the stack would.
func TestServedWildcard(t *testing.T) {
	chronytest.KeepTAI(t)
	ns := chronytest.Namespace(t)
	for _, args := range [][]string{
		{"ip", "link", "add", "srv0", "type", "veth", "peer", "name", "srv1"},
		{"ip", "address", "add", "198.19.0.2/24", "dev", "srv0"},
		{"ip", "link", "set", "srv0", "up"},
	} {
		if out, err := chronytest.Command(ns, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	err := chronytest.InNamespace(ns, func() error {
		served, err := expandServed([]netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:123")})
		if err != nil {
			return err
		}
		if want := []netip.AddrPort{netip.AddrPortFrom(testServer4, 123)}; !slices.Equal(served, want) {
			t.Errorf("served %v, want %v", served, want)
		}
		p := newTestPath(t, Config{Served: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:123")}}, syncedSnapshot())
		for _, tc := range []struct {
			to   string
			want uint32
		}{
			{"198.19.0.2:123", xdpTX},
			{"198.19.0.3:123", xdpPass},
			{"127.0.0.1:123", xdpPass},
			{"198.19.0.2:124", xdpPass},
		} {
			frame := buildFrame(frameSpec{from: netip.AddrPortFrom(testClient4, 40000), to: netip.MustParseAddrPort(tc.to), payload: request(4, 3)})
			if verdict, _ := p.run(t, frame); verdict != tc.want {
				t.Errorf("to %s: verdict %d, want %d", tc.to, verdict, tc.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAttachModes attaches to a device whose driver has no XDP of its own
// (a bridge): auto falls back to the generic path, native is refused, and
// the program is gone from the device once closed.
func TestAttachModes(t *testing.T) {
	ns := chronytest.Namespace(t)
	for _, args := range [][]string{
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "link", "set", "br0", "up"},
	} {
		if out, err := chronytest.Command(ns, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	attach := func(mode Mode) (*Path, error) {
		var p *Path
		err := chronytest.InNamespace(ns, func() error {
			var err error
			p, err = Attach(Config{Devices: []string{"br0"}, Mode: mode, Served: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:123")}})
			return err
		})
		return p, err
	}
	if _, err := attach(ModeNative); err == nil || !strings.Contains(err.Error(), "native mode") {
		t.Errorf("native mode on a bridge: %v, want a refusal", err)
	}
	p, err := attach(ModeAuto)
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Devices(); len(d) != 1 || d[0].Mode != ModeGeneric {
		t.Errorf("auto mode attached as %v, want generic", d)
	}
	var id uint32
	chronytest.InNamespace(ns, func() error {
		ifc, err := net.InterfaceByName("br0")
		if err == nil {
			id, err = attachedProgram(ifc.Index)
		}
		return err
	})
	if id == 0 {
		t.Error("no XDP program on br0 after Attach")
	}
	p.Close()
	chronytest.InNamespace(ns, func() error {
		ifc, err := net.InterfaceByName("br0")
		if err == nil {
			id, err = attachedProgram(ifc.Index)
		}
		return err
	})
	if id != 0 {
		t.Errorf("program %d still on br0 after Close", id)
	}
}

// BenchmarkProgram runs the program through BPF_PROG_TEST_RUN, which
// measures its time per frame in the kernel (ns/frame) without the
// device's cost around it. A test run repeats on one buffer, which a reply
// would rewrite, so the frames measured are ones the program leaves as
// they are: a request to a port not served (passed on at the first map
// lookup), and one from a denied client, which goes through every check,
// the clock readings, the access rules and two counts, all but the reply
// itself.
func BenchmarkProgram(b *testing.B) {
	for _, tc := range []struct {
		name string
		to   netip.AddrPort
	}{
		{"other-port", netip.AddrPortFrom(testServer4, 124)},
		{"denied", netip.AddrPortFrom(testServer4, 123)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := testPath(b, Config{Access: []AccessRule{{netip.MustParsePrefix("10.0.0.0/8"), true}}}, syncedSnapshot())
			frame := buildFrame(frameSpec{from: netip.AddrPortFrom(testClient4, 40000), to: tc.to, payload: request(4, 3)})
			before, _ := p.Counts()
			verdict, perRun, err := p.objects.FastntpXdp.Benchmark(frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			after, _ := p.Counts()
			if tc.name == "denied" && (verdict != xdpDrop || after.IPv4.Denied == before.IPv4.Denied) {
				b.Fatalf("verdict %d, counts %+v: not denied", verdict, after.IPv4)
			}
			b.ReportMetric(float64(perRun.Nanoseconds()), "ns/frame")
		})
	}
}

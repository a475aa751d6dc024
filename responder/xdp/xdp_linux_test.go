package xdp

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fastntp/fastntp/internal/chronytest"
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
// device standing for the server's, and publishes s.
func testPath(t testing.TB, cfg Config, s *upstream.Snapshot) *Path {
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

package xdp

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// wantReply says whether the socket path would answer frame, arriving at
// the server's device, with the plain reply: the program may answer it,
// and must pass on anything else. It is written apart from the program,
// from the conditions the kernel's stack and responder's classify apply.
func wantReply(frame []byte, served map[netip.AddrPort]bool) bool {
	if len(frame) < 14 || [6]byte(frame[0:6]) != testServerMAC || frame[6]&1 != 0 {
		return false
	}
	l3 := 14
	proto := binary.BigEndian.Uint16(frame[12:])
	if proto == 0x8100 {
		if len(frame) < 18 {
			return false
		}
		l3 = 18
		proto = binary.BigEndian.Uint16(frame[16:])
	}
	var udp []byte
	var src, dst netip.Addr
	var pseudo []byte
	switch proto {
	case 0x0800:
		ip := frame[l3:]
		if len(ip) < 20 || ip[0] != 0x45 || ip[9] != 17 || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 ||
			int(binary.BigEndian.Uint16(ip[2:])) != len(ip) || sum16(ip[:20], 0) != 0xffff {
			return false
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		if src.IsUnspecified() || src.IsLoopback() || src.IsMulticast() || ip[12] == 0 || ip[12] >= 240 || ip[16] >= 224 {
			return false
		}
		udp = ip[20:]
		pseudo = append(append([]byte{}, ip[12:20]...), 0, 17, byte(len(udp)>>8), byte(len(udp)))
	case 0x86dd:
		ip := frame[l3:]
		if len(ip) < 40 || ip[0]>>4 != 6 || ip[6] != 17 || int(binary.BigEndian.Uint16(ip[4:])) != len(ip)-40 {
			return false
		}
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		if src.IsMulticast() || dst.IsMulticast() || src.IsUnspecified() || src.IsLoopback() || src.Is4In6() {
			return false
		}
		udp = ip[40:]
		pseudo = append(append([]byte{}, ip[8:40]...), 0, 0, byte(len(udp)>>8), byte(len(udp)), 0, 0, 0, 17)
	default:
		return false
	}
	if len(udp) != 8+48 || binary.BigEndian.Uint16(udp[4:]) != 56 {
		return false
	}
	sourcePort, destPort := binary.BigEndian.Uint16(udp[0:]), binary.BigEndian.Uint16(udp[2:])
	if !served[netip.AddrPortFrom(dst, destPort)] || sourcePort == 0 {
		return false
	}
	check := binary.BigEndian.Uint16(udp[6:])
	if (check != 0 || src.Is6()) && sum16(udp, uint32(sum16(pseudo, 0))) != 0xffff {
		return false
	}
	version, mode := udp[8]>>3&7, udp[8]&7
	if version < 1 || version > 4 {
		return false
	}
	return mode == 3 || mode == 1 || (mode == 0 && version == 1 && sourcePort != 123)
}

// FuzzProgram runs the program on random and mutated frames: it answers
// exactly the plain requests, never changes a frame it passes on, never drops one (without access rules or a
// rate limit, there is nothing to drop for), never answers a frame the
// socket path would not answer with the plain reply, and its replies are
// the request's length, addressed back, with checksums that hold.
func FuzzProgram(f *testing.F) {
	client4, client6 := netip.AddrPortFrom(testClient4, 40000), netip.AddrPortFrom(testClient6, 40000)
	server4, server6 := netip.AddrPortFrom(testServer4, 123), netip.AddrPortFrom(testServer6, 123)
	for _, s := range []frameSpec{
		{from: client4, to: server4, payload: request(4, 3)},
		{from: client6, to: server6, payload: request(4, 3)},
		{from: client4, to: server4, payload: request(1, 0), vlan: true},
		{from: client6, to: server6, payload: request(3, 1), vlan: true},
		{from: client4, to: server4, payload: request(4, 3), noChecksum: true},
		{from: client4, to: server4, payload: append(request(4, 3), 0, 0, 0, 0)},
		{from: client4, to: server4, payload: request(4, 3), trailer: []byte{0, 0}},
	} {
		f.Add(buildFrame(s))
	}
	served := map[netip.AddrPort]bool{server4: true, server6: true}
	p := testPath(f, Config{}, syncedSnapshot())
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return // the kernel's test run refuses such frames
		}
		verdict, out := p.run(t, frame)
		want := wantReply(frame, served)
		switch verdict {
		case xdpPass:
			if want {
				t.Fatalf("passed on a plain request:\n%x", frame)
			}
			if string(out) != string(frame) {
				t.Fatalf("a passed frame was changed:\n%x\n%x", frame, out)
			}
		case xdpTX:
			if !want {
				t.Fatalf("answered a frame the socket path would not answer so:\n%x", frame)
			}
			if err := checkReplyFrame(frame, out); err != "" {
				t.Fatalf("%s:\nrequest %x\nreply   %x", err, frame, out)
			}
		default:
			t.Fatalf("verdict %d for %x", verdict, frame)
		}
	})
}

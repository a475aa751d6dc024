package batch

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func timespec(sec, nsec int64) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint64(b, uint64(sec))
	binary.NativeEndian.PutUint64(b[8:], uint64(nsec))
	return b
}

func TestParseControl(t *testing.T) {
	pktinfo4 := make([]byte, unix.SizeofInet4Pktinfo)
	binary.NativeEndian.PutUint32(pktinfo4, 3)
	copy(pktinfo4[4:], []byte{10, 0, 0, 9}) // spec_dst: not what we want
	copy(pktinfo4[8:], []byte{192, 0, 2, 7})
	pktinfo6 := make([]byte, unix.SizeofInet6Pktinfo)
	copy(pktinfo6, netip.MustParseAddr("2001:db8::7").AsSlice())
	binary.NativeEndian.PutUint32(pktinfo6[16:], 5)
	drops := binary.NativeEndian.AppendUint32(nil, 17)

	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	tests := []struct {
		name      string
		oob       []byte
		want      Message
		wantDrops uint32
	}{
		{"empty", nil, Message{}, 0},
		{"timestamp new", cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, timespec(1700000000, 5)),
			Message{Received: time.Unix(1700000000, 5)}, 0},
		{"timestamp old", cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_OLD, timespec(1700000000, 6)),
			Message{Received: time.Unix(1700000000, 6)}, 0},
		{"all v4", cat(cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, pktinfo4),
			cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, timespec(1, 2)),
			cmsg(unix.SOL_SOCKET, unix.SO_RXQ_OVFL, drops)),
			Message{Local: netip.MustParseAddr("192.0.2.7"), Interface: 3, Received: time.Unix(1, 2)}, 17},
		{"v6 pktinfo", cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, pktinfo6),
			Message{Local: netip.MustParseAddr("2001:db8::7"), Interface: 5}, 0},
		{"short timestamp ignored", cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, make([]byte, 8)), Message{}, 0},
		{"truncated header", cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, timespec(1, 2))[:10], Message{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m Message
			d, _ := parseControl(tt.oob, &m)
			if !m.Received.Equal(tt.want.Received) || m.Local != tt.want.Local || m.Interface != tt.want.Interface || d != tt.wantDrops {
				t.Errorf("got %+v drops %d, want %+v drops %d", m, d, tt.want, tt.wantDrops)
			}
		})
	}
}

func TestPutSource(t *testing.T) {
	for _, tc := range []struct {
		local     string
		iface     uint32
		wantIface uint32
	}{{"192.0.2.1", 4, 0}, {"2001:db8::1", 4, 0}, {"fe80::1", 4, 4}} {
		oob := make([]byte, sourceControlSize)
		n := putSource(oob, netip.MustParseAddr(tc.local), tc.iface)
		hdr, data, _, err := unix.ParseOneSocketControlMessage(oob[:n])
		if err != nil {
			t.Fatalf("%s: %v", tc.local, err)
		}
		var addr netip.Addr
		var iface uint32
		switch {
		case hdr.Level == unix.IPPROTO_IP && hdr.Type == unix.IP_PKTINFO:
			addr = netip.AddrFrom4([4]byte(data[4:8]))
			iface = binary.NativeEndian.Uint32(data)
		case hdr.Level == unix.IPPROTO_IPV6 && hdr.Type == unix.IPV6_PKTINFO:
			addr = netip.AddrFrom16([16]byte(data[:16]))
			iface = binary.NativeEndian.Uint32(data[16:])
		}
		if addr.String() != tc.local || iface != tc.wantIface {
			t.Errorf("%s: control says %v on interface %d, want interface %d", tc.local, addr, iface, tc.wantIface)
		}
	}
}

func TestSockaddrRoundTrip(t *testing.T) {
	for _, s := range []string{"192.0.2.1:123", "[2001:db8::1]:40000", "0.0.0.0:0"} {
		ap := netip.MustParseAddrPort(s)
		var sa sockaddr
		encodeSockaddr(&sa, ap)
		if got := decodeSockaddr(&sa); got != ap {
			t.Errorf("%s: round trip gave %s", s, got)
		}
	}
}

// FuzzParseControl checks two properties. Control data the kernel could
// send, built from fuzzed fields in a fuzzed order, parses back to those
// fields; the IPv4 packet info carries a destination the datagram was
// sent to (ipi_addr) and a different one the kernel would reply from
// (ipi_spec_dst), and the parser must take the first. Arbitrary bytes,
// as the rest of the input, never make it panic nor read past the data.
func FuzzParseControl(f *testing.F) {
	f.Add(cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, timespec(1, 2)), uint8(0), int64(1700000000), uint32(5), uint32(0xc0000207), uint32(3), []byte{0x20, 0x01, 0x0d, 0xb8}, uint32(17))
	f.Add(cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, make([]byte, 12)), uint8(0x1f), int64(0), uint32(0), uint32(0), uint32(0), []byte(nil), uint32(0))
	f.Add(cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, make([]byte, 20)), uint8(0x2e), int64(-1), uint32(999999999), uint32(1), uint32(1<<31), []byte("0123456789abcdef"), uint32(1<<32-1))
	f.Fuzz(func(t *testing.T, raw []byte, layout uint8, sec int64, nsec, addr4, iface uint32, addr6 []byte, drops uint32) {
		var m Message
		parseControl(aligned(raw), &m)

		// layout's bits choose the messages (bit 0 a timestamp, 1 the
		// drop counter, 2 IPv4 or else IPv6 packet info, 3 packet info
		// at all) and their order (bits 4 and 5).
		nsec %= 1e9
		sec %= 1 << 40
		spec := addr4 ^ 0xffffffff // never ipi_addr
		var want Message
		var wantDrops uint32
		var parts [][]byte
		if layout&1 != 0 {
			parts = append(parts, cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, timespec(sec, int64(nsec))))
			want.Received = time.Unix(sec, int64(nsec))
		}
		if layout&2 != 0 {
			parts = append(parts, cmsg(unix.SOL_SOCKET, unix.SO_RXQ_OVFL, binary.NativeEndian.AppendUint32(nil, drops)))
			wantDrops = drops
		}
		if layout&8 != 0 {
			if layout&4 != 0 {
				info := make([]byte, unix.SizeofInet4Pktinfo)
				binary.NativeEndian.PutUint32(info, iface)
				binary.BigEndian.PutUint32(info[4:], spec)
				binary.BigEndian.PutUint32(info[8:], addr4)
				parts = append(parts, cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, info))
				want.Local = netip.AddrFrom4([4]byte(info[8:12]))
			} else {
				var a [16]byte
				copy(a[:], addr6)
				info := append(a[:], binary.NativeEndian.AppendUint32(nil, iface)...)
				parts = append(parts, cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, info))
				want.Local = netip.AddrFrom16(a)
			}
			want.Interface = iface
		}
		for range layout >> 4 & 3 {
			if len(parts) > 1 {
				parts = append(parts[1:], parts[0])
			}
		}
		var built []byte
		for _, p := range parts {
			built = append(built, p...)
		}
		var got Message
		gotDrops, _ := parseControl(aligned(built), &got)
		if !got.Received.Equal(want.Received) || got.Local != want.Local || got.Interface != want.Interface || gotDrops != wantDrops {
			t.Fatalf("parsed %+v drops %d, built %+v drops %d", got, gotDrops, want, wantDrops)
		}
	})
}

// aligned copies b into memory aligned as the kernel's control buffers are,
// to 8 bytes.
func aligned(b []byte) []byte {
	words := make([]uint64, (len(b)+7)/8)
	out := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), len(words)*8)[:len(b)]
	copy(out, b)
	return out
}

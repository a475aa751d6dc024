package xdp

import (
	"encoding/binary"
	"net/netip"
)

// Addresses of the frames the tests build: the client, the server and
// their Ethernet addresses.
var (
	testClient4   = netip.MustParseAddr("198.18.0.1")
	testServer4   = netip.MustParseAddr("198.19.0.2")
	testClient6   = netip.MustParseAddr("2001:2::1")
	testServer6   = netip.MustParseAddr("2001:2:0:ff::2")
	testClientMAC = [6]byte{0x02, 0, 0, 0, 0, 1}
	testServerMAC = [6]byte{0x02, 0, 0, 0, 0, 2}
)

// frameSpec describes a frame to build.
type frameSpec struct {
	from, to   netip.AddrPort
	payload    []byte
	vlan       bool   // one 802.1Q tag
	noChecksum bool   // a UDP checksum of zero
	badSum     bool   // a wrong UDP checksum
	fragment   bool   // IPv4's more-fragments flag
	badHeader  bool   // a wrong IPv4 header checksum
	trailer    []byte // bytes after the IP datagram
	dstMAC     *[6]byte
}

// buildFrame returns the Ethernet frame of s.
func buildFrame(s frameSpec) []byte {
	dst := testServerMAC
	if s.dstMAC != nil {
		dst = *s.dstMAC
	}
	f := append([]byte{}, dst[:]...)
	f = append(f, testClientMAC[:]...)
	if s.vlan {
		f = append(f, 0x81, 0x00, 0x00, 0x07)
	}
	udp := make([]byte, 8+len(s.payload))
	binary.BigEndian.PutUint16(udp[0:], s.from.Port())
	binary.BigEndian.PutUint16(udp[2:], s.to.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], s.payload)
	var pseudo []byte
	src, dstAddr := s.from.Addr(), s.to.Addr()
	if src.Is4() {
		f = append(f, 0x08, 0x00)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		if s.fragment {
			ip[6] = 0x20
		}
		ip[8] = 64
		ip[9] = 17
		a, b := src.As4(), dstAddr.As4()
		copy(ip[12:], a[:])
		copy(ip[16:], b[:])
		binary.BigEndian.PutUint16(ip[10:], ^sum16(ip, 0))
		if s.badHeader {
			ip[10] ^= 0x10
		}
		pseudo = append(append(append([]byte{}, a[:]...), b[:]...), 0, 17, byte(len(udp)>>8), byte(len(udp)))
		f = append(f, ip...)
	} else {
		f = append(f, 0x86, 0xdd)
		ip := make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
		ip[6] = 17
		ip[7] = 64
		a, b := src.As16(), dstAddr.As16()
		copy(ip[8:], a[:])
		copy(ip[24:], b[:])
		pseudo = append(append(append([]byte{}, a[:]...), b[:]...), 0, 0, byte(len(udp)>>8), byte(len(udp)), 0, 0, 0, 17)
		f = append(f, ip...)
	}
	check := ^sum16(udp, uint32(sum16(pseudo, 0)))
	if check == 0 {
		check = 0xffff
	}
	switch {
	case s.noChecksum:
		check = 0
	case s.badSum:
		check ^= 0x0101
	}
	binary.BigEndian.PutUint16(udp[6:], check)
	f = append(f, udp...)
	return append(f, s.trailer...)
}

// sum16 is the ones' complement sum of b's 16-bit words, from start.
func sum16(b []byte, start uint32) uint16 {
	sum := start
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// request returns a 48-byte NTP request of the version and mode.
func request(version, mode uint8) []byte {
	b := make([]byte, 48)
	b[0] = version<<3 | mode
	b[2] = 6
	binary.BigEndian.PutUint64(b[40:], 0xdeadbeefcafef00d)
	return b
}

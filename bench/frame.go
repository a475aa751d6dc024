package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/fastntp/fastntp/internal/ntp"
)

// The header sizes of the frames the raw generator builds and reads.
const (
	ethernetHeaderSize = 14
	ipv4HeaderSize     = 20 // without options, which requests never carry
	ipv6HeaderSize     = 40
	udpHeaderSize      = 8

	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	protocolUDP   = 17
)

// Benchmark ranges, the only source networks the raw generator spoofs: RFC
// 2544's 198.18.0.0/15 and RFC 5180's 2001:2::/48. No host of the Internet
// holds an address in them, so a stray reply goes nowhere.
var (
	BenchmarkRange4 = netip.MustParsePrefix("198.18.0.0/15")
	BenchmarkRange6 = netip.MustParsePrefix("2001:2::/48")
)

// MaxSourceAddresses is the most client addresses a raw run spreads its
// requests over: a /8 of IPv4, or the last 24 bits of an IPv6 prefix.
const MaxSourceAddresses = 1 << 24

// CheckSourceNetwork refuses a client network for spoofed requests that is
// not inside a benchmark range of the target's family, and returns how many
// addresses of it requests come from (at most MaxSourceAddresses).
func CheckSourceNetwork(network netip.Prefix, target netip.Addr) (int, error) {
	if !network.IsValid() {
		return 0, errors.New("invalid source network")
	}
	network = network.Masked()
	benchmarkRange := BenchmarkRange4
	if !target.Unmap().Is4() {
		benchmarkRange = BenchmarkRange6
	}
	if network.Addr().Is4() != benchmarkRange.Addr().Is4() {
		return 0, fmt.Errorf("source network %s is not of the target's family (%s)", network, target)
	}
	if network.Bits() < benchmarkRange.Bits() || !benchmarkRange.Contains(network.Addr()) {
		return 0, fmt.Errorf("refusing source network %s: spoofed requests come only from inside the benchmark range %s", network, benchmarkRange)
	}
	hostBits := network.Addr().BitLen() - network.Bits()
	if hostBits >= 24 {
		return MaxSourceAddresses, nil
	}
	return 1 << hostBits, nil
}

// Raw request identities: the step's low 8 bits, then a sequence number from
// which the client's address and port follow.
const rawSeqBits = 56

func rawRequestID(step uint32, seq uint64) uint64 { return uint64(step&0xff)<<rawSeqBits | seq }

func splitRawID(id uint64) (step uint32, seq uint64) {
	return uint32(id >> rawSeqBits), id & (1<<rawSeqBits - 1)
}

// frameTemplate builds one family's request frames: Ethernet, IPv4 or IPv6,
// UDP and a 48-byte NTP client request. Everything but the source address,
// the source port and the transmit timestamp (which carries the request's
// identity) is fixed, so that filling a frame writes those and two
// checksums from sums taken once.
type frameTemplate struct {
	frame   []byte
	ipv6    bool
	network [16]byte // the source network's first address, as 16 bytes
	// Offsets into frame.
	sourceAddress, sourcePort, udpChecksum, transmitTime int
	// Ones' complement sums of the fixed parts, and of the source
	// addresses' fixed first 12 bytes (IPv6).
	ipSum, udpSum, prefixSum uint32
}

// newFrameTemplate returns the template of requests from network to target,
// between the Ethernet addresses source and destination.
func newFrameTemplate(source, destination net.HardwareAddr, network netip.Prefix, target netip.AddrPort) (*frameTemplate, error) {
	if len(source) != 6 || len(destination) != 6 {
		return nil, fmt.Errorf("Ethernet addresses %v and %v are not 6 bytes", source, destination)
	}
	t := &frameTemplate{ipv6: !target.Addr().Unmap().Is4(), network: network.Masked().Addr().As16()}
	ipSize, etherType := ipv4HeaderSize, etherTypeIPv4
	if t.ipv6 {
		ipSize, etherType = ipv6HeaderSize, etherTypeIPv6
	}
	ip := ethernetHeaderSize
	udp := ip + ipSize
	t.frame = make([]byte, udp+udpHeaderSize+ntp.HeaderSize)
	f := t.frame
	copy(f[0:6], destination)
	copy(f[6:12], source)
	binary.BigEndian.PutUint16(f[12:], uint16(etherType))
	udpLength := udpHeaderSize + ntp.HeaderSize
	if t.ipv6 {
		f[ip] = 6 << 4
		binary.BigEndian.PutUint16(f[ip+4:], uint16(udpLength))
		f[ip+6] = protocolUDP
		f[ip+7] = 64 // hop limit
		t.sourceAddress = ip + 8
		copy(f[t.sourceAddress:], t.network[:12])
		t.prefixSum = onesSum(0, t.network[:12])
		dst := target.Addr().As16()
		copy(f[ip+24:], dst[:])
	} else {
		f[ip] = 4<<4 | ipv4HeaderSize/4
		binary.BigEndian.PutUint16(f[ip+2:], uint16(ipSize+udpLength))
		f[ip+6] = 0x40 // don't fragment
		f[ip+8] = 64   // time to live
		f[ip+9] = protocolUDP
		t.sourceAddress = ip + 12
		dst := target.Addr().Unmap().As4()
		copy(f[ip+16:], dst[:])
		t.ipSum = onesSum(0, f[ip:udp])
	}
	t.sourcePort = udp
	binary.BigEndian.PutUint16(f[udp+2:], target.Port())
	binary.BigEndian.PutUint16(f[udp+4:], uint16(udpLength))
	t.udpChecksum = udp + 6
	f[udp+udpHeaderSize] = ntp.LeapVersionMode(ntp.LeapNone, 4, ntp.ModeClient)
	t.transmitTime = udp + udpHeaderSize + 40
	// The pseudo-header: the destination address, the protocol and the
	// UDP length; the UDP header and payload then add themselves.
	addressSize := 4
	if t.ipv6 {
		addressSize = 16
	}
	t.udpSum = onesSum(0, f[t.sourceAddress+addressSize:t.sourceAddress+2*addressSize])
	t.udpSum += protocolUDP + uint32(udpLength)
	t.udpSum = onesSum(t.udpSum, f[udp:])
	return t, nil
}

// size is the length of every frame the template builds.
func (t *frameTemplate) size() int { return len(t.frame) }

// sourceFor returns the address of client index of the source network.
func (t *frameTemplate) sourceFor(index uint32) netip.Addr {
	a := t.network
	binary.BigEndian.PutUint32(a[12:], binary.BigEndian.Uint32(a[12:])|index)
	if t.ipv6 {
		return netip.AddrFrom16(a)
	}
	return netip.AddrFrom4([4]byte(a[12:]))
}

// fill writes into dst, which holds a copy of the template, the request
// with the given identity from client index of the source network and the
// given port, with its checksums.
func (t *frameTemplate) fill(dst []byte, index uint32, port uint16, id uint64) {
	low := binary.BigEndian.Uint32(t.network[12:]) | index
	addressSum := t.prefixSum + low>>16 + low&0xffff
	if t.ipv6 {
		binary.BigEndian.PutUint32(dst[t.sourceAddress+12:], low)
	} else {
		binary.BigEndian.PutUint32(dst[t.sourceAddress:], low)
		binary.BigEndian.PutUint16(dst[ethernetHeaderSize+10:], ^fold(t.ipSum+addressSum))
	}
	binary.BigEndian.PutUint16(dst[t.sourcePort:], port)
	binary.BigEndian.PutUint64(dst[t.transmitTime:], id)
	sum := t.udpSum + addressSum + uint32(port) +
		uint32(id>>48) + uint32(id>>32&0xffff) + uint32(id>>16&0xffff) + uint32(id&0xffff)
	checksum := ^fold(sum)
	if checksum == 0 {
		checksum = 0xffff // zero would mean "no checksum"
	}
	binary.BigEndian.PutUint16(dst[t.udpChecksum:], checksum)
}

// onesSum adds b, as big-endian 16-bit words, to sum.
func onesSum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// fold reduces a ones' complement sum to 16 bits.
func fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// replyFrame is what parseReplyFrame reads of a captured frame.
type replyFrame struct {
	source, destination netip.AddrPort
	payload             []byte
}

// parseReplyFrame reads a UDP datagram from an Ethernet frame, with at most
// one 802.1Q tag, over IPv4 (options skipped, no fragments) or IPv6 (no
// extension headers). It does not check the UDP checksum: a reply from a
// socket on this host may carry a partial one, which a device with checksum
// offload would have completed.
func parseReplyFrame(frame []byte) (replyFrame, error) {
	var r replyFrame
	if len(frame) < ethernetHeaderSize {
		return r, errors.New("short Ethernet header")
	}
	etherType := binary.BigEndian.Uint16(frame[12:])
	ip := frame[ethernetHeaderSize:]
	if etherType == etherTypeVLAN {
		if len(ip) < 4 {
			return r, errors.New("short VLAN tag")
		}
		etherType = binary.BigEndian.Uint16(ip[2:])
		ip = ip[4:]
	}
	var udp []byte
	switch etherType {
	case etherTypeIPv4:
		if len(ip) < ipv4HeaderSize || ip[0]>>4 != 4 {
			return r, errors.New("not an IPv4 header")
		}
		headerSize := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		switch {
		case headerSize < ipv4HeaderSize || total < headerSize || total > len(ip):
			return r, errors.New("bad IPv4 lengths")
		case ip[9] != protocolUDP:
			return r, errors.New("not UDP")
		case binary.BigEndian.Uint16(ip[6:])&0x3fff != 0:
			return r, errors.New("an IPv4 fragment")
		}
		r.source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), 0)
		r.destination = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), 0)
		udp = ip[headerSize:total]
	case etherTypeIPv6:
		if len(ip) < ipv6HeaderSize || ip[0]>>4 != 6 {
			return r, errors.New("not an IPv6 header")
		}
		if ip[6] != protocolUDP {
			return r, errors.New("not UDP, or behind extension headers")
		}
		payload := int(binary.BigEndian.Uint16(ip[4:]))
		if ipv6HeaderSize+payload > len(ip) {
			return r, errors.New("bad IPv6 payload length")
		}
		r.source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(ip[8:24])), 0)
		r.destination = netip.AddrPortFrom(netip.AddrFrom16([16]byte(ip[24:40])), 0)
		udp = ip[ipv6HeaderSize : ipv6HeaderSize+payload]
	default:
		return r, fmt.Errorf("EtherType %#04x", etherType)
	}
	if len(udp) < udpHeaderSize {
		return r, errors.New("short UDP header")
	}
	length := int(binary.BigEndian.Uint16(udp[4:]))
	if length < udpHeaderSize || length > len(udp) {
		return r, errors.New("bad UDP length")
	}
	r.source = netip.AddrPortFrom(r.source.Addr(), binary.BigEndian.Uint16(udp[0:]))
	r.destination = netip.AddrPortFrom(r.destination.Addr(), binary.BigEndian.Uint16(udp[2:]))
	r.payload = udp[udpHeaderSize:length]
	return r, nil
}

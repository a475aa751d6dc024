package batch

import (
	"encoding/binary"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// controlSize is the control buffer each received datagram needs: a
// timestamp, the larger of the two packet-info forms, and the drop counter.
// A buffer too small for what the socket enables would truncate silently
// but for MSG_CTRUNC, which readers count.
var controlSize = unix.CmsgSpace(16) + // struct __kernel_timespec
	unix.CmsgSpace(unix.SizeofInet6Pktinfo) +
	unix.CmsgSpace(4) // SO_RXQ_OVFL counter

// sourceControlSize is the control buffer that selects a reply's source.
var sourceControlSize = unix.CmsgSpace(unix.SizeofInet6Pktinfo)

// parseControl stores what the control data of one datagram tells into m and
// returns the kernel's drop counter, if the data carried it.
func parseControl(oob []byte, m *Message) (drops uint32, hasDrops bool) {
	for len(oob) >= unix.SizeofCmsghdr {
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return drops, hasDrops
		}
		oob = rest
		// An if chain rather than a switch: Go's coverage profile, and so
		// the mutation tests, see a case clause's condition nowhere.
		if hdr.Level == unix.SOL_SOCKET && hdr.Type == unix.SO_TIMESTAMPNS_NEW && len(data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(data))
			nsec := int64(binary.NativeEndian.Uint64(data[8:]))
			m.Received = time.Unix(sec, nsec)
		} else if hdr.Level == unix.SOL_SOCKET && hdr.Type == unix.SO_TIMESTAMPNS_OLD && len(data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			ts := (*unix.Timespec)(unsafe.Pointer(&data[0]))
			m.Received = time.Unix(int64(ts.Sec), int64(ts.Nsec))
		} else if hdr.Level == unix.SOL_SOCKET && hdr.Type == unix.SO_RXQ_OVFL && len(data) >= 4 {
			drops, hasDrops = binary.NativeEndian.Uint32(data), true
		} else if hdr.Level == unix.IPPROTO_IP && hdr.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo {
			m.Interface = uint32(binary.NativeEndian.Uint32(data))
			// ipi_addr, the header's destination address, not ipi_spec_dst,
			// the address the kernel would choose for a reply.
			m.Local = netip.AddrFrom4([4]byte(data[8:12]))
		} else if hdr.Level == unix.IPPROTO_IPV6 && hdr.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo {
			m.Local = netip.AddrFrom16([16]byte(data[:16]))
			m.Interface = binary.NativeEndian.Uint32(data[16:])
		}
	}
	return drops, hasDrops
}

// putSource writes into oob the control message that makes a datagram
// leave from local, and returns its length. The interface is only pinned for
// IPv6 link-local sources, which mean nothing without it; elsewhere the
// routing table chooses, as it does for chronyd's replies.
func putSource(oob []byte, local netip.Addr, iface uint32) int {
	hdr := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	data := oob[unix.CmsgLen(0):]
	if local.Is4() {
		hdr.Level, hdr.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		hdr.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		clear(data[:unix.SizeofInet4Pktinfo])
		a := local.As4()
		copy(data[4:8], a[:]) // ipi_spec_dst
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	hdr.Level, hdr.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	hdr.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	a := local.As16()
	copy(data[:16], a[:])
	if !local.IsLinkLocalUnicast() {
		iface = 0
	}
	binary.NativeEndian.PutUint32(data[16:], iface)
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}

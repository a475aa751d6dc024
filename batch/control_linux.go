package batch

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"syscall"
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
		switch {
		case hdr.Level == unix.SOL_SOCKET && hdr.Type == unix.SO_TIMESTAMPNS_NEW && len(data) >= 16:
			sec := int64(binary.NativeEndian.Uint64(data))
			nsec := int64(binary.NativeEndian.Uint64(data[8:]))
			m.Received = time.Unix(sec, nsec)
		case hdr.Level == unix.SOL_SOCKET && hdr.Type == unix.SO_TIMESTAMPNS_OLD && len(data) >= int(unsafe.Sizeof(unix.Timespec{})):
			ts := (*unix.Timespec)(unsafe.Pointer(&data[0]))
			m.Received = time.Unix(int64(ts.Sec), int64(ts.Nsec))
		case hdr.Level == unix.SOL_SOCKET && hdr.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			drops, hasDrops = binary.NativeEndian.Uint32(data), true
		case hdr.Level == unix.IPPROTO_IP && hdr.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			m.Interface = uint32(binary.NativeEndian.Uint32(data))
			// ipi_addr, the header's destination address, not ipi_spec_dst,
			// the address the kernel would choose for a reply.
			m.Local = netip.AddrFrom4([4]byte(data[8:12]))
		case hdr.Level == unix.IPPROTO_IPV6 && hdr.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
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

// configure sets the options every socket needs before bind, and those it
// would like, and reports what it got. Only SO_REUSEPORT and IPV6_V6ONLY
// are required: without them the workers cannot share the address, or an
// IPv6 socket would take IPv4 traffic meant for the IPv4 workers.
func configure(fd int, cfg Config, info *Info) error {
	if !cfg.Exclusive {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEPORT", err)
		}
	}
	v6 := cfg.Address.Addr().Is6()
	if v6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
		}
	}
	info.Timestamps = enableTimestamps(fd)
	if cfg.Address.Addr().IsUnspecified() {
		if v6 {
			info.PacketInfo = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1) == nil
		} else {
			info.PacketInfo = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1) == nil
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1) // a counter only
	info.Cookie, _ = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	info.ReceiveBuffer = setBuffer(fd, unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, cfg.ReceiveBuffer)
	info.SendBuffer = setBuffer(fd, unix.SO_SNDBUF, unix.SO_SNDBUFFORCE, cfg.SendBuffer)
	return nil
}

// enableTimestamps asks the kernel to stamp every datagram fd receives, and
// reports whether it will.
func enableTimestamps(fd int) bool {
	// Prefer the 64-bit layout; kernels before 5.1 only know the old one.
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, 1) == nil ||
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_OLD, 1) == nil
}

// setBuffer asks for size usable bytes, forcing past net.core.[rw]mem_max
// when the process may (CAP_NET_ADMIN), and returns the usable size the
// kernel granted.
func setBuffer(fd, opt, force, size int) int {
	if size > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, size)
		if usableBuffer(fd, opt) < size {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size)
		}
	}
	return usableBuffer(fd, opt)
}

// usableBuffer returns the part of a socket buffer that holds data. Linux
// doubles the size it is asked for, to leave room for its bookkeeping, and
// reports the doubled size (socket(7)).
func usableBuffer(fd, opt int) int {
	got, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt)
	return got / 2
}

// fatal reports whether a send error means the socket is unusable, rather
// than that one datagram was refused.
func fatal(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return true // net.ErrClosed and anything unexpected
	}
	switch errno {
	case unix.EBADF, unix.ENOTSOCK, unix.EFAULT, unix.EPIPE, unix.ENOTCONN:
		return true
	}
	return false
}

const (
	msgTrunc  = unix.MSG_TRUNC
	msgCtrunc = unix.MSG_CTRUNC
)

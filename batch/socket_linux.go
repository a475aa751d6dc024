package batch

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

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

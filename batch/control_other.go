//go:build unix && !linux

package batch

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Elsewhere than Linux only the portable path exists, without kernel
// timestamps or packet info: the responder counts the missing timestamps
// and reads the clock after each receive call instead.
const (
	fastPathAvailable = false
	controlSize       = 0
	sourceControlSize = 0
	msgTrunc          = unix.MSG_TRUNC
	msgCtrunc         = unix.MSG_CTRUNC
)

func listenFast(Config) (Conn, error) { return nil, ErrFastPathUnavailable }

func parseControl([]byte, *Message) (uint32, bool) { return 0, false }

func enableTimestamps(int) bool { return false }

func putSource([]byte, netip.Addr, uint32) int { return 0 }

func configure(fd int, cfg Config, info *Info) error {
	if !cfg.Exclusive {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEPORT", err)
		}
	}
	if cfg.Address.Addr().Is6() {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
		}
	}
	if cfg.ReceiveBuffer > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.ReceiveBuffer)
	}
	if cfg.SendBuffer > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, cfg.SendBuffer)
	}
	info.ReceiveBuffer, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	info.SendBuffer, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	return nil
}

func fatal(err error) bool {
	var errno syscall.Errno
	if errors.Is(err, net.ErrClosed) || !errors.As(err, &errno) {
		return true
	}
	return errno == unix.EBADF || errno == unix.ENOTSOCK || errno == unix.EFAULT || errno == unix.EPIPE
}

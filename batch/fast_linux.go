package batch

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const fastPathAvailable = true

var _ Conn = (*fastConn)(nil)

// fastConn drives a blocking socket with recvmmsg and sendmmsg. Blocking
// calls keep the reader out of Go's network poller, whose park and wake per
// batch costs more than the batch saves at high packet rates.
type fastConn struct {
	fd     int
	local  netip.AddrPort
	info   Info
	recv   mmsgScratch
	send   mmsgScratch
	drops  dropCounter
	closed atomic.Bool
	// refs counts the open reference plus calls in progress; the last one
	// out closes fd, so Close never closes a descriptor a call still uses.
	refs atomic.Int32
}

// sockaddr is a raw sockaddr_in or sockaddr_in6.
type sockaddr [unix.SizeofSockaddrInet6]byte

// mmsgScratch is the memory one direction of a fastConn hands the kernel,
// allocated once so that no call allocates.
type mmsgScratch struct {
	hdrs    []unix.Mmsghdr
	iovs    []unix.Iovec
	names   []sockaddr
	control []byte
	ctlSize int
}

func newScratch(n, ctlSize int) mmsgScratch {
	s := mmsgScratch{
		hdrs:    make([]unix.Mmsghdr, n),
		iovs:    make([]unix.Iovec, n),
		names:   make([]sockaddr, n),
		control: make([]byte, n*ctlSize),
		ctlSize: ctlSize,
	}
	for i := range s.hdrs {
		h := &s.hdrs[i].Hdr
		h.Iov = &s.iovs[i]
		h.SetIovlen(1)
		h.Name = &s.names[i][0]
	}
	return s
}

func (s *mmsgScratch) controlAt(i int) []byte {
	return s.control[i*s.ctlSize : (i+1)*s.ctlSize]
}

func listenFast(cfg Config) (Conn, error) {
	family := unix.AF_INET
	if cfg.Address.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Address, os.NewSyscallError("socket", err))
	}
	c := &fastConn{fd: fd, info: Info{Path: PathFast}}
	c.refs.Store(1)
	if err := configure(fd, cfg, &c.info); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %w", cfg.Address, err)
	}
	if err := unix.Bind(fd, toSockaddr(cfg.Address)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: %w", cfg.Address, os.NewSyscallError("bind", err))
	}
	if cfg.SteerGroup > 1 {
		if err := steer(fd, cfg); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("listen %s: %w", cfg.Address, err)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %w", cfg.Address, os.NewSyscallError("getsockname", err))
	}
	c.local = fromSockaddr(sa)
	c.recv = newScratch(cfg.BatchSize, controlSize)
	c.send = newScratch(cfg.BatchSize, sourceControlSize)
	return c, nil
}

func (c *fastConn) LocalAddr() netip.AddrPort { return c.local }
func (c *fastConn) Info() Info                { return c.info }
func (c *fastConn) Dropped() uint64           { return c.drops.load() }

func (c *fastConn) acquire() bool {
	for {
		r := c.refs.Load()
		if r <= 0 || c.closed.Load() {
			return false
		}
		if c.refs.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

func (c *fastConn) release() {
	if c.refs.Add(-1) == 0 {
		unix.Close(c.fd)
	}
}

// Close marks the socket closed and shuts it down, which wakes a reader
// blocked in recvmmsg. The woken call may report an empty datagram, so
// readers decide by the closed flag, never by what the call returned.
func (c *fastConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	// On an unconnected UDP socket shutdown fails with ENOTCONN, yet still
	// marks the socket shut and wakes its waiters.
	_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	c.release()
	return nil
}

func (c *fastConn) ReadBatch(msgs []Message) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.release()
	s := &c.recv
	n := min(len(msgs), len(s.hdrs))
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		h := &s.hdrs[i]
		s.iovs[i].Base = &msgs[i].Buffer[0]
		s.iovs[i].SetLen(len(msgs[i].Buffer))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
		h.Hdr.Control = &s.control[i*s.ctlSize]
		h.Hdr.SetControllen(s.ctlSize)
		h.Hdr.Flags = 0
		h.Len = 0
	}
	var got int
	for {
		r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(c.fd),
			uintptr(unsafe.Pointer(&s.hdrs[0])), uintptr(n), unix.MSG_WAITFORONE, 0, 0)
		if c.closed.Load() {
			return 0, net.ErrClosed
		}
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, os.NewSyscallError("recvmmsg", errno)
		}
		got = int(r)
		break
	}
	runtime.KeepAlive(msgs)
	for i := range got {
		h := &s.hdrs[i]
		drops, ok := msgs[i].received(int(h.Len), decodeSockaddr(&s.names[i]), int(h.Hdr.Flags),
			s.control[i*s.ctlSize:][:h.Hdr.Controllen])
		if ok && i == got-1 {
			// The counter is cumulative; the newest datagram has the
			// latest value.
			c.drops.update(drops)
		}
	}
	return got, nil
}

func (c *fastConn) WriteBatch(msgs []Message) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.release()
	s := &c.send
	total := 0
	for len(msgs) > 0 {
		n := min(len(msgs), len(s.hdrs))
		for i := range n {
			m := &msgs[i]
			h := &s.hdrs[i]
			s.iovs[i].Base = &m.Buffer[0]
			s.iovs[i].SetLen(m.N)
			h.Hdr.Namelen = encodeSockaddr(&s.names[i], m.Peer)
			h.Hdr.Control, h.Hdr.Controllen = nil, 0
			if c.info.PacketInfo && m.Local.IsValid() {
				ctl := s.controlAt(i)
				h.Hdr.Control = &ctl[0]
				h.Hdr.SetControllen(putSource(ctl, m.Local, m.Interface))
			}
		}
		sent, err := sendAll(n, func(start, count int) (int, error) {
			r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(c.fd),
				uintptr(unsafe.Pointer(&s.hdrs[start])), uintptr(count), 0, 0, 0)
			if errno != 0 {
				if c.closed.Load() {
					return 0, net.ErrClosed
				}
				return 0, os.NewSyscallError("sendmmsg", errno)
			}
			return int(r), nil
		})
		runtime.KeepAlive(msgs)
		total += sent
		if err != nil {
			return total, err
		}
		msgs = msgs[n:]
	}
	return total, nil
}

// decodeSockaddr reads a raw sockaddr without allocating, unlike
// unix.Anyto*, which returns an interface.
func decodeSockaddr(sa *sockaddr) netip.AddrPort {
	port := binary.BigEndian.Uint16(sa[2:4])
	switch binary.NativeEndian.Uint16(sa[0:2]) {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port)
	case unix.AF_INET6:
		// Zones (link-local scopes) are left out: a zone is a string, and
		// replies to link-local peers are pinned to the receiving interface
		// by putSource instead.
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])), port)
	}
	return netip.AddrPort{}
}

// encodeSockaddr writes ap into sa and returns the sockaddr's length.
func encodeSockaddr(sa *sockaddr, ap netip.AddrPort) uint32 {
	addr := ap.Addr()
	binary.BigEndian.PutUint16(sa[2:4], ap.Port())
	if addr.Is4() {
		binary.NativeEndian.PutUint16(sa[0:2], unix.AF_INET)
		a := addr.As4()
		copy(sa[4:8], a[:])
		clear(sa[8:16])
		return unix.SizeofSockaddrInet4
	}
	binary.NativeEndian.PutUint16(sa[0:2], unix.AF_INET6)
	clear(sa[4:8]) // flow info
	a := addr.As16()
	copy(sa[8:24], a[:])
	clear(sa[24:28]) // scope ID; putSource pins link-local replies
	return unix.SizeofSockaddrInet6
}

func toSockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func fromSockaddr(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

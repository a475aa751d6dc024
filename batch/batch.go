// Package batch moves UDP datagrams many at a time.
//
// A Conn reads and writes slices of Messages with one system call per slice
// where the platform allows it. Two implementations stand behind Conn: on
// Linux the default drives a blocking socket with recvmmsg and sendmmsg
// directly (PathFast), with every header, address and control buffer
// allocated once; everywhere, PathPortable uses golang.org/x/net's
// ReadBatch and WriteBatch on a socket owned by Go's network poller.
//
// Both report a kernel receive timestamp for each datagram and the local
// address it was sent to, and send each reply from the address its request
// arrived at, as NTP servers on hosts with several addresses must.
package batch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
)

// Message is one datagram, received or to be sent.
type Message struct {
	// Buffer holds the payload. ReadBatch fills Buffer[:N]; it must not be
	// empty. Conn never reslices or retains it.
	Buffer []byte
	// N is the length of the payload in Buffer.
	N int
	// Peer is the remote address: where a received datagram came from, and
	// where one to be sent goes.
	Peer netip.AddrPort
	// Local is the address a received datagram was sent to, when the socket
	// reports it. WriteBatch sends from Local when it is valid.
	Local netip.Addr
	// Interface is the index of the interface a datagram arrived on, or 0.
	Interface uint32
	// Received is the kernel's receive time, or the zero Time if the kernel
	// attached none.
	Received time.Time
	// Flags reports anomalies of a received datagram.
	Flags Flags
}

// Flags are conditions the kernel reports for a received datagram.
type Flags uint8

const (
	// Truncated means the datagram was longer than Buffer (MSG_TRUNC).
	Truncated Flags = 1 << iota
	// ControlTruncated means control data, perhaps the timestamp, was lost
	// for lack of space (MSG_CTRUNC).
	ControlTruncated
)

// Conn is a UDP socket that moves datagrams in batches.
//
// ReadBatch and WriteBatch may run concurrently with each other, but each
// must be called from one goroutine at a time.
type Conn interface {
	// ReadBatch blocks until at least one datagram arrives, then fills up to
	// len(msgs) messages with what is queued and returns how many. After
	// Close it returns net.ErrClosed.
	ReadBatch(msgs []Message) (int, error)
	// WriteBatch sends Buffer[:N] of each message to its Peer and returns
	// how many were sent. A message the kernel refuses (no route, a
	// firewall, an invalid address) is skipped and the rest still go out,
	// so a count below len(msgs) with a nil error means that many failed.
	// The error is non-nil only when the socket itself is unusable.
	WriteBatch(msgs []Message) (int, error)
	// LocalAddr returns the address the socket is bound to.
	LocalAddr() netip.AddrPort
	// Info describes what the socket was granted when it was opened.
	Info() Info
	// Dropped returns how many datagrams the kernel has discarded because
	// the socket's receive buffer was full, as last reported by the kernel.
	Dropped() uint64
	// Close wakes a blocked ReadBatch and releases the socket. It is safe
	// to call more than once.
	Close() error
}

// Path selects a Conn implementation.
type Path uint8

const (
	// PathAuto is PathFast where it is available and PathPortable elsewhere.
	PathAuto Path = iota
	// PathFast is blocking recvmmsg and sendmmsg through x/sys/unix (Linux).
	PathFast
	// PathPortable is x/net's ReadBatch and WriteBatch.
	PathPortable
)

func (p Path) String() string {
	switch p {
	case PathAuto:
		return "auto"
	case PathFast:
		return "fast"
	case PathPortable:
		return "portable"
	}
	return fmt.Sprintf("Path(%d)", uint8(p))
}

// ParsePath parses the names that String returns.
func ParsePath(s string) (Path, error) {
	for _, p := range []Path{PathAuto, PathFast, PathPortable} {
		if s == p.String() {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown I/O path %q (want auto, fast or portable)", s)
}

// ErrAddressInUse is returned by CheckFree for an address that a socket
// other than the caller's is bound to.
var ErrAddressInUse = errors.New("address already in use by another socket")

// CheckFree checks that no socket holds addr, by binding it for a moment
// without SO_REUSEPORT, and returns it with the port the kernel picked if
// addr's port was zero. Listen's sockets share an address through
// SO_REUSEPORT with any socket of the same user that asks for it, another
// fastntp or chronyd among them, and the kernel would then split the
// clients between them in silence; checking first makes that an error.
func CheckFree(addr netip.AddrPort) (netip.AddrPort, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6" // IPV6_V6ONLY: IPv4 sockets on the port are no conflict
	}
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
	if errors.Is(err, syscall.EADDRINUSE) {
		return addr, fmt.Errorf("%s: %w (another fastntp, or an NTP server such as chronyd or ntpd still serving the port?)", addr, ErrAddressInUse)
	}
	if err != nil {
		return addr, fmt.Errorf("bind %s: %w", addr, err)
	}
	port := conn.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	conn.Close()
	return netip.AddrPortFrom(addr.Addr(), port), nil
}

// ErrFastPathUnavailable is returned by Listen for PathFast on platforms
// without recvmmsg and sendmmsg.
var ErrFastPathUnavailable = errors.New("batch: the recvmmsg/sendmmsg path is only available on Linux")

// DefaultBatchSize is how many datagrams one call moves by default. It is
// enough to drain a busy queue in a few calls while keeping a worker's
// buffers inside the CPU cache.
const DefaultBatchSize = 64

// maxSteerGroup bounds SteerGroup: far more sockets than any host has
// cores to serve them.
const maxSteerGroup = 4096

// Config configures Listen.
type Config struct {
	// Address is the local address to bind. Every socket is opened with
	// SO_REUSEPORT, unless Exclusive, so several Conns can share one
	// address and the kernel spreads datagrams over them by flow.
	Address netip.AddrPort
	// Exclusive opens the socket without SO_REUSEPORT, so that no other
	// socket shares its address. A client socket bound to port 0 needs it:
	// Linux may give two SO_REUSEPORT sockets the same ephemeral port, and
	// then hands one's datagrams to the other.
	Exclusive bool
	// Path selects the implementation. The zero value is PathAuto.
	Path Path
	// BatchSize is the most datagrams one call moves. If zero,
	// DefaultBatchSize.
	BatchSize int
	// ReceiveBuffer and SendBuffer request socket buffer sizes in bytes. If
	// zero, the kernel's defaults stay.
	ReceiveBuffer, SendBuffer int
	// SteerGroup, if above 1, is how many sockets share Address. The group
	// then hands every datagram to the socket SteerIndex picks from its
	// source address alone, so that all of one client's datagrams, from
	// whatever port, reach the same socket. Only Linux can steer.
	SteerGroup int
}

// Info describes an open Conn.
type Info struct {
	Path Path
	// Timestamps reports whether the kernel stamps received datagrams.
	Timestamps bool
	// PacketInfo reports whether received datagrams carry their local
	// address; it is only asked for on a wildcard bind.
	PacketInfo bool
	// Cookie is the kernel's lasting identifier of the socket (Linux's
	// SO_COOKIE), by which an eBPF program can recognize what it sent; 0
	// where there is none.
	Cookie uint64
	// ReceiveBuffer and SendBuffer are the usable sizes the kernel granted:
	// on Linux, half of what getsockopt reports, the other half being set
	// aside for the kernel's bookkeeping. They compare with what Config
	// asked for.
	ReceiveBuffer, SendBuffer int
}

// Listen opens a socket as cfg says.
func Listen(cfg Config) (Conn, error) {
	if !cfg.Address.IsValid() {
		return nil, fmt.Errorf("batch: invalid address %v", cfg.Address)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.BatchSize < 0 || cfg.BatchSize > 1024 {
		return nil, fmt.Errorf("batch: batch size %d out of range 1..1024", cfg.BatchSize)
	}
	if cfg.ReceiveBuffer < 0 || cfg.SendBuffer < 0 {
		return nil, errors.New("batch: negative socket buffer size")
	}
	if cfg.SteerGroup < 0 || cfg.SteerGroup > maxSteerGroup {
		return nil, fmt.Errorf("batch: steering group of %d out of range 0..%d", cfg.SteerGroup, maxSteerGroup)
	}
	// Unmapping keeps an IPv4 address in an IPv6 form on an IPv4 socket.
	cfg.Address = netip.AddrPortFrom(cfg.Address.Addr().Unmap(), cfg.Address.Port())
	switch cfg.Path {
	case PathAuto:
		if fastPathAvailable {
			return listenFast(cfg)
		}
		return listenPortable(cfg)
	case PathFast:
		return listenFast(cfg)
	case PathPortable:
		return listenPortable(cfg)
	}
	return nil, fmt.Errorf("batch: unknown path %v", cfg.Path)
}

// received records one datagram as the kernel reported it: its length, its
// source, its msg_flags and its control data. It returns the kernel's drop
// counter if the control data carried it.
func (m *Message) received(n int, peer netip.AddrPort, msgFlags int, control []byte) (drops uint32, hasDrops bool) {
	m.N, m.Peer = n, peer
	m.Local, m.Interface, m.Received, m.Flags = netip.Addr{}, 0, time.Time{}, 0
	if msgFlags&msgTrunc != 0 {
		m.Flags |= Truncated
	}
	if msgFlags&msgCtrunc != 0 {
		m.Flags |= ControlTruncated
	}
	return parseControl(control, m)
}

// dropCounter widens the kernel's count of datagrams dropped for a full
// receive buffer (SO_RXQ_OVFL), a 32-bit number that wraps, into a 64-bit
// total. Only the reading goroutine updates it.
type dropCounter struct {
	last  uint32
	total atomic.Uint64
}

// update takes the kernel's latest count. A new socket's count starts at 0.
func (d *dropCounter) update(kernel uint32) {
	d.total.Add(uint64(kernel - d.last)) // modulo 2^32, across a wrap too
	d.last = kernel
}

func (d *dropCounter) load() uint64 { return d.total.Load() }

// NewMessages returns n messages, each with its own buffer of size bytes.
func NewMessages(n, size int) []Message {
	slab := make([]byte, n*size)
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i].Buffer = slab[i*size : (i+1)*size : (i+1)*size]
	}
	return msgs
}

// sendAll sends n messages with send, which sends a run of them starting at
// start and returns how many went out. When the kernel refuses the first
// message of a run, that message alone is skipped; a short count with no
// error is resumed where it stopped. Only fatal errors end the loop early.
func sendAll(n int, send func(start, count int) (int, error)) (int, error) {
	sent := 0
	for start := 0; start < n; {
		k, err := send(start, n-start)
		switch {
		case errors.Is(err, syscall.EINTR):
			// A signal interrupted the call before it sent anything:
			// try the same run again rather than lose a reply.
		case err != nil && fatal(err):
			return sent, err
		case err != nil || k <= 0:
			// sendmmsg reports an error only when the first message of
			// the run failed; the others have not been tried yet.
			start++
		default:
			sent += k
			start += k
		}
	}
	return sent, nil
}

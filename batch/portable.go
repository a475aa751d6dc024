package batch

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// If compilation fails here, x/net's two message types are no longer the same
// type, and one batchConn can no longer serve both families.
var _ ipv6.Message = ipv4.Message{}

// batchConn is what *ipv4.PacketConn and *ipv6.PacketConn have in common.
type batchConn interface {
	ReadBatch(ms []ipv6.Message, flags int) (int, error)
	WriteBatch(ms []ipv6.Message, flags int) (int, error)
}

var _ Conn = (*portableConn)(nil)

// portableConn moves batches through x/net. Its reads allocate the source
// address of every datagram (x/net's interface returns a net.Addr); its
// writes allocate nothing.
type portableConn struct {
	udp   *net.UDPConn
	batch batchConn
	local netip.AddrPort
	info  Info
	drops dropCounter

	recv, send []ipv6.Message
	recvCtl    []byte
	sendCtl    []byte
	sendAddrs  []net.UDPAddr
}

func listenPortable(cfg Config) (Conn, error) {
	c := &portableConn{info: Info{Path: PathPortable}}
	var configErr error
	lc := net.ListenConfig{Control: func(_, _ string, raw syscall.RawConn) error {
		if err := raw.Control(func(fd uintptr) { configErr = configure(int(fd), cfg, &c.info) }); err != nil {
			return err
		}
		return configErr
	}}
	network := "udp4"
	if cfg.Address.Addr().Is6() {
		network = "udp6"
	}
	pc, err := lc.ListenPacket(context.Background(), network, cfg.Address.String())
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", cfg.Address, err)
	}
	c.udp = pc.(*net.UDPConn)
	if cfg.SteerGroup > 1 {
		if err := steerConn(c.udp, cfg); err != nil {
			c.udp.Close()
			return nil, fmt.Errorf("listen %s: %w", cfg.Address, err)
		}
	}
	c.local = c.udp.LocalAddr().(*net.UDPAddr).AddrPort()
	if network == "udp4" {
		c.batch = ipv4.NewPacketConn(c.udp)
	} else {
		c.batch = ipv6.NewPacketConn(c.udp)
	}
	n := cfg.BatchSize
	c.recv = make([]ipv6.Message, n)
	c.send = make([]ipv6.Message, n)
	c.recvCtl = make([]byte, n*controlSize)
	c.sendCtl = make([]byte, n*sourceControlSize)
	c.sendAddrs = make([]net.UDPAddr, n)
	for i := range n {
		c.recv[i].Buffers = make([][]byte, 1)
		c.send[i].Buffers = make([][]byte, 1)
		c.sendAddrs[i].IP = make(net.IP, net.IPv6len)
	}
	return c, nil
}

func (c *portableConn) LocalAddr() netip.AddrPort { return c.local }
func (c *portableConn) Info() Info                { return c.info }
func (c *portableConn) Dropped() uint64           { return c.drops.load() }
func (c *portableConn) Close() error              { return c.udp.Close() }

func (c *portableConn) ReadBatch(msgs []Message) (int, error) {
	n := min(len(msgs), len(c.recv))
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		// x/net hands the kernel len, not cap, of each buffer, and keeps
		// the lengths of the previous call: reset both every time.
		c.recv[i] = ipv6.Message{
			Buffers: c.recv[i].Buffers,
			OOB:     c.recvCtl[i*controlSize : (i+1)*controlSize],
		}
		c.recv[i].Buffers[0] = msgs[i].Buffer
	}
	got, err := c.batch.ReadBatch(c.recv[:n], 0)
	if err != nil {
		return 0, err
	}
	for i := range got {
		r := &c.recv[i]
		var peer netip.AddrPort
		if ua, ok := r.Addr.(*net.UDPAddr); ok {
			ap := ua.AddrPort()
			peer = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		if drops, ok := msgs[i].received(r.N, peer, r.Flags, r.OOB[:r.NN]); ok && i == got-1 {
			c.drops.update(drops)
		}
	}
	return got, nil
}

func (c *portableConn) WriteBatch(msgs []Message) (int, error) {
	total := 0
	for len(msgs) > 0 {
		n := min(len(msgs), len(c.send))
		for i := range n {
			m := &msgs[i]
			ua := &c.sendAddrs[i]
			a := m.Peer.Addr().As16()
			ua.IP = ua.IP[:net.IPv6len]
			copy(ua.IP, a[:])
			ua.Port = int(m.Peer.Port())
			ua.Zone = m.Peer.Addr().Zone()
			s := &c.send[i]
			*s = ipv6.Message{Buffers: s.Buffers, Addr: ua}
			s.Buffers[0] = m.Buffer[:m.N]
			if c.info.PacketInfo && m.Local.IsValid() {
				ctl := c.sendCtl[i*sourceControlSize : (i+1)*sourceControlSize]
				s.OOB = ctl[:putSource(ctl, m.Local, m.Interface)]
			}
		}
		sent, err := sendAll(n, func(start, count int) (int, error) {
			return c.batch.WriteBatch(c.send[start:start+count], 0)
		})
		total += sent
		if err != nil {
			return total, err
		}
		msgs = msgs[n:]
	}
	return total, nil
}

// steerConn attaches the steering program to a bound socket of Go's.
func steerConn(conn *net.UDPConn, cfg Config) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var steerErr error
	if err := raw.Control(func(fd uintptr) { steerErr = steer(int(fd), cfg) }); err != nil {
		return err
	}
	return steerErr
}

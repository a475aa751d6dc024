package batch

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// arrival is which socket of a group a datagram reached.
type arrival struct {
	socket int
	peer   netip.AddrPort
}

// readAll reads from every socket of a group until it is closed and reports
// each datagram's arrival.
func readAll(group []Conn, arrivals chan<- arrival) {
	for i, c := range group {
		go func() {
			msgs := NewMessages(8, 64)
			for {
				n, err := c.ReadBatch(msgs)
				if err != nil {
					return
				}
				for _, m := range msgs[:n] {
					arrivals <- arrival{i, m.Peer}
				}
			}
		}()
	}
}

// sendFrom sends a datagram to to from a socket bound to from, an address
// the host need not have (IP_FREEBIND): over loopback, where the datagram
// stays, the server reads it as sent from there. The socket stays open
// until the test ends, so that the kernel cannot give its port to the next
// one from the same source.
func sendFrom(t *testing.T, from netip.Addr, to netip.AddrPort) {
	t.Helper()
	level, option := unix.SOL_IP, unix.IP_FREEBIND
	if from.Is6() {
		level, option = unix.SOL_IPV6, unix.IPV6_FREEBIND
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), level, option, 1) })
		return err
	}}
	c, err := lc.ListenPacket(context.Background(), "udp", netip.AddrPortFrom(from, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(to)); err != nil {
		t.Fatal(err)
	}
}

// A steering group hands each datagram to the socket SteerIndex names for
// its source address, whatever the source port and whichever path each
// socket takes: one client meets one socket. The sources differ in their
// addresses and share the destination, so that a program that hashed the
// destination would send them all to one socket.
func TestSteerBySource(t *testing.T) {
	for _, tc := range []struct {
		bind    string
		sources []string
	}{
		{"127.0.0.1:0", []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5",
			"127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.1.1", "127.1.0.1", "127.200.3.9"}},
		{"[::1]:0", []string{"::1", "2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4", "2001:db8::5",
			"2001:db8::6", "2001:db8:1::1", "2001:db8:ffff::9", "2001:db8:0:1::1", "2001:db8::a:0:0:1"}},
	} {
		t.Run(tc.bind, func(t *testing.T) {
			const size = 4
			var group []Conn
			addr := netip.MustParseAddrPort(tc.bind)
			for i := range size {
				// Mix the paths: the program belongs to the group.
				c, err := Listen(Config{Address: addr, Path: paths[i%2], SteerGroup: size})
				if err != nil {
					if i == 0 && addr.Addr().Is6() {
						skipUnlessCI(t, "no IPv6 loopback: %v", err)
					}
					t.Fatal(err)
				}
				defer c.Close()
				addr = c.LocalAddr()
				group = append(group, c)
			}
			arrivals := make(chan arrival, 1024)
			readAll(group, arrivals)

			const portsPerSource = 8
			sent := 0
			for _, s := range tc.sources {
				for range portsPerSource {
					sendFrom(t, netip.MustParseAddr(s), addr)
					sent++
				}
			}
			used := map[int]bool{}
			ports := map[netip.Addr]map[uint16]bool{}
			timeout := time.After(5 * time.Second)
			for range sent {
				select {
				case a := <-arrivals:
					src := a.peer.Addr()
					if want := SteerIndex(src, size); a.socket != want {
						t.Errorf("datagram from %v reached socket %d, want %d", a.peer, a.socket, want)
					}
					used[a.socket] = true
					if ports[src] == nil {
						ports[src] = map[uint16]bool{}
					}
					ports[src][a.peer.Port()] = true
				case <-timeout:
					t.Fatalf("%d of %d datagrams arrived", len(used), sent)
				}
			}
			for src, p := range ports {
				if len(p) != portsPerSource {
					t.Errorf("%v: %d distinct source ports, want %d", src, len(p), portsPerSource)
				}
			}
			// Eleven sources over four sockets by SteerIndex, as the
			// datagrams' checks above found them.
			if len(used) < 2 {
				t.Errorf("%d sources all reached one socket", len(tc.sources))
			}
		})
	}
}

func TestSteerIndexSpreads(t *testing.T) {
	for _, n := range []int{2, 3, 4, 16} {
		counts := make([]int, n)
		const addresses = 1 << 14
		for i := range addresses {
			counts[SteerIndex(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), n)]++
			// One /64 with consecutive interface identifiers.
			counts[SteerIndex(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}), n)]++
		}
		for i, c := range counts {
			if share := float64(c) / (2 * addresses / float64(n)); share < 0.9 || share > 1.1 {
				t.Errorf("group of %d: socket %d gets %.2f of its fair share", n, i, share)
			}
		}
	}
	if SteerIndex(netip.MustParseAddr("192.0.2.1"), 1) != 0 || SteerIndex(netip.MustParseAddr("192.0.2.1"), 0) != 0 {
		t.Error("a group of one or none has another index than 0")
	}
}

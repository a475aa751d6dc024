package batch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

var paths = []Path{PathFast, PathPortable}

// listen opens a Conn on addr for the test and closes it afterwards.
func listen(t *testing.T, cfg Config) Conn {
	t.Helper()
	c, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// skipUnlessCI ends the test for the reason given, except under CI=true,
// where whatever keeps a test from running is a failure. (The package's
// tests cannot use chronytest's, which imports batch.)
func skipUnlessCI(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("under CI=true this test must run: "+format, args...)
	}
	t.Skipf(format, args...)
}

// dialClient returns a client socket of the given family.
func dialClient(t *testing.T, network string, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		skipUnlessCI(t, "no %s loopback: %v", network, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

func TestEcho(t *testing.T) {
	for _, path := range paths {
		for _, tc := range []struct{ network, bind, dst string }{
			{"udp4", "0.0.0.0:0", "127.0.0.1"},
			// The client's source is 127.0.0.1 and its socket is connected
			// to 127.0.0.2: a reply from any other address than the one the
			// request went to would be dropped by the client's kernel.
			{"udp4", "0.0.0.0:0", "127.0.0.2"},
			{"udp4", "127.0.0.1:0", "127.0.0.1"},
			{"udp6", "[::]:0", "::1"},
		} {
			t.Run(fmt.Sprintf("%v/%s", path, tc.bind), func(t *testing.T) {
				srv := listen(t, Config{Address: netip.MustParseAddrPort(tc.bind), Path: path, BatchSize: 8})
				info := srv.Info()
				if info.Path != path || !info.Timestamps {
					t.Errorf("Info = %+v, want path %v with timestamps", info, path)
				}
				if info.Cookie == 0 {
					t.Error("Info has no socket cookie")
				}
				wildcard := netip.MustParseAddrPort(tc.bind).Addr().IsUnspecified()
				if info.PacketInfo != wildcard {
					t.Errorf("PacketInfo = %v on bind %s", info.PacketInfo, tc.bind)
				}
				dst := netip.AddrPortFrom(netip.MustParseAddr(tc.dst), srv.LocalAddr().Port())
				const count = 5
				clients := make([]*net.UDPConn, count)
				before := time.Now()
				for i := range clients {
					clients[i] = dialClient(t, tc.network, dst)
					if _, err := clients[i].Write([]byte(fmt.Sprintf("ping %d", i))); err != nil {
						t.Fatal(err)
					}
				}
				msgs := NewMessages(8, 64)
				got := 0
				for got < count {
					n, err := srv.ReadBatch(msgs[got:])
					if err != nil {
						t.Fatalf("ReadBatch: %v", err)
					}
					got += n
				}
				after := time.Now()
				for _, m := range msgs[:got] {
					if m.Received.Before(before.Add(-time.Millisecond)) || m.Received.After(after) {
						t.Errorf("receive time %v outside [%v, %v]", m.Received, before, after)
					}
					if wildcard && m.Local != dst.Addr() {
						t.Errorf("Local = %v, want %v", m.Local, dst.Addr())
					}
					if !m.Peer.Addr().IsLoopback() || m.Flags != 0 {
						t.Errorf("Peer = %v, Flags = %v", m.Peer, m.Flags)
					}
					copy(m.Buffer, "pong")
				}
				sent, err := srv.WriteBatch(msgs[:got])
				if err != nil || sent != got {
					t.Fatalf("WriteBatch = %d, %v; want %d", sent, err, got)
				}
				for i, c := range clients {
					buf := make([]byte, 64)
					n, err := c.Read(buf)
					if err != nil {
						t.Fatalf("client %d: %v", i, err)
					}
					if want := fmt.Sprintf("pong %d", i); string(buf[:n]) != want {
						t.Errorf("client %d got %q, want %q", i, buf[:n], want)
					}
				}
			})
		}
	}
}

func TestTruncatedDatagram(t *testing.T) {
	for _, path := range paths {
		t.Run(path.String(), func(t *testing.T) {
			srv := listen(t, Config{Address: netip.MustParseAddrPort("127.0.0.1:0"), Path: path})
			c := dialClient(t, "udp4", srv.LocalAddr())
			c.Write(make([]byte, 100))
			msgs := NewMessages(1, 48)
			if _, err := srv.ReadBatch(msgs); err != nil {
				t.Fatal(err)
			}
			if msgs[0].Flags&Truncated == 0 {
				t.Errorf("Flags = %v, want Truncated", msgs[0].Flags)
			}
		})
	}
}

// A send to an address the kernel refuses must not stop the rest of the batch.
func TestWriteBatchSkipsRefused(t *testing.T) {
	for _, path := range paths {
		t.Run(path.String(), func(t *testing.T) {
			srv := listen(t, Config{Address: netip.MustParseAddrPort("127.0.0.1:0"), Path: path})
			c := dialClient(t, "udp4", srv.LocalAddr())
			good := netip.MustParseAddrPort(c.LocalAddr().String())
			msgs := NewMessages(3, 48)
			for i := range msgs {
				msgs[i].N = copy(msgs[i].Buffer, fmt.Sprint(i))
				msgs[i].Peer = good
			}
			msgs[1].Peer = netip.AddrPortFrom(good.Addr(), 0) // port 0: EINVAL
			sent, err := srv.WriteBatch(msgs)
			if err != nil || sent != 2 {
				t.Fatalf("WriteBatch = %d, %v; want 2, nil", sent, err)
			}
			buf := make([]byte, 8)
			for _, want := range []string{"0", "2"} {
				n, err := c.Read(buf)
				if err != nil || string(buf[:n]) != want {
					t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
				}
			}
		})
	}
}

func TestCloseWakesReader(t *testing.T) {
	for _, path := range paths {
		t.Run(path.String(), func(t *testing.T) {
			srv, err := Listen(Config{Address: netip.MustParseAddrPort("127.0.0.1:0"), Path: path})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := srv.ReadBatch(NewMessages(4, 64))
				done <- err
			}()
			time.Sleep(50 * time.Millisecond) // let the reader block
			srv.Close()
			select {
			case err := <-done:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("ReadBatch after Close = %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("ReadBatch still blocked 5s after Close")
			}
			if _, err := srv.WriteBatch(NewMessages(1, 8)); !errors.Is(err, net.ErrClosed) {
				t.Errorf("WriteBatch after Close = %v, want net.ErrClosed", err)
			}
			if err := srv.Close(); err != nil && path == PathFast {
				t.Errorf("second Close = %v", err)
			}
		})
	}
}

func TestReusePortSharesAddress(t *testing.T) {
	first := listen(t, Config{Address: netip.MustParseAddrPort("127.0.0.1:0")})
	listen(t, Config{Address: first.LocalAddr(), Path: PathPortable})
	listen(t, Config{Address: first.LocalAddr(), Path: PathFast})
}

// Linux may give two SO_REUSEPORT sockets bound to port 0 the same port
// (here, about one in twenty), which Exclusive sockets never share.
func TestExclusivePorts(t *testing.T) {
	seen := map[netip.AddrPort]bool{}
	for range 1000 {
		c := listen(t, Config{Address: netip.MustParseAddrPort("127.0.0.1:0"), Exclusive: true})
		if seen[c.LocalAddr()] {
			t.Fatalf("two exclusive sockets on %v", c.LocalAddr())
		}
		seen[c.LocalAddr()] = true
	}
	held := listen(t, Config{Address: netip.MustParseAddrPort("127.0.0.1:0")})
	if c, err := Listen(Config{Address: held.LocalAddr(), Exclusive: true}); err == nil {
		c.Close()
		t.Errorf("an exclusive socket shares %v", held.LocalAddr())
	}
}

func TestListenRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Address: netip.MustParseAddrPort("127.0.0.1:0"), BatchSize: -1},
		{Address: netip.MustParseAddrPort("127.0.0.1:0"), BatchSize: 5000},
		{Address: netip.MustParseAddrPort("127.0.0.1:0"), ReceiveBuffer: -1},
		{Address: netip.MustParseAddrPort("127.0.0.1:0"), Path: 9},
		{Address: netip.MustParseAddrPort("127.0.0.1:0"), SteerGroup: -1},
		{Address: netip.MustParseAddrPort("127.0.0.1:0"), SteerGroup: 5000},
	} {
		if c, err := Listen(cfg); err == nil {
			c.Close()
			t.Errorf("Listen(%+v) succeeded", cfg)
		}
	}
}

// Info reports the usable buffer, which compares with the request: Linux
// doubles the request for its bookkeeping and reports the double. 1 MiB is
// below net.core.rmem_max's default, so it is granted without privileges.
func TestBufferSizes(t *testing.T) {
	for _, path := range []Path{PathFast, PathPortable} {
		c := listen(t, Config{Address: netip.MustParseAddrPort("127.0.0.1:0"), Path: path, ReceiveBuffer: 1 << 20, SendBuffer: 1 << 20})
		if info := c.Info(); info.ReceiveBuffer != 1<<20 || info.SendBuffer != 1<<20 {
			t.Errorf("%v: buffers %d and %d after asking for 1 MiB each", path, info.ReceiveBuffer, info.SendBuffer)
		}
	}
}

// CheckFree refuses an address that another socket holds, SO_REUSEPORT or
// not, and picks a port for port 0.
func TestCheckFree(t *testing.T) {
	free, err := CheckFree(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil || free.Port() == 0 {
		t.Fatalf("CheckFree(port 0) = %v, %v", free, err)
	}
	held := listen(t, Config{Address: free})
	for _, addr := range []netip.AddrPort{held.LocalAddr(), netip.AddrPortFrom(netip.IPv4Unspecified(), free.Port())} {
		if _, err := CheckFree(addr); !errors.Is(err, ErrAddressInUse) {
			t.Errorf("CheckFree(%v) with a socket on %v: %v, want ErrAddressInUse", addr, held.LocalAddr(), err)
		}
	}
	// IPv4 sockets on the port leave its IPv6 side free.
	if _, err := CheckFree(netip.AddrPortFrom(netip.IPv6Unspecified(), free.Port())); err != nil {
		t.Errorf("CheckFree([::]:%d) with only an IPv4 socket on the port: %v", free.Port(), err)
	}
}

// The kernel's 32-bit drop counter wraps; the total does not.
func TestDropCounterWraps(t *testing.T) {
	var d dropCounter
	for _, k := range []uint32{5, 1<<32 - 16, 16, 16} {
		d.update(k)
	}
	if got, want := d.load(), uint64(1<<32+16); got != want {
		t.Errorf("total %d, want %d", got, want)
	}
}

// The hot path must not allocate once warm: the fast path at all, the
// portable path only the source address that x/net's ReadBatch allocates.
func TestAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are checked by the run without -race")
	}
	for _, tc := range []struct {
		path    Path
		perRead float64
	}{{PathFast, 0}, {PathPortable, 2}} {
		t.Run(tc.path.String(), func(t *testing.T) {
			srv := listen(t, Config{Address: netip.MustParseAddrPort("0.0.0.0:0"), Path: tc.path, BatchSize: 4})
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.LocalAddr().Port())
			c := dialClient(t, "udp4", dst)
			msgs := NewMessages(4, 64)
			buf := make([]byte, 64)
			roundTrip := func() {
				c.Write(buf[:48])
				n, err := srv.ReadBatch(msgs)
				if err != nil || n != 1 {
					t.Fatalf("ReadBatch = %d, %v", n, err)
				}
				if sent, err := srv.WriteBatch(msgs[:n]); sent != 1 || err != nil {
					t.Fatalf("WriteBatch = %d, %v", sent, err)
				}
				c.Read(buf)
			}
			// The client's own Write and Read allocate nothing either.
			if got := testing.AllocsPerRun(200, roundTrip); got > tc.perRead {
				t.Errorf("%v allocations per request and reply, want at most %v", got, tc.perRead)
			}
		})
	}
}

// EnableTimestamps and ReceiveTime, for sockets Listen did not open: a
// datagram's kernel receive time, between its send and its read; and no
// timestamps from a closed socket.
func TestReceiveTime(t *testing.T) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if !EnableTimestamps(raw) {
		t.Fatal("no timestamps on a UDP socket")
	}
	before := time.Now()
	if _, err := conn.WriteToUDP([]byte("x"), conn.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 8), make([]byte, TimestampControlSize)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, oobn, _, _, err := conn.ReadMsgUDP(buf, oob)
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if got := ReceiveTime(oob[:oobn]); got.Before(before.Round(0)) || got.After(after.Round(0)) {
		t.Errorf("received at %v, sent at %v, read at %v", got, before, after)
	}
	if got := ReceiveTime(nil); !got.IsZero() {
		t.Errorf("no control data: %v", got)
	}
	conn.Close()
	if EnableTimestamps(raw) {
		t.Error("timestamps on a closed socket")
	}
}

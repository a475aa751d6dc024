package egress_test

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/responder/egress"
)

// pair is a server namespace and a client namespace joined by a veth pair
// whose server end computes UDP checksums in software, so that the client's
// kernel verifies every checksum the program adjusts and drops a wrong one.
type pair struct {
	server, client string
}

var (
	serverAddr4 = netip.MustParseAddr("192.0.2.1")
	clientAddr4 = netip.MustParseAddr("192.0.2.2")
	serverAddr6 = netip.MustParseAddr("2001:db8::1")
	clientAddr6 = netip.MustParseAddr("2001:db8::2")
)

func newPair(t *testing.T) pair {
	t.Helper()
	p := newNamespaces(t)
	p.join(t)
	return p
}

// newNamespaces returns a server and a client namespace, not yet joined.
func newNamespaces(t *testing.T) pair {
	t.Helper()
	chronytest.Require(t, "ethtool")
	return pair{server: chronytest.Namespace(t), client: chronytest.Namespace(t)}
}

func run(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := chronytest.Command(ns, args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// join adds the veth pair stamp0 (server) and stamp1 (client).
func (p pair) join(t *testing.T) {
	t.Helper()
	run := func(ns string, args ...string) {
		t.Helper()
		run(t, ns, args...)
	}
	run(p.server, "ip", "link", "add", "stamp0", "type", "veth", "peer", "name", "stamp1", "netns", p.client)
	run(p.server, "ethtool", "-K", "stamp0", "tx", "off")
	for _, side := range []struct {
		ns, dev string
		v4, v6  netip.Addr
	}{{p.server, "stamp0", serverAddr4, serverAddr6}, {p.client, "stamp1", clientAddr4, clientAddr6}} {
		run(side.ns, "ip", "addr", "add", side.v4.String()+"/24", "dev", side.dev)
		run(side.ns, "ip", "addr", "add", side.v6.String()+"/64", "dev", side.dev, "nodad")
		run(side.ns, "ip", "link", "set", side.dev, "up")
	}
}

// listen opens a UDP socket in namespace ns.
func listen(t *testing.T, ns string, addr netip.Addr) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := chronytest.InNamespace(ns, func() error {
		var err error
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func port(conn *net.UDPConn) uint16 { return conn.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

func cookie(t *testing.T, conn *net.UDPConn) uint64 {
	t.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var c uint64
	var cerr error
	if err := raw.Control(func(fd uintptr) { c, cerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) }); err != nil {
		t.Fatal(err)
	}
	if cerr != nil {
		t.Fatal(cerr)
	}
	return c
}

// receiver is a client socket that reports the kernel's receive time.
func receiver(t *testing.T, ns string, addr netip.Addr) *net.UDPConn {
	t.Helper()
	conn := listen(t, ns, addr)
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) })
	if serr != nil {
		t.Fatal(serr)
	}
	return conn
}

// receive reads one datagram and the kernel's time of its arrival.
func receive(t *testing.T, conn *net.UDPConn) ([]byte, time.Time) {
	t.Helper()
	buf := make([]byte, 512)
	oob := make([]byte, 128)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, oobn, _, _, err := conn.ReadMsgUDP(buf, oob)
	if err != nil {
		t.Fatalf("no datagram (a wrong UDP checksum is dropped): %v", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return buf[:n], time.Unix(sec, nsec)
		}
	}
	t.Fatal("no receive timestamp")
	return nil, time.Time{}
}

// userStamp is the transmit timestamp the tests write in user space: 2001,
// far from any time the program writes.
var userStamp = ntp.TimeFrom(time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))

func packet(size int, mode byte) []byte {
	b := make([]byte, size)
	b[0] = 4<<3 | mode
	if size >= 48 {
		binary.BigEndian.PutUint64(b[40:48], uint64(userStamp))
	}
	return b
}

func transmitOf(b []byte) ntp.Time64 { return ntp.Time64(binary.BigEndian.Uint64(b[40:48])) }

// replyThrough sends a 48-byte reply from a socket registered with s in the
// server namespace to a client over IPv4, and returns what arrived and when.
func replyThrough(t *testing.T, s *egress.Stamper, p pair) ([]byte, time.Time) {
	t.Helper()
	server := listen(t, p.server, serverAddr4)
	if err := s.Add(cookie(t, server), port(server)); err != nil {
		t.Fatal(err)
	}
	client := receiver(t, p.client, clientAddr4)
	if _, err := server.WriteToUDPAddrPort(packet(48, 4), client.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	return receive(t, client)
}

func attach(t *testing.T, ns string) *egress.Stamper {
	t.Helper()
	var s *egress.Stamper
	err := chronytest.InNamespace(ns, func() error {
		var err error
		s, err = egress.Attach()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestStamp sends datagrams through the program and checks that it stamps
// exactly the 48-byte replies of registered sockets, with the time they
// reached the device, and leaves everything else as it was sent.
func TestStamp(t *testing.T) {
	chronytest.RequireRoot(t)
	p := newPair(t)
	s := attach(t, p.server)
	if got := s.Devices(); len(got) != 2 { // lo and stamp0
		t.Errorf("attached to %v, want lo and stamp0", got)
	}
	tests := []struct {
		name       string
		family     int
		registered bool
		wrongPort  bool // registered with another port than its own
		size       int
		mode       byte
		stamped    bool
	}{
		{"IPv4 reply", 4, true, false, 48, 4, true},
		{"IPv6 reply", 6, true, false, 48, 4, true},
		{"IPv4 symmetric passive reply", 4, true, false, 48, 2, true},
		{"IPv4 request", 4, true, false, 48, 3, false},
		{"IPv6 broadcast mode", 6, true, false, 48, 5, false},
		{"reply with an extension", 4, true, false, 48 + 16, 4, false},
		{"short datagram", 4, true, false, 20, 4, false},
		{"unregistered socket", 4, false, false, 48, 4, false},
		{"unregistered socket IPv6", 6, false, false, 48, 4, false},
		{"registered with another port", 4, true, true, 48, 4, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverAddr, clientAddr := serverAddr4, clientAddr4
			if tt.family == 6 {
				serverAddr, clientAddr = serverAddr6, clientAddr6
			}
			server := listen(t, p.server, serverAddr)
			if tt.registered {
				p := port(server)
				if tt.wrongPort {
					p++
				}
				if err := s.Add(cookie(t, server), p); err != nil {
					t.Fatal(err)
				}
			}
			client := receiver(t, p.client, clientAddr)
			sent := packet(tt.size, tt.mode)
			for range 20 {
				if _, err := server.WriteToUDPAddrPort(sent, client.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
					t.Fatal(err)
				}
				got, arrived := receive(t, client)
				if len(got) != len(sent) {
					t.Fatalf("received %d bytes, sent %d", len(got), len(sent))
				}
				if !tt.stamped {
					if string(got) != string(sent) {
						t.Fatalf("datagram changed:\n got % x\nwant % x", got, sent)
					}
					continue
				}
				if string(got[:40]) != string(sent[:40]) {
					t.Fatalf("bytes before the transmit timestamp changed:\n got % x\nwant % x", got[:40], sent[:40])
				}
				stamp := transmitOf(got).Time(arrived)
				// The program reads the clock before the device hands the
				// packet on, and the client's kernel stamps it after: the
				// stamp precedes the arrival by the time between the two.
				if lead := arrived.Sub(stamp); lead < -time.Microsecond || lead > 5*time.Millisecond {
					t.Fatalf("transmit timestamp %v is %v before the arrival %v", stamp, lead, arrived)
				}
			}
		})
	}
}

// TestStampOffset checks that the program takes the TAI offset away from
// the kernel's TAI clock: told of an offset of 37 s where the kernel has
// another, it writes stamps 37 s (less the kernel's offset) behind.
func TestStampOffset(t *testing.T) {
	chronytest.RequireRoot(t)
	p := newPair(t)
	s := attach(t, p.server)
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		t.Fatal(err)
	}
	const told = 37 * time.Second
	if err := egress.SetOffsetSource(s, func() (int64, error) { return int64(told), nil }); err != nil {
		t.Fatal(err)
	}
	got, arrived := replyThrough(t, s, p)
	behind := arrived.Sub(transmitOf(got).Time(arrived))
	want := told - time.Duration(tx.Tai)*time.Second
	if d := behind - want; d < -time.Microsecond || d > 5*time.Millisecond {
		t.Fatalf("stamp is %v behind the arrival, want %v", behind, want)
	}
}

// TestClose checks that a closed Stamper leaves replies alone, and that
// closing twice is harmless.
func TestClose(t *testing.T) {
	chronytest.RequireRoot(t)
	p := newPair(t)
	s := attach(t, p.server)
	server := listen(t, p.server, serverAddr4)
	if err := s.Add(cookie(t, server), port(server)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	client := receiver(t, p.client, clientAddr4)
	sent := packet(48, 4)
	if _, err := server.WriteToUDPAddrPort(sent, client.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	if got, _ := receive(t, client); string(got) != string(sent) {
		t.Fatalf("a closed Stamper changed a reply:\n got % x\nwant % x", got, sent)
	}
	if out, err := exec.Command("ip", "netns", "exec", p.server, "ip", "link", "show", "stamp0").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// TestNewDevice checks that Run attaches the program to a device that
// appears after Attach, reports it, stamps replies through it, and lets go
// of it when it is gone.
func TestNewDevice(t *testing.T) {
	chronytest.RequireRoot(t)
	p := newNamespaces(t)
	s := attach(t, p.server)
	if got := s.Devices(); !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("attached to %v, want lo alone", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	reported := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		// Run looks for devices from its own thread's namespace.
		done <- chronytest.InNamespace(p.server, func() error {
			return s.Run(ctx, func(device string, err error) {
				if err != nil {
					t.Errorf("%s refused the program: %v", device, err)
				}
				reported <- device
			})
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	p.join(t)
	select {
	case device := <-reported:
		if device != "stamp0" {
			t.Fatalf("reported %q, want stamp0", device)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the new device was not reported within 5 s")
	}
	if got := s.Devices(); !slices.Equal(got, []string{"lo", "stamp0"}) {
		t.Fatalf("attached to %v, want lo and stamp0", got)
	}
	got, arrived := replyThrough(t, s, p)
	if transmitOf(got) == userStamp {
		t.Fatal("a reply through the new device kept its user-space stamp")
	}
	if lead := arrived.Sub(transmitOf(got).Time(arrived)); lead < -time.Microsecond || lead > 5*time.Millisecond {
		t.Fatalf("transmit timestamp is %v before the arrival", lead)
	}

	run(t, p.server, "ip", "link", "del", "stamp0")
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(s.Devices(), []string{"lo"}) {
		if time.Now().After(deadline) {
			t.Fatalf("still attached to %v 5 s after stamp0 was deleted", s.Devices())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRescanElsewhere checks that Run, called from a thread outside the
// namespace Attach ran in, attaches the program to nothing there, even when
// a device appears in its own.
func TestRescanElsewhere(t *testing.T) {
	chronytest.RequireRoot(t)
	p := newNamespaces(t)
	s := attach(t, p.server)
	// Devices of the other namespace that the program would take.
	run(t, p.client, "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- chronytest.InNamespace(p.client, func() error {
			return s.Run(ctx, func(device string, err error) {
				t.Errorf("reported %s (%v) from another namespace", device, err)
			})
		})
	}()
	// A device of the server's namespace, announced to Run.
	time.Sleep(100 * time.Millisecond)
	run(t, p.server, "ip", "link", "add", "new0", "type", "veth", "peer", "name", "new1")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := s.Devices(); !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("attached to %v, want lo alone", got)
	}
}

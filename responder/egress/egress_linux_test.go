package egress_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
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
	// Fixed addresses, so that each side knows the other's without asking:
	// a reply held back while its neighbour is looked up leaves up to a
	// second after its user-space stamp, too late for the program's guard.
	const serverMAC, clientMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
	run(p.server, "ip", "link", "add", "stamp0", "address", serverMAC, "type", "veth",
		"peer", "name", "stamp1", "address", clientMAC, "netns", p.client)
	run(p.server, "ethtool", "-K", "stamp0", "tx", "off")
	for _, side := range []struct {
		ns, dev      string
		v4, v6       netip.Addr
		peer4, peer6 netip.Addr
		peerMAC      string
	}{
		{p.server, "stamp0", serverAddr4, serverAddr6, clientAddr4, clientAddr6, clientMAC},
		{p.client, "stamp1", clientAddr4, clientAddr6, serverAddr4, serverAddr6, serverMAC},
	} {
		run(side.ns, "ip", "addr", "add", side.v4.String()+"/24", "dev", side.dev)
		run(side.ns, "ip", "addr", "add", side.v6.String()+"/64", "dev", side.dev, "nodad")
		run(side.ns, "ip", "link", "set", side.dev, "up")
		for _, peer := range []netip.Addr{side.peer4, side.peer6} {
			run(side.ns, "ip", "neigh", "replace", peer.String(), "lladdr", side.peerMAC, "dev", side.dev, "nud", "permanent")
		}
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

// recent returns a transmit timestamp as user space writes it just before
// the send, made 100 ms old so that the program's can be told from it.
func recent() ntp.Time64 { return ntp.TimeFrom(time.Now().Add(-100 * time.Millisecond)) }

// stampFromNow returns a function that returns the time d from now as a
// transmit timestamp.
func stampFromNow(d time.Duration) func() ntp.Time64 {
	return func() ntp.Time64 { return ntp.TimeFrom(time.Now().Add(d)) }
}

// packet returns a datagram of size bytes with an NTP mode and, from byte
// 40, the transmit timestamp stamp.
func packet(size int, mode byte, stamp ntp.Time64) []byte {
	b := make([]byte, size)
	b[0] = 4<<3 | mode
	if size >= 48 {
		binary.BigEndian.PutUint64(b[40:48], uint64(stamp))
	}
	return b
}

func transmitOf(b []byte) ntp.Time64 { return ntp.Time64(binary.BigEndian.Uint64(b[40:48])) }

// sentReply is a reply as it arrived at the client, when, and the stamp it
// was sent with.
type sentReply struct {
	got     []byte
	arrived time.Time
	sent    ntp.Time64
}

// replyThrough sends a 48-byte reply, stamped as user space stamps it, from
// a socket registered with s in the server namespace to a client over IPv4.
func replyThrough(t *testing.T, s *egress.Stamper, p pair) sentReply {
	t.Helper()
	return replyStamped(t, s, p, recent())
}

// replyStamped is replyThrough with the stamp user space writes given.
func replyStamped(t *testing.T, s *egress.Stamper, p pair, stamp ntp.Time64) sentReply {
	t.Helper()
	server := listen(t, p.server, serverAddr4)
	if err := s.Add(cookie(t, server)); err != nil {
		t.Fatal(err)
	}
	client := receiver(t, p.client, clientAddr4)
	r := sentReply{sent: stamp}
	if _, err := server.WriteToUDPAddrPort(packet(48, 4, r.sent), client.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	r.got, r.arrived = receive(t, client)
	return r
}

// checkStamped fails the test unless the reply got the program's stamp: not
// the one it was sent with, and one that precedes its arrival at the
// client by no more than the path between the two takes.
func checkStamped(t *testing.T, r sentReply) {
	t.Helper()
	if transmitOf(r.got) == r.sent {
		t.Fatal("the reply kept the stamp it was sent with")
	}
	if lead := r.arrived.Sub(transmitOf(r.got).Time(r.arrived)); lead < -time.Microsecond || lead > 5*time.Millisecond {
		t.Fatalf("transmit timestamp is %v before the arrival", lead)
	}
}

func counts(t *testing.T, s *egress.Stamper) egress.Counts {
	t.Helper()
	c, err := s.Counts()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func attach(t testing.TB, ns string) *egress.Stamper {
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

// runStamper runs s.Run on a thread in namespace ns until the test ends, and
// passes on what it reports.
func runStamper(t *testing.T, s *egress.Stamper, ns string) <-chan egress.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan egress.Event, 100)
	done := make(chan error, 1)
	go func() {
		// Run looks for devices from its own thread's namespace.
		done <- chronytest.InNamespace(ns, func() error {
			return s.Run(ctx, func(e egress.Event) { events <- e })
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return events
}

// nextEvent returns what Run reports next, within 5 s.
func nextEvent(t *testing.T, events <-chan egress.Event) egress.Event {
	t.Helper()
	select {
	case e := <-events:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("Run reported nothing within 5 s")
		return egress.Event{}
	}
}

// TestStamp sends datagrams through the program and checks that it stamps
// exactly the 48-byte replies of registered sockets whose stamp is within
// the guard of its own reading, with the time they reached the device,
// counts what it stamps and what it leaves alone, and leaves everything
// else as it was sent.
func TestStamp(t *testing.T) {
	chronytest.KeepTAI(t)
	p := newPair(t)
	s := attach(t, p.server)
	if got := s.Devices(); len(got) != 2 { // lo and stamp0
		t.Errorf("attached to %v, want lo and stamp0", got)
	}
	const (
		none = iota
		stamped
		corrected // by whole seconds: the seconds are user space's, the fraction the program's
		unsure
	)
	tests := []struct {
		name       string
		family     int
		registered bool
		size       int
		mode       byte
		stamp      func() ntp.Time64
		counted    int
	}{
		{"IPv4 reply", 4, true, 48, 4, recent, stamped},
		{"IPv6 reply", 6, true, 48, 4, recent, stamped},
		{"IPv4 symmetric passive reply", 4, true, 48, 2, recent, stamped},
		{"IPv4 request", 4, true, 48, 3, recent, none},
		{"IPv6 broadcast mode", 6, true, 48, 5, recent, none},
		{"reply with an extension", 4, true, 48 + 16, 4, recent, none},
		{"short datagram", 4, true, 20, 4, recent, none},
		{"unregistered socket", 4, false, 48, 4, recent, none},
		{"unregistered socket IPv6", 6, false, 48, 4, recent, none},
		{"stamp just inside the guard", 4, true, 48, 4, stampFromNow(-egress.Guard + 50*time.Millisecond), stamped},
		{"stamp just outside the guard", 4, true, 48, 4, stampFromNow(-egress.Guard - time.Millisecond), unsure},
		{"stamp 2 s behind the program's clock", 4, true, 48, 4, stampFromNow(-2 * time.Second), corrected},
		{"stamp 1 s ahead of the program's clock", 6, true, 48, 4, stampFromNow(time.Second), corrected},
		{"stamp 1.5 s behind", 4, true, 48, 4, stampFromNow(-1500 * time.Millisecond), unsure},
		{"stamp more than the largest correction behind", 4, true, 48, 4, stampFromNow(-(egress.MaxCorrection + 1) * time.Second), unsure},
		// The last 8 bytes of a packet with a trailer (ESP's) are no stamp.
		{"no stamp where a stamp should be", 4, true, 48, 4, func() ntp.Time64 { return 0x0123456789abcdef }, unsure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverAddr, clientAddr := serverAddr4, clientAddr4
			if tt.family == 6 {
				serverAddr, clientAddr = serverAddr6, clientAddr6
			}
			server := listen(t, p.server, serverAddr)
			if tt.registered {
				if err := s.Add(cookie(t, server)); err != nil {
					t.Fatal(err)
				}
			}
			client := receiver(t, p.client, clientAddr)
			before := counts(t, s)
			const n = 20
			for range n {
				written := time.Now()
				sent := packet(tt.size, tt.mode, tt.stamp())
				if _, err := server.WriteToUDPAddrPort(sent, client.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
					t.Fatal(err)
				}
				got, arrived := receive(t, client)
				if len(got) != len(sent) {
					t.Fatalf("received %d bytes, sent %d", len(got), len(sent))
				}
				if tt.counted == none || tt.counted == unsure {
					if string(got) != string(sent) {
						t.Fatalf("datagram changed:\n got % x\nwant % x", got, sent)
					}
					continue
				}
				if string(got[:40]) != string(sent[:40]) {
					t.Fatalf("bytes before the transmit timestamp changed:\n got % x\nwant % x", got[:40], sent[:40])
				}
				if tt.counted == corrected {
					// User space's seconds, the program's fraction: the stamp
					// follows user space's by the time between the writing
					// and the program's reading, which precedes the arrival.
					if d := transmitOf(got).Time(arrived).Sub(transmitOf(sent).Time(arrived)); d < 0 || d > arrived.Sub(written) {
						t.Fatalf("corrected stamp %v after the one written, which was %v before the arrival", d, arrived.Sub(written))
					}
					continue
				}
				// The program reads the clock before the device hands the
				// packet on, and the client's kernel stamps it after: the
				// stamp precedes the arrival by the time between the two.
				checkStamped(t, sentReply{got, arrived, transmitOf(sent)})
			}
			want := before
			switch tt.counted {
			case stamped:
				want.Stamped += n
			case corrected:
				want.Stamped += n
				want.Corrected += n
			case unsure:
				want.Unsure += n
			}
			if got := counts(t, s); got != want {
				t.Errorf("counts went from %+v to %+v, want %+v", before, got, want)
			}
		})
	}
}

// TestStaleOffset tells the program a TAI offset other than the kernel's,
// as happens between a change of the kernel's and the next time Run reads
// it, and checks that no reply gets a stamp from it: off by a whole number
// of seconds, up to MaxCorrection, from the stamp user space wrote, the
// program's reading is corrected by them and is right to the microsecond;
// further off, the reply keeps user space's stamp.
func TestStaleOffset(t *testing.T) {
	chronytest.KeepTAI(t)
	p := newPair(t)
	s := attach(t, p.server)
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		t.Fatal(err)
	}
	kernel := time.Duration(tx.Tai) * time.Second
	for _, tt := range []struct {
		off       time.Duration
		corrected bool
	}{
		{37 * time.Second, true}, {-37 * time.Second, true}, {time.Second, true}, {-time.Second, true},
		{egress.MaxCorrection * time.Second, true},
		{(egress.MaxCorrection + 1) * time.Second, false},
	} {
		t.Run(strconv.Itoa(int(tt.off/time.Second))+"s", func(t *testing.T) {
			if err := egress.SetOffsetSource(s, func() (int64, error) { return int64(kernel + tt.off), nil }); err != nil {
				t.Fatal(err)
			}
			// Written just before the send, as a worker writes it. A send
			// that a busy machine held up for longer than the slack of a
			// correction is another case (a worker so late keeps its own
			// stamp, TestStamp's "stamp 1.5 s behind"), so it is sent again.
			var before egress.Counts
			var r sentReply
			for try := 0; try == 0 || r.arrived.Sub(r.sent.Time(r.arrived)) > egress.CorrectionSlack/2 && try < 5; try++ {
				before = counts(t, s)
				r = replyStamped(t, s, p, ntp.TimeFrom(time.Now()))
			}
			want := before
			if tt.corrected {
				checkStamped(t, r)
				want.Stamped++
				want.Corrected++
			} else {
				if transmitOf(r.got) != r.sent {
					t.Errorf("stamp %v replaced with %v, from an offset %v off", r.sent.Time(r.arrived), transmitOf(r.got).Time(r.arrived), tt.off)
				}
				want.Unsure++
			}
			if c := counts(t, s); c != want {
				t.Errorf("counts went from %+v to %+v, want %+v", before, c, want)
			}
		})
	}
	if err := egress.SetOffsetSource(s, func() (int64, error) { return int64(kernel), nil }); err != nil {
		t.Fatal(err)
	}
	checkStamped(t, replyThrough(t, s, p))
}

// TestOtherTraffic runs the program on frames that are not fastntp's
// replies (BPF_PROG_TEST_RUN gives each a socket of its own, never
// registered), and checks that it lets each through unchanged and counts
// nothing.
func TestOtherTraffic(t *testing.T) {
	s := attach(t, chronytest.Namespace(t))
	for _, frame := range otherTraffic() {
		out := make([]byte, len(frame.data)+256)
		ret, err := egress.Program(s).Run(&ebpf.RunOptions{Data: frame.data, DataOut: out})
		if err != nil {
			t.Fatal(err)
		}
		if int32(ret) != -1 {
			t.Errorf("%s: returned %d, want -1 (TCX_NEXT)", frame.name, int32(ret))
		}
		if string(out[:len(frame.data)]) != string(frame.data) {
			t.Errorf("%s: changed", frame.name)
		}
	}
	if c := counts(t, s); c != (egress.Counts{}) {
		t.Errorf("counted %+v", c)
	}
}

// BenchmarkOtherTraffic measures what the program costs the packets of
// other sockets that pass a device: reply-sized ones, which it looks up,
// and a full-sized one, which its length check lets through.
func BenchmarkOtherTraffic(b *testing.B) {
	s := attach(b, chronytest.Namespace(b))
	for _, f := range otherTraffic() {
		b.Run(f.name, func(b *testing.B) {
			_, perRun, err := egress.Program(s).Benchmark(f.data, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(perRun.Nanoseconds()), "ns/packet")
		})
	}
}

type frame struct {
	name string
	data []byte
}

// otherTraffic is a reply of another socket, in the smallest and largest
// frame a reply can come in, and datagrams of sizes a reply is not.
func otherTraffic() []frame {
	reply := packet(48, 4, recent())
	return []frame{
		{"IPv4 reply of another socket", udpFrame(4, reply)},
		{"IPv6 reply of another socket", udpFrame(6, reply)},
		{"1500-byte datagram", udpFrame(4, make([]byte, 1500-42))},
		{"minimal frame", make([]byte, 14)},
	}
}

// udpFrame wraps payload in Ethernet, IPv4 or IPv6, and UDP headers from
// port 123. Its checksums are left zero: nothing here checks them.
func udpFrame(family int, payload []byte) []byte {
	ipHeader := 20
	if family == 6 {
		ipHeader = 40
	}
	frame := make([]byte, 14+ipHeader+8+len(payload))
	ip := frame[14:]
	udp := ip[ipHeader:]
	if family == 4 {
		binary.BigEndian.PutUint16(frame[12:], unix.ETH_P_IP)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
		ip[8], ip[9] = 64, unix.IPPROTO_UDP
		copy(ip[12:], serverAddr4.AsSlice())
		copy(ip[16:], clientAddr4.AsSlice())
	} else {
		binary.BigEndian.PutUint16(frame[12:], unix.ETH_P_IPV6)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
		ip[6], ip[7] = unix.IPPROTO_UDP, 64
		copy(ip[8:], serverAddr6.AsSlice())
		copy(ip[24:], clientAddr6.AsSlice())
	}
	binary.BigEndian.PutUint16(udp[0:], 123)
	binary.BigEndian.PutUint16(udp[2:], 40000)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	return frame
}

// TestNAT serves a client that sends to port 123 through an nftables
// redirect to the socket's own port: the reply leaves with its source port
// rewritten to 123, and is stamped all the same, for the socket cookie says
// whose it is.
func TestNAT(t *testing.T) {
	chronytest.KeepTAI(t)
	nft := chronytest.Require(t, "nft")
	p := newPair(t)
	s := attach(t, p.server)
	server := listen(t, p.server, serverAddr4)
	if err := s.Add(cookie(t, server)); err != nil {
		t.Fatal(err)
	}
	rules := "table ip fastntp_test {\n chain prerouting {\n  type nat hook prerouting priority dstnat;\n" +
		"  udp dport 123 redirect to :" + strconv.Itoa(int(port(server))) + "\n }\n}\n"
	cmd := chronytest.Command(p.server, nft, "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	client := receiver(t, p.client, clientAddr4)
	for range 20 {
		if _, err := client.WriteToUDPAddrPort(packet(48, 3, recent()), netip.AddrPortFrom(serverAddr4, 123)); err != nil {
			t.Fatal(err)
		}
		server.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64)
		_, from, err := server.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("the redirected request did not arrive: %v", err)
		}
		sent := recent()
		if _, err := server.WriteToUDPAddrPort(packet(48, 4, sent), from); err != nil {
			t.Fatal(err)
		}
		buf, oob := make([]byte, 64), make([]byte, 128)
		client.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, oobn, _, replyFrom, err := client.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if replyFrom.Port() != 123 {
			t.Fatalf("reply from %v, want port 123 (NAT)", replyFrom)
		}
		checkStamped(t, sentReply{buf[:n], kernelArrival(t, oob[:oobn]), sent})
	}
}

func kernelArrival(t *testing.T, oob []byte) time.Time {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS {
			return time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16])))
		}
	}
	t.Fatal("no receive timestamp")
	return time.Time{}
}

// TestOtherProgram checks that a program that ends the chain, attached
// before fastntp started (as agents that append theirs do), does not keep
// replies from being stamped; and that one put ahead of fastntp's later
// does, which the counts show: the replies never reach the program.
func TestOtherProgram(t *testing.T) {
	chronytest.KeepTAI(t)
	p := newPair(t)
	if _, err := chronytest.OtherProgram(t, p.server, "stamp0", chronytest.TCXPass, false); err != nil {
		t.Fatal(err)
	}
	s := attach(t, p.server)
	before := counts(t, s)
	checkStamped(t, replyThrough(t, s, p))
	if c := counts(t, s); c.Stamped != before.Stamped+1 {
		t.Errorf("counts went from %+v to %+v, want one more stamped", before, c)
	}

	if _, err := chronytest.OtherProgram(t, p.server, "stamp0", chronytest.TCXPass, true); err != nil {
		t.Fatal(err)
	}
	before = counts(t, s)
	if r := replyThrough(t, s, p); transmitOf(r.got) != r.sent {
		t.Fatal("stamped behind a program that ends the chain")
	}
	if c := counts(t, s); c != before {
		t.Errorf("counts went from %+v to %+v for a reply the program never saw", before, c)
	}
}

// TestRefusedAtAttach fills a device's egress with programs until it takes
// no more, and checks that Attach serves the other devices and Run reports
// the one that refused.
func TestRefusedAtAttach(t *testing.T) {
	p := newPair(t)
	chronytest.FillEgress(t, p.server, "stamp0")
	s := attach(t, p.server)
	if got := s.Devices(); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("attached to %v, want lo alone", got)
	}
	if got := s.Refused(); !slices.Equal(got, []string{"stamp0"}) {
		t.Errorf("refused by %v, want stamp0", got)
	}
	e := nextEvent(t, runStamper(t, s, p.server))
	if e.Kind != egress.Refused || e.Device != "stamp0" || e.Err == nil {
		t.Errorf("Run reported %+v first, want stamp0's refusal", e)
	}
}

// TestWatchFailure checks that Run reports when it cannot follow the
// kernel's announcements of new devices, subscribes again, and serves the
// devices that appear afterwards: when the subscription fails at Attach,
// and when the announcements end.
func TestWatchFailure(t *testing.T) {
	chronytest.RequireRoot(t)
	t.Run("subscription fails", func(t *testing.T) {
		failed := false
		defer egress.SetSubscribe(func() (*os.File, error) {
			if !failed {
				failed = true
				return nil, errors.New("no netlink today")
			}
			return egress.Subscribe()
		}, 20*time.Millisecond)()
		checkResumes(t)
	})
	t.Run("announcements end", func(t *testing.T) {
		var writer *os.File
		defer egress.SetSubscribe(func() (*os.File, error) {
			if writer == nil {
				r, w, err := os.Pipe()
				writer = w
				return r, err
			}
			return egress.Subscribe()
		}, 20*time.Millisecond)()
		checkResumes(t, func() { writer.Close() })
	})
}

// checkResumes attaches a Stamper, runs it, calls each of breaks, and
// checks that Run reports the failure of its watch, then its recovery, and
// then attaches the program to a new device.
func checkResumes(t *testing.T, breaks ...func()) {
	t.Helper()
	p := newNamespaces(t)
	s := attach(t, p.server)
	events := runStamper(t, s, p.server)
	for _, b := range breaks {
		b()
	}
	if e := nextEvent(t, events); e.Kind != egress.WatchFailed || e.Err == nil {
		t.Fatalf("Run reported %+v, want the watch's failure", e)
	}
	if e := nextEvent(t, events); e.Kind != egress.WatchResumed {
		t.Fatalf("Run reported %+v, want the watch resumed", e)
	}
	p.join(t)
	if e := nextEvent(t, events); e.Kind != egress.Attached || e.Device != "stamp0" {
		t.Fatalf("Run reported %+v, want stamp0 attached", e)
	}
}

// TestClose checks that a closed Stamper leaves replies alone, and that
// closing twice is harmless.
func TestClose(t *testing.T) {
	chronytest.RequireRoot(t)
	p := newPair(t)
	s := attach(t, p.server)
	server := listen(t, p.server, serverAddr4)
	if err := s.Add(cookie(t, server)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	client := receiver(t, p.client, clientAddr4)
	sent := packet(48, 4, recent())
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
	chronytest.KeepTAI(t)
	p := newNamespaces(t)
	s := attach(t, p.server)
	if got := s.Devices(); !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("attached to %v, want lo alone", got)
	}
	events := runStamper(t, s, p.server)
	p.join(t)
	if e := nextEvent(t, events); e.Kind != egress.Attached || e.Device != "stamp0" {
		t.Fatalf("reported %+v, want stamp0 attached", e)
	}
	if got := s.Devices(); !slices.Equal(got, []string{"lo", "stamp0"}) {
		t.Fatalf("attached to %v, want lo and stamp0", got)
	}
	checkStamped(t, replyThrough(t, s, p))

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
			return s.Run(ctx, func(e egress.Event) {
				t.Errorf("reported %+v from another namespace", e)
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

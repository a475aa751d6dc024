package main

import (
	"errors"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
)

// xdpRig is a namespace pair for fastntp with --xdp on the server side's
// device, its backend chronyd beside it, and clients on the other side.
type xdpRig struct {
	*chronytest.Rig
	server4, server6 netip.AddrPort
}

func newXDPRig(t *testing.T) *xdpRig {
	t.Helper()
	// A test elsewhere that changes the kernel's TAI offset would have
	// the program pass requests on to the sockets.
	chronytest.KeepTAI(t)
	r := &xdpRig{Rig: chronytest.NewRig(t)}
	r.server4 = netip.AddrPortFrom(r.Server4, 123)
	r.server6 = netip.AddrPortFrom(r.Server6, 123)
	chronytest.XDPPeer(t, r.Client, r.ClientDevice, "")
	chronytest.StartChronyd(t, chronytest.Options{Namespace: r.Server, Port: 11123})
	return r
}

// start runs fastntp on the server side with the fast path and waits
// until it serves synchronized replies, through the program.
func (r *xdpRig) start(t *testing.T, args ...string) *process {
	t.Helper()
	args = append([]string{"-a", r.server4.String(), "-b", r.server6.String(), "--xdp", r.ServerDevice,
		"--poll-interval", "200ms", "--max-age", "1s", "--log-format", "json"}, args...)
	p := startFastntp(t, r.Server, args...)
	p.waitLog("synchronized to backend", 10*time.Second)
	// The first request to an address waits for the neighbour's
	// resolution, and a reply the program sends at once to it is lost in
	// this one kernel (see responder's resolveNeighbours): ask until
	// the replies come.
	for _, addr := range []netip.AddrPort{r.server4, r.server6} {
		r.waitReply(t, addr, 5*time.Second, "synchronized", func(h ntp.Header) bool { return h.Stratum == 10 && h.Leap == ntp.LeapNone })
	}
	return p
}

// waitReply queries addr from the client side until check accepts the
// reply.
func (r *xdpRig) waitReply(t *testing.T, addr netip.AddrPort, timeout time.Duration, what string, check func(ntp.Header) bool) {
	t.Helper()
	var last ntp.Header
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if last, err = chronytest.QueryIn(r.Client, addr, 300*time.Millisecond); err == nil && check(last) {
			return
		}
	}
	t.Fatalf("no %s reply from %s within %v; last %+v, %v", what, addr, timeout, last, err)
}

// attachedXDP returns what ip says of the XDP program on the server's
// device, or "" if there is none.
func (r *xdpRig) attachedXDP(t *testing.T) string {
	t.Helper()
	out, err := chronytest.Command(r.Server, "ip", "-details", "link", "show", r.ServerDevice).CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show: %v: %s", err, out)
	}
	return regexp.MustCompile(`prog/xdp id \d+ name \S+`).FindString(string(out))
}

// metrics returns the Prometheus text fastntp serves at address, read
// from the server side.
func (r *xdpRig) metrics(t *testing.T, address string) string {
	t.Helper()
	out, err := chronytest.Command(r.Server, "/usr/bin/python3", "-c",
		"import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://"+address+"/metrics').read().decode())").CombinedOutput()
	if err != nil {
		t.Fatalf("metrics: %v: %s", err, out)
	}
	return string(out)
}

// counter returns the value of the series whose line starts with prefix.
func counter(t *testing.T, metrics, prefix string) float64 {
	t.Helper()
	for line := range strings.Lines(metrics) {
		if strings.HasPrefix(line, prefix) {
			v, err := strconv.ParseFloat(strings.TrimSpace(line[len(prefix):]), 64)
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("no series %s in:\n%s", prefix, metrics)
	return 0
}

// TestXDP runs fastntp with --xdp across a veth pair: real clients get the
// time from the program over IPv4 and IPv6, as the metrics show; the
// start-up says that the firewall is bypassed; the program is detached
// when fastntp exits.
func TestXDP(t *testing.T) {
	ntpdig := chronytest.Require(t, "ntpdig")
	requireNtplib(t)
	r := newXDPRig(t)
	p := r.start(t, "--metrics-address", "127.0.0.1:9123")
	if !strings.Contains(p.Log(), "ahead of the host's firewall") || !strings.Contains(p.Log(), `"device":"`+r.ServerDevice+`","mode":"native"`) {
		t.Errorf("no warning that the program answers ahead of the firewall, in native mode:\n%s", p.Log())
	}
	if r.attachedXDP(t) == "" {
		t.Fatal("no XDP program on the server's device")
	}
	queryRealClients(t, r.Client, ntpdig, r.Server4.String(), r.Server6.String())
	m := r.metrics(t, "127.0.0.1:9123")
	for _, family := range []string{"ipv4", "ipv6"} {
		replied := counter(t, m, `fastntp_replied_total{family="`+family+`",path="xdp",worker=""} `)
		// ntpdig, ntplib and chronyd -Q (four requests with iburst,
		// one sample kept), less what the sockets answered.
		if replied < 3 {
			t.Errorf("the program answered %v %s requests", replied, family)
		}
	}
	if counter(t, m, "fastntp_xdp_attached ") != 1 {
		t.Error("fastntp_xdp_attached is not 1")
	}
	if code := p.stop(); code != 0 {
		t.Errorf("exit code %d", code)
	}
	if prog := r.attachedXDP(t); prog != "" {
		t.Errorf("%s still attached after fastntp exited", prog)
	}
	// Killed, it cannot detach the program itself: the kernel does, as
	// the link's last holder goes.
	p = r.start(t)
	p.cmd.Process.Kill()
	p.cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for r.attachedXDP(t) != "" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if prog := r.attachedXDP(t); prog != "" {
		t.Errorf("%s still attached after fastntp was killed", prog)
	}
}

// TestXDPStoppedDaemon stops fastntp (SIGSTOP): the program, which needs
// no daemon to run, turns its replies unsynchronized when the state it was
// given expires (--max-age), as the sockets would answer; they are
// synchronized again once fastntp continues.
func TestXDPStoppedDaemon(t *testing.T) {
	r := newXDPRig(t)
	p := r.start(t)
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	defer p.cmd.Process.Signal(syscall.SIGCONT)
	unsynchronized := func(h ntp.Header) bool { return h.Leap == ntp.LeapUnsynchronized && h.Stratum == 0 }
	for _, addr := range []netip.AddrPort{r.server4, r.server6} {
		r.waitReply(t, addr, 5*time.Second, "unsynchronized", unsynchronized)
	}
	// --max-age 1s after the last answer, which came at most a poll
	// (200 ms) before the stop.
	if waited := time.Since(stopped); waited < 700*time.Millisecond {
		t.Errorf("unsynchronized %v after the stop, before the state could expire", waited)
	}
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	r.waitReply(t, r.server4, 5*time.Second, "synchronized", func(h ntp.Header) bool { return h.Stratum == 10 && h.Leap == ntp.LeapNone })
}

// TestXDPRefusals checks what fastntp says when --xdp cannot be had: a
// device that already has someone else's XDP program, which it names and
// leaves in place, and a device that does not exist.
func TestXDPRefusals(t *testing.T) {
	rig := chronytest.NewRig(t)
	chronytest.XDPPeer(t, rig.Server, rig.ServerDevice, "someones_prog")
	for _, tc := range []struct{ device, want string }{
		{rig.ServerDevice, `already has an XDP program, \"someones_prog\"`},
		{"nosuchdevice", "device nosuchdevice"},
	} {
		out, err := chronytest.Command(rig.Server, binary, "-a", netip.AddrPortFrom(rig.Server4, 123).String(), "-6", "0",
			"--xdp", tc.device, "--transmit-stamps", "syscall").CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 || !strings.Contains(string(out), tc.want) {
			t.Errorf("--xdp %s: %v, want a failure saying %q:\n%s", tc.device, err, tc.want, out)
		}
	}
}

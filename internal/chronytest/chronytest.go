// Package chronytest runs, for tests, the real programs fastntp talks to:
// a chronyd serving time on a private port, network namespaces to run NTP
// clients that only know port 123, and a minimal NTP query.
//
// A missing program skips the test, except under CI=true, where every
// dependency is required and a missing one fails the test.
package chronytest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/fastntp/fastntp/bench"
	"github.com/fastntp/fastntp/internal/ntp"
)

// Require returns the path of a program, or ends the test without it.
func Require(t testing.TB, program string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required under CI=true: %v (make test installs it)", program, err)
	}
	t.Skipf("%s not installed: %v", program, err)
	return ""
}

// SkipUnlessCI ends the test for the reason given, except under CI=true,
// where whatever keeps a test from running is a failure.
func SkipUnlessCI(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("under CI=true this test must run: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot ends the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root under CI=true")
	}
	t.Skip("needs root")
}

// FreePort returns a UDP port on 127.0.0.1 that was free a moment ago; see
// bench.FreePort.
func FreePort(t testing.TB) uint16 {
	t.Helper()
	port, err := bench.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// Namespace creates a network namespace with only a loopback interface, up,
// and removes it when the test ends. Commands run in it through Command.
func Namespace(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	ip := Require(t, "ip")
	name := fmt.Sprintf("fastntp-test-%d-%d", os.Getpid(), rand.Uint32())
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(ip, "netns", "del", name).Run() })
	if out, err := exec.Command(ip, "netns", "exec", name, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("loopback up in %s: %v: %s", name, err, out)
	}
	return name
}

// Command returns a command that runs in namespace ns, or in the test's own
// namespace if ns is empty.
func Command(ns, name string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Chronyd is a chronyd serving NTP on 127.0.0.1 for one test. It does not
// touch the system clock (-x) and, unless asked otherwise, claims stratum 10
// from its local clock.
type Chronyd struct {
	t      testing.TB
	Addr   netip.AddrPort
	ns     string
	dir    string
	config string
	cmd    *exec.Cmd
	log    *os.File
}

// Options configure StartChronyd.
type Options struct {
	// Namespace to run in; empty for the test's own.
	Namespace string
	// Port on 127.0.0.1 to serve; zero picks a free one.
	Port uint16
	// Unsynchronized leaves out the local reference, so chronyd answers
	// with leap 3, as a server without sources does.
	Unsynchronized bool
	// Config holds extra chrony.conf lines, such as a ratelimit directive.
	Config []string
}

// StartChronyd starts chronyd as opts say and, outside a namespace, waits
// until it answers. It is stopped when the test ends.
func StartChronyd(t testing.TB, opts Options) *Chronyd {
	t.Helper()
	Require(t, "chronyd")
	if opts.Port == 0 {
		opts.Port = FreePort(t)
	}
	dir := t.TempDir()
	c := &Chronyd{t: t, ns: opts.Namespace, dir: dir, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), opts.Port)}
	c.config = filepath.Join(dir, "chrony.conf")
	conf := bench.ChronydConfig(opts.Port, dir, !opts.Unsynchronized)
	for _, line := range opts.Config {
		conf += line + "\n"
	}
	if err := os.WriteFile(c.config, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	c.Start()
	return c
}

// Start starts chronyd again after Stop.
func (c *Chronyd) Start() {
	c.t.Helper()
	if c.cmd != nil {
		return
	}
	log, err := os.OpenFile(filepath.Join(c.dir, "chronyd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	c.log = log
	c.cmd = Command(c.ns, "chronyd", "-x", "-d", "-u", "root", "-f", c.config)
	c.cmd.Stdout, c.cmd.Stderr = log, log
	if err := c.cmd.Start(); err != nil {
		c.t.Fatalf("start chronyd: %v", err)
	}
	if c.ns != "" {
		return // Query runs in this namespace; callers in ns wait themselves
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := Query(c.Addr, 200*time.Millisecond); err == nil {
			return
		}
	}
	c.t.Fatalf("chronyd did not answer on %s within 10s; its log:\n%s", c.Addr, c.Log())
}

// Stop kills chronyd and waits for it to exit.
func (c *Chronyd) Stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Kill()
	c.cmd.Wait()
	c.log.Close()
	c.cmd = nil
}

// Log returns what chronyd has printed.
func (c *Chronyd) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "chronyd.log"))
	return string(b)
}

// Query sends one NTPv4 client request to addr and returns the header of
// the reply that answers it.
func Query(addr netip.AddrPort, timeout time.Duration) (ntp.Header, error) {
	r, err := bench.Probe(context.Background(), addr, timeout)
	if err != nil {
		return ntp.Header{}, err
	}
	return r.Server, nil
}

// QueryIn is Query from a socket in namespace ns.
func QueryIn(ns string, addr netip.AddrPort, timeout time.Duration) (ntp.Header, error) {
	var h ntp.Header
	err := InNamespace(ns, func() error {
		var err error
		h, err = Query(addr, timeout)
		return err
	})
	return h, err
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fastntp/fastntp/bench"
	"github.com/fastntp/fastntp/internal/chronytest"
)

// freeTCPPort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// httpGet returns the status and body of a GET, or fails the test.
func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// prometheusServer is a real Prometheus scraping one target every second.
type prometheusServer struct {
	t    *testing.T
	base string
}

func startPrometheus(t *testing.T, target string) *prometheusServer {
	t.Helper()
	bin := chronytest.Require(t, "prometheus")
	dir := t.TempDir()
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: fastntp
    static_configs:
      - targets: [%q]
`, target)), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freeTCPPort(t)
	cmd := exec.Command(bin, "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	logFile, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus log:\n%s", b)
		}
	})
	p := &prometheusServer{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(p.base + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("prometheus not ready within 20s")
		}
	}
}

// query evaluates an instant query that yields one number.
func (p *prometheusServer) query(q string) (float64, bool) {
	resp, err := http.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if json.NewDecoder(resp.Body).Decode(&r) != nil || r.Status != "success" || len(r.Data.Result) != 1 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// waitQuery waits until q evaluates to want.
func (p *prometheusServer) waitQuery(q string, want float64, timeout time.Duration) {
	p.t.Helper()
	var last float64
	var ok bool
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if last, ok = p.query(q); ok && last == want {
			return
		}
	}
	p.t.Fatalf("Prometheus: %s = %v (answered %v), want %v within %v", q, last, ok, want, timeout)
}

// TestMonitoringWithPrometheus has a real Prometheus scrape fastntp while
// the bench sends a known number of requests, then kills and restarts the
// backend: the counters match the bench's own, and the synchronized gauge
// and /healthz follow the backend.
func TestMonitoringWithPrometheus(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{})
	port := chronytest.FreePort(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	p := startFastntp(t, "", "-a", loopback(port).String(), "-6", "0", "-4", "2", "-s", chronyd.Addr.String(),
		"--poll-interval", "200ms", "--max-age", "1s", "--metrics-address", metrics, "--stats-interval", "0")
	p.waitLog("synchronized to backend", 5*time.Second)
	prom := startPrometheus(t, metrics)
	prom.waitQuery(`fastntp_synchronized`, 1, 10*time.Second)
	prom.waitQuery(`fastntp_stratum`, 10, 5*time.Second)
	// In the host's namespace the tests stamp before each send:
	// TestDeviceStampMetrics has the device stamper's metrics.
	prom.waitQuery(`fastntp_transmit_stamps_at_device`, 0, 5*time.Second)
	if code, body := httpGet(t, "http://"+metrics+"/healthz"); code != http.StatusOK || body != "synchronized\n" {
		t.Errorf("/healthz while synchronized: %d %q", code, body)
	}

	f, err := bench.NewFlooder(bench.FloodConfig{Target: loopback(port), Clients: 8})
	if err != nil {
		t.Fatal(err)
	}
	step, err := f.Run(context.Background(), 2000, 2*time.Second)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if step.Sent == 0 || step.Valid != step.Sent {
		t.Fatalf("bench: sent %d, %d valid replies", step.Sent, step.Valid)
	}
	prom.waitQuery(`sum(fastntp_received_total)`, float64(step.Sent), 10*time.Second)
	prom.waitQuery(`sum(fastntp_replied_total)`, float64(step.Valid), 5*time.Second)
	prom.waitQuery(`count(fastntp_received_total{family="ipv4"})`, 2, time.Second) // one series per worker
	prom.waitQuery(`sum(fastntp_dropped_total)`, 0, time.Second)

	chronyd.Stop()
	prom.waitQuery(`fastntp_synchronized`, 0, 10*time.Second)
	prom.waitQuery(`fastntp_leap_indicator`, 3, 2*time.Second)
	if code, body := httpGet(t, "http://"+metrics+"/healthz"); code != http.StatusServiceUnavailable ||
		!strings.HasPrefix(body, "unsynchronized (no answer): ") {
		t.Errorf("/healthz with the backend gone: %d %q", code, body)
	}
	chronyd.Start()
	prom.waitQuery(`fastntp_synchronized`, 1, 10*time.Second)
	if code, _ := httpGet(t, "http://"+metrics+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz after the backend returned: %d", code)
	}
}

// A metrics address that cannot be bound is a start-up error.
func TestMetricsAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out, err := exec.Command(binary, onHost("-a", loopback(chronytest.FreePort(t)).String(), "-6", "0",
		"--metrics-address", ln.Addr().String())...).CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "--metrics-address "+ln.Addr().String()) ||
		!strings.Contains(string(out), "address already in use") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
	for _, bad := range []string{"localhost:9123", "127.0.0.1"} {
		out, err := exec.Command(binary, "--metrics-address", bad).CombinedOutput()
		if exitCode(err) != 2 || !strings.Contains(string(out), "--metrics-address") {
			t.Errorf("--metrics-address %s: %v\n%s", bad, err, out)
		}
	}
}

// Clients that connect and send nothing, or a header a byte at a time,
// hold at most a few connections for a few seconds: NTP is answered all
// along, and a real scrape succeeds once they time out.
func TestHostileScrapers(t *testing.T) {
	chronyd := chronytest.StartChronyd(t, chronytest.Options{})
	port := chronytest.FreePort(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	p := startFastntp(t, "", "-a", loopback(port).String(), "-6", "0", "-s", chronyd.Addr.String(),
		"--metrics-address", metrics, "--stats-interval", "0")
	p.waitLog("synchronized to backend", 5*time.Second)

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 40 {
		c, err := net.DialTimeout("tcp", metrics, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if i%2 == 0 {
			c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n")) // never finished
		}
	}
	for range 10 {
		waitQuery(t, loopback(port), 500*time.Millisecond, "synchronized with the metrics listener flooded", synchronized)
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if len(fds) > 40 {
		t.Errorf("fastntp holds %d descriptors with 40 idle connections queued, want the few it accepts", len(fds))
	}
	client := http.Client{Timeout: 15 * time.Second}
	resp, err := client.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatalf("a real scrape behind 40 hostile connections: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "fastntp_synchronized 1") {
		t.Errorf("scrape: %d\n%.300s", resp.StatusCode, body)
	}
}

// fastntp tells systemd when it is ready, feeds the watchdog while its
// workers run, and says when it stops; a socket in the test stands in for
// systemd's.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(binary, onHost("-a", loopback(chronytest.FreePort(t)).String(), "-6", "0", "--stats-interval", "0")...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	read := func() string {
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	if got := read(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	for range 3 {
		if got := read(); got != "WATCHDOG=1" {
			t.Fatalf("notification %q, want WATCHDOG=1", got)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	for {
		if got := read(); got == "STOPPING=1" {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// getIn returns the body of a GET of path from a server at addr in
// namespace ns, over a connection opened there.
func getIn(t *testing.T, ns string, addr netip.AddrPort, path string) string {
	t.Helper()
	var body []byte
	err := chronytest.InNamespace(ns, func() error {
		conn, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(conn)
		return err
	})
	if err != nil {
		t.Fatalf("GET %s in %s: %v", path, ns, err)
	}
	return string(body)
}

// TestDeviceStampMetrics serves replies stamped at the device in a
// namespace of the test's own, and checks that the metrics and the rate
// summary count each.
func TestDeviceStampMetrics(t *testing.T) {
	chronytest.KeepTAI(t)
	ns := chronytest.Namespace(t)
	metrics := netip.MustParseAddrPort("127.0.0.1:9123")
	p := startFastntp(t, ns, "-a", "127.0.0.1:123", "-6", "0", "--transmit-stamps", "device",
		"--metrics-address", metrics.String(), "--stats-interval", "300ms", "--log-format", "json")
	const replies = 20
	for range replies {
		if _, err := chronytest.QueryIn(ns, loopback(123), time.Second); err != nil {
			t.Fatal(err)
		}
	}
	body := getIn(t, ns, metrics, "/metrics")
	for _, want := range []string{
		"fastntp_transmit_stamps_at_device 1\n",
		fmt.Sprintf("fastntp_device_stamped_total %d\n", replies),
		"fastntp_device_corrected_total 0\n",
		`fastntp_device_unstamped_total{reason="clock"} 0` + "\n",
		`fastntp_device_unstamped_total{reason="checksum"} 0` + "\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	p.waitLog(`"device_stamped_per_s":`, 2*time.Second)
}

// fakeWorkers is a server whose running workers the test sets.
type fakeWorkers struct{ running, size atomic.Int32 }

func (f *fakeWorkers) Running() int { return int(f.running.Load()) }
func (f *fakeWorkers) Size() int    { return int(f.size.Load()) }

// The watchdog is fed only while every worker runs: a server one worker
// short gets no WATCHDOG=1, so that systemd restarts it.
func TestWatchdogStarvedByStoppedWorker(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "100000") // fed every 50 ms
	workers := &fakeWorkers{}
	workers.size.Store(4)
	workers.running.Store(3)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { feedWatchdog(ctx, workers, zap.NewNop()); close(done) }()
	defer func() { cancel(); <-done }()

	buf := make([]byte, 64)
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("fed %q with 3 of 4 workers running", buf[:n])
	}
	workers.running.Store(4)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "WATCHDOG=1" {
		t.Fatalf("with every worker running: %q, %v; want WATCHDOG=1", buf[:n], err)
	}
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TargetSpec names a server to measure. Its text form, for flags, is one of
//
//	NAME=addr:HOST:PORT        a server that is already running
//	NAME=exec:COMMAND ARGS...  a command the bench starts and stops
//	NAME=chronyd               a chronyd the bench configures as a plain server
//
// In a command, {port} becomes a free port on 127.0.0.1 (or on
// StartOptions.Host, which {host} names), {port6} the same port on ::1 (the
// target is then measured over IPv6), {addr:OTHER} the
// address of the target named OTHER, started before it, and {metrics} a free
// TCP address on 127.0.0.1 for the server's Prometheus metrics, which the
// bench then scrapes (see FloodConfig.ScrapeInterval).
type TargetSpec struct {
	Name    string
	Addr    netip.AddrPort // addr targets
	Command []string       // exec targets
	Chronyd bool
}

// ParseTargetSpec parses the text form.
func ParseTargetSpec(s string) (TargetSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return TargetSpec{}, fmt.Errorf("target %q: want NAME=addr:HOST:PORT, NAME=exec:COMMAND or NAME=chronyd", s)
	}
	spec := TargetSpec{Name: name}
	switch kind, arg, _ := strings.Cut(rest, ":"); kind {
	case "addr":
		ap, err := netip.ParseAddrPort(arg)
		if err != nil {
			return spec, fmt.Errorf("target %s: %w", name, err)
		}
		spec.Addr = ap
	case "exec":
		spec.Command = strings.Fields(arg)
		if len(spec.Command) == 0 {
			return spec, fmt.Errorf("target %s: empty command", name)
		}
	case "chronyd":
		spec.Chronyd = true
	default:
		return spec, fmt.Errorf("target %s: unknown kind %q", name, kind)
	}
	return spec, nil
}

// StartOptions say how the bench runs the servers it starts.
type StartOptions struct {
	// CPUs pins started servers to these CPUs (taskset's list syntax,
	// "1" or "2-3"); empty leaves them unpinned.
	CPUs string
	// CPUQuota, if positive, limits each started server to that fraction of
	// one CPU with a cgroup (v2 cpu.max, or v1 cpu.cfs_quota_us).
	CPUQuota float64
	// AllowRemote permits addr targets that are not this host's.
	AllowRemote bool
	// Namespace, if set, is the network namespace (a name ip netns knows)
	// the started servers run in: the server's side of a raw-frame rig.
	Namespace string
	// Host is the address started servers are measured at, and {host} in
	// their commands. If not valid, 127.0.0.1.
	Host netip.Addr
}

// Target is a server ready to measure.
type Target struct {
	Name string
	Addr netip.AddrPort
	// MetricsURL is the server's Prometheus endpoint, when its command
	// had {metrics}.
	MetricsURL string
	// PID is the server's process if the bench started it, else 0.
	PID    int
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited
	dir    string
	cgroup string
}

// StartTargets starts the targets and waits until each answers: running
// servers and built-in chronyds first, then commands in the order given, so
// a command can name any of the first kind in {addr:NAME}. The result is in
// the order of specs. On error it stops those it started.
func StartTargets(ctx context.Context, specs []TargetSpec, opts StartOptions) ([]*Target, error) {
	targets := make([]*Target, len(specs))
	var started []*Target
	fail := func(err error) ([]*Target, error) {
		for _, t := range started {
			t.Stop()
		}
		return nil, err
	}
	for _, commands := range []bool{false, true} {
		for i, spec := range specs {
			if (spec.Command != nil) != commands {
				continue
			}
			t := &Target{Name: spec.Name}
			targets[i] = t
			started = append(started, t)
			if spec.Addr.IsValid() {
				if err := CheckTarget(spec.Addr, opts.AllowRemote); err != nil {
					return fail(err)
				}
				t.Addr = spec.Addr
				if err := waitAnswer(ctx, t, 10*time.Second); err != nil {
					return fail(err)
				}
				continue
			}
			// A server that exits before it answers may have lost its port
			// to another process between FreePort and its bind: try again
			// on another port.
			var err error
			for attempt := 0; attempt < 3; attempt++ {
				if err = t.start(spec, started[:len(started)-1], opts); err != nil {
					return fail(fmt.Errorf("start %s: %w", spec.Name, err))
				}
				if err = waitAnswer(ctx, t, 10*time.Second); err == nil || !t.exited() {
					break
				}
				t.Stop()
			}
			if err != nil {
				return fail(err)
			}
		}
	}
	return targets, nil
}

func (t *Target) start(spec TargetSpec, earlier []*Target, opts StartOptions) error {
	dir, err := os.MkdirTemp("", "fastntp-bench-"+t.Name)
	if err != nil {
		return err
	}
	t.dir = dir
	port, err := FreePort()
	if err != nil {
		return err
	}
	host := opts.Host
	if !host.IsValid() {
		host = netip.MustParseAddr("127.0.0.1")
	}
	t.Addr = netip.AddrPortFrom(host, port)
	args := spec.Command
	if spec.Chronyd {
		clients := "127.0.0.0/8"
		if host != netip.MustParseAddr("127.0.0.1") {
			clients = "" // served on a rig's address, to clients from anywhere
		}
		conf := filepath.Join(dir, "chrony.conf")
		if err := os.WriteFile(conf, []byte(chronydConfig(netip.AddrPortFrom(host, port), clients, dir, true)), 0o644); err != nil {
			return err
		}
		args = []string{"chronyd", "-x", "-d", "-f", conf}
		if os.Geteuid() == 0 {
			args = append(args, "-u", "root")
		}
	}
	if slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "{port6}") }) {
		t.Addr = netip.AddrPortFrom(netip.IPv6Loopback(), port)
	}
	expanded := make([]string, len(args))
	for i, a := range args {
		a = strings.ReplaceAll(a, "{port}", strconv.Itoa(int(port)))
		a = strings.ReplaceAll(a, "{port6}", strconv.Itoa(int(port)))
		a = strings.ReplaceAll(a, "{host}", host.String())
		if strings.Contains(a, "{metrics}") {
			metrics, err := freeTCPAddr()
			if err != nil {
				return err
			}
			a = strings.ReplaceAll(a, "{metrics}", metrics)
			t.MetricsURL = "http://" + metrics + "/metrics"
		}
		for _, other := range earlier {
			a = strings.ReplaceAll(a, "{addr:"+other.Name+"}", other.Addr.String())
		}
		if strings.Contains(a, "{") {
			return fmt.Errorf("unknown placeholder in %q", a)
		}
		expanded[i] = a
	}
	if opts.CPUs != "" {
		expanded = append([]string{"taskset", "-c", opts.CPUs}, expanded...)
	}
	if opts.Namespace != "" {
		// nsenter, unlike ip netns exec, leaves /sys alone: the cgroup
		// that limits the server's CPU is written through the host's.
		expanded = append([]string{"nsenter", "--net=/run/netns/" + opts.Namespace, "--"}, expanded...)
	}
	log, err := os.Create(filepath.Join(dir, "output.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	t.cmd = exec.Command(expanded[0], expanded[1:]...)
	t.cmd.Stdout, t.cmd.Stderr = log, log
	if err := t.cmd.Start(); err != nil {
		return err
	}
	t.PID = t.cmd.Process.Pid
	t.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(t.cmd, t.done)
	if opts.CPUQuota > 0 {
		cg, err := limitCPU(t.PID, t.Name, opts.CPUQuota)
		if err != nil {
			return err
		}
		t.cgroup = cg
	}
	return nil
}

// ChronydConfig returns a chrony.conf for a chronyd that serves NTP to
// 127.0.0.0/8 on port of 127.0.0.1, with no command socket and its pid file
// in dir. With synchronized it claims stratum 10 from its own clock (local
// stratum 10); without, it has no source and answers unsynchronized.
func ChronydConfig(port uint16, dir string, synchronized bool) string {
	return chronydConfig(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), "127.0.0.0/8", dir, synchronized)
}

// chronydConfig is ChronydConfig for a chronyd serving on addr to clients,
// a prefix, or anyone if empty.
func chronydConfig(addr netip.AddrPort, clients, dir string, synchronized bool) string {
	conf := fmt.Sprintf("port %d\nbindaddress %s\nallow %s\ncmdport 0\n"+
		"bindcmdaddress /\npidfile %s\n", addr.Port(), addr.Addr(), clients, filepath.Join(dir, "chronyd.pid"))
	if synchronized {
		conf += "local stratum 10\n"
	}
	return conf
}

// exited reports whether a target the bench started has exited.
func (t *Target) exited() bool {
	if t.done == nil {
		return false
	}
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// Log returns what a started target printed.
func (t *Target) Log() string {
	if t.dir == "" {
		return ""
	}
	b, _ := os.ReadFile(filepath.Join(t.dir, "output.log"))
	return string(b)
}

// Stop stops a target the bench started and removes its files.
func (t *Target) Stop() {
	if t.cmd != nil {
		t.cmd.Process.Signal(os.Interrupt)
		select {
		case <-t.done:
		case <-time.After(3 * time.Second):
			t.cmd.Process.Kill()
			<-t.done
		}
		t.cmd = nil
	}
	if t.cgroup != "" {
		os.Remove(t.cgroup)
	}
	if t.dir != "" {
		os.RemoveAll(t.dir)
		t.dir = ""
	}
}

func waitAnswer(ctx context.Context, t *Target, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if t.exited() {
			break
		}
		if _, err = Probe(ctx, t.Addr, 200*time.Millisecond); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond) // a refused probe returns at once
	}
	return fmt.Errorf("target %s at %s did not answer within %v: %v\n%s", t.Name, t.Addr, timeout, err, t.Log())
}

// FreePort returns a UDP port on 127.0.0.1 that was free a moment ago. It
// picks from below Linux's ephemeral range (32768 and up), so that no
// client socket opened meanwhile, a probe of the server about to bind it
// included, can take the port first.
func FreePort() (uint16, error) {
	for range 100 {
		port := 20000 + rand.IntN(12000)
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err == nil {
			c.Close()
			return uint16(port), nil
		}
	}
	return 0, errors.New("no free UDP port on 127.0.0.1 in 20000-31999")
}

// freeTCPAddr returns an address on 127.0.0.1 whose TCP port was free a
// moment ago.
func freeTCPAddr() (string, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// limitCPU puts pid in a new cgroup limited to quota of one CPU and returns
// the cgroup's directory.
func limitCPU(pid int, name string, quota float64) (string, error) {
	// A short period spreads the throttling finely; at the usual 100 ms a
	// throttled server stalls for tens of milliseconds at a time. The
	// kernel takes no quota under a millisecond, so a quota under half a
	// CPU gets a longer period.
	period := max(2000, int(math.Ceil(1000/quota))) // µs
	limit := int(quota * float64(period))
	group := fmt.Sprintf("fastntp-bench-%s-%d", name, pid)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		dir := filepath.Join("/sys/fs/cgroup", group)
		return dir, writeCgroup(dir, map[string]string{"cpu.max": fmt.Sprintf("%d %d", limit, period)}, pid)
	}
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err == nil {
		dir := filepath.Join("/sys/fs/cgroup/cpu", group)
		return dir, writeCgroup(dir, map[string]string{
			"cpu.cfs_period_us": strconv.Itoa(period),
			"cpu.cfs_quota_us":  strconv.Itoa(limit),
		}, pid)
	}
	return "", errors.New("no writable cgroup CPU controller (v2 cpu.max or v1 cpu) for --target-cpu-quota")
}

func writeCgroup(dir string, settings map[string]string, pid int) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	for _, file := range []string{"cpu.max", "cpu.cfs_period_us", "cpu.cfs_quota_us"} {
		if v, ok := settings[file]; ok {
			if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
				os.Remove(dir)
				return fmt.Errorf("cgroup %s: %w", file, err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		os.Remove(dir)
		return fmt.Errorf("move %d into cgroup: %w", pid, err)
	}
	return nil
}

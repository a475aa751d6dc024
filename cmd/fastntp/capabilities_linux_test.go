package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/chronytest"
)

// unitCapabilities returns the capabilities the systemd unit grants, in
// setpriv's form (+net_bind_service,...).
func unitCapabilities(t *testing.T) string {
	t.Helper()
	unit, err := os.ReadFile("../../deploy/debian/fastntp.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^AmbientCapabilities=(.*)$`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("the unit grants no capabilities")
	}
	var caps []string
	for _, c := range strings.Fields(string(m[1])) {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	return strings.Join(caps, ",")
}

// heldCapabilities returns the lines of /proc/PID/task/*/status that show
// a capability in a thread's effective, permitted, inheritable or ambient
// set.
func heldCapabilities(t *testing.T, pid int) []string {
	t.Helper()
	statuses, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(statuses) == 0 {
		t.Fatalf("no threads of process %d: %v", pid, err)
	}
	var held []string
	for _, status := range statuses {
		b, err := os.ReadFile(status)
		if err != nil {
			continue // a thread that ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) != 2 {
				continue
			}
			switch f[0] {
			case "CapInh:", "CapPrm:", "CapEff:", "CapAmb:":
				if strings.Trim(f[1], "0") != "" {
					held = append(held, status+": "+line)
				}
			}
		}
	}
	return held
}

// TestCapabilitiesShed starts fastntp on port 123 with its replies stamped
// at the device, as the systemd unit runs it (an unprivileged user given
// the unit's ambient capabilities), as root switching to nobody, and as
// root: once serving, no thread holds any capability, and a device that
// appears later still gets the stamper.
func TestCapabilitiesShed(t *testing.T) {
	chronytest.RequireRoot(t)
	setpriv := chronytest.Require(t, "setpriv")
	caps := unitCapabilities(t)
	for _, tc := range []struct {
		name    string
		command []string
	}{
		{"the unit's user and capabilities", []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
			"--inh-caps=" + caps, "--ambient-caps=" + caps, "--", binary}},
		{"root switching to nobody", []string{binary, "-u", "nobody"}},
		{"root", []string{binary}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := chronytest.Namespace(t)
			args := append(tc.command[1:], "-a", "127.0.0.1:123", "-6", "0", "--transmit-stamps", "device", "--log-format", "json")
			p := &process{t: t, cmd: chronytest.Command(ns, tc.command[0], args...)}
			p.cmd.Stdout, p.cmd.Stderr = p, p
			if err := p.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				p.cmd.Process.Kill()
				p.cmd.Wait()
				if t.Failed() {
					t.Logf("fastntp log:\n%s", p.Log())
				}
			})
			p.waitLog(`"transmit_stamps":"at the device (lo)"`, 5*time.Second)
			// The process ip netns exec became.
			pid := p.cmd.Process.Pid
			held := heldCapabilities(t, pid)
			for deadline := time.Now().Add(2 * time.Second); len(held) > 0 && time.Now().Before(deadline); held = heldCapabilities(t, pid) {
				time.Sleep(20 * time.Millisecond)
			}
			if len(held) > 0 {
				t.Fatalf("capabilities held 2 s after start:\n%s", strings.Join(held, "\n"))
			}
			if _, err := chronytest.QueryIn(ns, loopback(123), time.Second); err != nil {
				t.Fatalf("no reply on port 123: %v", err)
			}
			if out, err := chronytest.Command(ns, "ip", "link", "add", "late0", "type", "veth", "peer", "name", "late1").CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			p.waitLog(`"stamping replies at a new device","device":"late0"`, 5*time.Second)
		})
	}
}

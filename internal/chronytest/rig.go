package chronytest

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Rig is a pair of network namespaces joined by a veth pair, as the raw-frame
// generator needs (docs/benchmarking.md gives the same commands): the
// client side, where the generator runs, and the server side, which routes
// the benchmark client networks 198.18.0.0/16 and 2001:2::/64 back through
// the pair.
type Rig struct {
	Client, Server             string // namespaces
	ClientDevice, ServerDevice string
	// The server side's addresses, on ServerDevice.
	Server4, Server6 netip.Addr
}

// The rig's fixed names and addresses, in the benchmark ranges.
const (
	rigClientDevice = "rig0"
	rigServerDevice = "rig1"
)

// NewRig creates the two namespaces and the pair; they are removed when the
// test ends.
func NewRig(t testing.TB) *Rig {
	t.Helper()
	r := &Rig{Client: Namespace(t), Server: Namespace(t), ClientDevice: rigClientDevice, ServerDevice: rigServerDevice,
		Server4: netip.MustParseAddr("198.19.0.2"), Server6: netip.MustParseAddr("2001:2:0:ff::2")}
	run := func(ns string, args ...string) {
		t.Helper()
		if out, err := Command(ns, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s in %s: %v: %s", args, ns, err, out)
		}
	}
	run(r.Client, "ip", "link", "add", rigClientDevice, "type", "veth", "peer", "name", rigServerDevice, "netns", r.Server)
	run(r.Client, "ip", "address", "add", "198.19.0.1/24", "dev", rigClientDevice)
	run(r.Client, "ip", "address", "add", "2001:2:0:ff::1/64", "dev", rigClientDevice, "nodad")
	run(r.Client, "ip", "link", "set", rigClientDevice, "up")
	run(r.Server, "ip", "address", "add", "198.19.0.2/24", "dev", rigServerDevice)
	run(r.Server, "ip", "address", "add", "2001:2:0:ff::2/64", "dev", rigServerDevice, "nodad")
	run(r.Server, "ip", "link", "set", rigServerDevice, "up")
	// Replies go to an Ethernet address that is not the client device's:
	// captured all the same, they are dropped as soon as they reach the
	// client's IP layer, which would otherwise look up a route for each.
	run(r.Server, "ip", "neigh", "add", "198.19.0.254", "lladdr", "02:00:00:00:00:fe", "dev", rigServerDevice, "nud", "permanent")
	run(r.Server, "ip", "neigh", "add", "2001:2:0:ff::fe", "lladdr", "02:00:00:00:00:fe", "dev", rigServerDevice, "nud", "permanent")
	run(r.Server, "ip", "route", "add", "198.18.0.0/16", "via", "198.19.0.254")
	run(r.Server, "ip", "route", "add", "2001:2::/64", "via", "2001:2:0:ff::fe")
	return r
}

// Steer lays out the rig's receive paths as .ci/in-rig does: what arrives
// on the client's device is steered by RPS to generatorCPU; what arrives on
// the server's device is processed on servingCPU, in softirq steered there
// by RPS if napi is false, else by the device's NAPI thread, pinned there
// at a real-time priority.
func (r *Rig) Steer(t testing.TB, generatorCPU, servingCPU int, napi bool) {
	t.Helper()
	ethtool := Require(t, "ethtool")
	run := func(ns, script string) {
		t.Helper()
		if out, err := Command(ns, "sh", "-c", script).CombinedOutput(); err != nil {
			t.Fatalf("%s in %s: %v: %s", script, ns, err, out)
		}
	}
	rps := func(ns, device string, cpu int) {
		t.Helper()
		run(ns, fmt.Sprintf("printf %%x %d > /sys/class/net/%s/queues/rx-0/rps_cpus", 1<<cpu, device))
	}
	rps(r.Client, r.ClientDevice, generatorCPU)
	if !napi {
		rps(r.Server, r.ServerDevice, servingCPU)
		return
	}
	// A veth hands a frame to its peer's NAPI only if the sender has no TSO.
	run(r.Client, fmt.Sprintf("%s -K %s tso off gro off", ethtool, r.ClientDevice))
	run(r.Server, fmt.Sprintf("%s -K %s gro on && echo 1 > /sys/class/net/%s/threaded", ethtool, r.ServerDevice, r.ServerDevice))
	// The thread is named for the device, which every rig calls alike:
	// the one of this rig's namespace is the one created last.
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	newest := 0
	for _, path := range comms {
		comm, err := os.ReadFile(path)
		if err != nil || !strings.HasPrefix(string(comm), "napi/"+r.ServerDevice+"-") {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path))); err == nil {
			newest = max(newest, pid)
		}
	}
	if newest == 0 {
		t.Fatalf("no NAPI thread of %s found", r.ServerDevice)
	}
	pid := strconv.Itoa(newest)
	for _, args := range [][]string{{"taskset", "-p", "-c", strconv.Itoa(servingCPU), pid}, {"chrt", "-f", "-p", "50", pid}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", args, err, out)
		}
	}
}

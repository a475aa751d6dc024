// Command fastntp-bench load-tests NTP servers on this host: it probes one,
// ramps the request rate against one to find where it saturates, holds a
// fixed rate, or compares several servers side by side.
//
// It is a command of its own, not a subcommand of fastntp, so that the
// daemon keeps rsntp's command line and none of the plotting code.
//
//	fastntp-bench probe 127.0.0.1
//	fastntp-bench ramp --target 127.0.0.1:123 --plot ramp.png
//	fastntp-bench fixed --target 'fastntp=exec:fastntp -a 127.0.0.1:{port} -6 0' --rate 200000
//	fastntp-bench compare --target 'chronyd=chronyd' --target 'fastntp=exec:fastntp -a 127.0.0.1:{port} -6 0 -s {addr:chronyd}'
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/bench"
	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/spf13/pflag"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `Usage: fastntp-bench COMMAND [options]

Commands:
  probe ADDRESS   send one request and print the reply; exit 0 if the server
                  is synchronized, 3 if it answered unsynchronized, 1 if not at all
  ramp            raise the request rate step by step until the server saturates
  fixed           hold one request rate for a while (soak, CPU cost)
  compare         ramp several servers in turn, interleaved, and compare them

Run fastntp-bench COMMAND -h for a command's options.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "probe":
		err = probe(ctx, args[1:], stdout)
	case "ramp", "fixed", "compare":
		err = load(ctx, args[0], args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "fastntp-bench: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case errors.Is(err, errHelpShown):
		return 0
	case errors.Is(err, errUnsynchronized):
		fmt.Fprintf(stderr, "fastntp-bench %s: %v\n", args[0], err)
		return 3
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "fastntp-bench %s: %v\nRun 'fastntp-bench %s --help' for its options.\n", args[0], err, args[0])
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "fastntp-bench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// usageError is a mistake on the command line.
type usageError struct{ error }

// errHelpShown means the command printed its help as asked.
var errHelpShown = errors.New("help shown")

// newFlagSet returns an empty flag set for a command, with -h and --help.
func newFlagSet(command string) (*pflag.FlagSet, *bool) {
	fs := pflag.NewFlagSet(command, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	return fs, fs.BoolP("help", "h", false, "print this help and exit")
}

// parse parses args into fs and prints the command's help to stdout if it
// was asked for.
func parse(fs *pflag.FlagSet, help *bool, synopsis string, args []string, stdout io.Writer) error {
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *help {
		fmt.Fprintf(stdout, "Usage: fastntp-bench %s\n\nOptions:\n%s", synopsis, fs.FlagUsagesWrapped(100))
		return errHelpShown
	}
	return nil
}

func probe(ctx context.Context, args []string, stdout io.Writer) error {
	fs, help := newFlagSet("probe")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the reply")
	allowRemote := fs.Bool("allow-remote", false, "allow a server that is not on this host")
	if err := parse(fs, help, "probe [options] ADDRESS[:PORT]\n\nSend one NTP request (to port 123 unless given) and print the reply.\n"+
		"Exit status: 0 if the server is synchronized, 3 if it answered unsynchronized (leap 3, or stratum 0 or 16),\n"+
		"1 if it did not answer, 2 for a mistake on the command line.", args, stdout); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("want one ADDRESS or ADDRESS:PORT")}
	}
	addr, err := parseServerAddress(fs.Arg(0))
	if err != nil {
		return usageError{err}
	}
	// One request is not load, but the rule is the same everywhere.
	if err := bench.CheckTarget(addr, *allowRemote); err != nil {
		return err
	}
	r, err := bench.Probe(ctx, addr, *timeout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n%s\n", addr, r)
	if h := r.Server; h.Leap == ntp.LeapUnsynchronized || h.Stratum == 0 || h.Stratum >= ntp.MaxStratum {
		return errUnsynchronized
	}
	return nil
}

// errUnsynchronized means that the server answered, but not with
// synchronized time: leap 3, or stratum 0 (a kiss-o'-death) or 16.
var errUnsynchronized = errors.New("the server answered, but is not synchronized")

// parseServerAddress parses an address with an optional port, 123 when
// left out: 127.0.0.1, 127.0.0.1:1123, ::1, [::1] or [::1]:1123.
func parseServerAddress(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	if addr, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
		return netip.AddrPortFrom(addr, 123), nil
	}
	return netip.AddrPort{}, fmt.Errorf("%q is not an IP address with an optional port, such as 127.0.0.1, 127.0.0.1:123 or [::1]:123", s)
}

// loadFlags are the options of ramp, fixed and compare; each command
// defines only those it uses.
type loadFlags struct {
	targets, requires      []string
	start, multiplier, max float64
	step                   time.Duration
	maxLoss                float64
	rate                   float64
	duration               time.Duration
	rounds                 int
	points                 []string
	clients, batchSize     int
	clientIO               string
	benchCPUs, targetCPUs  string
	quota                  float64
	allowRemote            bool
	asJSON, asCSV          bool
	plotPath, jsonOut      string
	scrapeInterval         time.Duration
	timeout                time.Duration
	// The raw-frame generator's.
	device, sourceNetwork, nextHop string
	sourceMAC                      string
	xdpPeer                        bool
	targetNetns, targetHost        string
}

var loadSynopses = map[string]string{
	"ramp":    "ramp --target TARGET [options]\n\nRaise the request rate step by step until the server saturates.",
	"fixed":   "fixed --target TARGET [options]\n\nHold one request rate for a while (soak, CPU cost).",
	"compare": "compare --target TARGET --target TARGET... [options]\n\nRamp several servers in turn, interleaved, and compare them; the first is the one compared.",
}

func defineLoadFlags(fs *pflag.FlagSet, mode string, f *loadFlags) {
	targetHelp := "server to load: ADDRESS:PORT, NAME=addr:ADDRESS:PORT, NAME=exec:COMMAND (with {port}, {port6} for ::1, {addr:NAME} and {metrics}), or NAME=chronyd"
	if mode == "compare" {
		targetHelp += "; repeat for each server"
	}
	fs.StringArrayVar(&f.targets, "target", nil, targetHelp)
	if mode == "ramp" || mode == "compare" {
		fs.Float64Var(&f.start, "start", 20000, "first rate, requests/s")
		fs.Float64Var(&f.multiplier, "multiplier", 1.5, "rate multiplier per step")
		fs.Float64Var(&f.max, "max", 2e6, "highest rate, requests/s")
		fs.DurationVar(&f.step, "step", 2*time.Second, "duration of each rate step")
		fs.Float64Var(&f.maxLoss, "max-loss", 20, "stop after a step losing more than this percentage")
	}
	if mode == "fixed" {
		fs.Float64Var(&f.rate, "rate", 50000, "requests/s")
		fs.DurationVar(&f.duration, "duration", 10*time.Second, "how long to hold the rate")
	}
	if mode == "compare" {
		fs.IntVar(&f.rounds, "rounds", 3, "rounds of every target, interleaved")
		fs.StringArrayVar(&f.points, "point", nil, "after each ramp, hold this rate for one step: requests/s (20000) or a share of the first target's peak (90%); repeat for more")
		fs.StringArrayVar(&f.requires, "require", nil, "fail unless the first target meets METRIC[@POINT]>=RATIO*NAME or <=, e.g. peak>=0.97*c, cpu@20000<=1.3*c, txp99@50%<=8*chronyd (metrics: peak, cpu (task clock), servingcpu (everything the --target-cpus did), txp50, txp99)")
		fs.StringVar(&f.jsonOut, "json-out", "", "write the steps and summaries to this JSON `file`")
	}
	fs.IntVar(&f.clients, "clients", 32, "simulated clients (sockets), spread over 127.0.0.1-127.0.0.4 on loopback; with --interface, --source-network sets the clients")
	fs.IntVar(&f.batchSize, "batch", 0, "requests per send call (default 32, 256 with --interface)")
	fs.StringVar(&f.device, "interface", "", "send raw frames on this `device` from a spoofed client network, instead of through sockets (see --source-network)")
	fs.StringVar(&f.sourceNetwork, "source-network", "", "with --interface, the clients' `prefix`, inside 198.18.0.0/15 or 2001:2::/48 (default 198.18.0.0/16, or 2001:2::/112 for an IPv6 target)")
	fs.StringVar(&f.nextHop, "next-hop", "", "with --interface, the Ethernet `address` frames are sent to (default: the target's, from the neighbour table)")
	fs.StringVar(&f.sourceMAC, "source-mac", "", "with --interface, the Ethernet `address` requests come from, where a server answering with XDP sends its replies (default: the device's)")
	fs.BoolVar(&f.xdpPeer, "xdp-peer", false, "with --interface, attach an XDP program that passes every frame to the device while the bench runs: a veth delivers an XDP server's replies only to a device with one")
	fs.StringVar(&f.targetNetns, "target-netns", "", "run started servers in this network `namespace` (a name ip netns knows): the server's side of a --interface link")
	fs.StringVar(&f.targetHost, "target-host", "", "the `address` started servers serve on and are loaded at, {host} in their commands (default 127.0.0.1)")
	fs.StringVar(&f.clientIO, "client-io", "portable", "clients' socket I/O: portable (x/net, one poller for all sockets) or fast (a blocking thread per socket)")
	fs.StringVar(&f.benchCPUs, "bench-cpus", "", "pin the generator to these `CPUs` (taskset list, e.g. 0)")
	fs.StringVar(&f.targetCPUs, "target-cpus", "", "pin started servers to these `CPUs` (e.g. 1), and report everything these CPUs do per reply, softirq included")
	fs.Float64Var(&f.quota, "target-cpu-quota", 0, "limit each started server to this `fraction` of a CPU with a cgroup (e.g. 0.5)")
	fs.BoolVar(&f.allowRemote, "allow-remote", false, "allow servers that are not on this host")
	fs.BoolVar(&f.asJSON, "json", false, "print steps as JSON lines")
	fs.BoolVar(&f.asCSV, "csv", false, "print steps as CSV")
	fs.StringVar(&f.plotPath, "plot", "", "draw response rate against request rate into this .png or .svg `file`")
	fs.DurationVar(&f.scrapeInterval, "scrape-interval", time.Second, "fetch the metrics of targets started with {metrics} this often, as Prometheus would (0: never)")
	fs.DurationVar(&f.timeout, "timeout", 15*time.Minute, "stop everything after this long")
}

func load(ctx context.Context, mode string, args []string, stdout io.Writer) error {
	fs, help := newFlagSet(mode)
	var f loadFlags
	defineLoadFlags(fs, mode, &f)
	if err := parse(fs, help, loadSynopses[mode], args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if len(f.targets) == 0 || (mode != "compare" && len(f.targets) > 1) {
		return usageError{fmt.Errorf("%s takes %s --target", mode, map[bool]string{true: "one or more", false: "one"}[mode == "compare"])}
	}
	if f.asJSON && f.asCSV {
		return usageError{errors.New("--json and --csv exclude each other")}
	}
	var specs []bench.TargetSpec
	for i, t := range f.targets {
		if ap, err := netip.ParseAddrPort(t); err == nil {
			t = fmt.Sprintf("server%d=addr:%s", i+1, ap)
		}
		spec, err := bench.ParseTargetSpec(t)
		if err != nil {
			return usageError{err}
		}
		specs = append(specs, spec)
	}
	checks, err := parseRequires(f.requires, specs)
	if err != nil {
		return usageError{err}
	}
	var points []bench.Point
	for _, p := range f.points {
		point, err := bench.ParsePoint(p)
		if err != nil {
			return usageError{fmt.Errorf("--point: %w", err)}
		}
		points = append(points, point)
	}
	clientPath, err := batch.ParsePath(f.clientIO)
	if err != nil {
		return usageError{fmt.Errorf("--client-io: %w", err)}
	}
	ramp := bench.RampConfig{Start: f.start, Multiplier: f.multiplier, Max: f.max, StepDuration: f.step, MaxLossPercent: f.maxLoss}
	flood := bench.FloodConfig{Clients: f.clients, BatchSize: f.batchSize, AllowRemote: f.allowRemote, Path: clientPath,
		ScrapeInterval: f.scrapeInterval}
	if f.targetCPUs != "" {
		if flood.ServingCPUs, err = bench.ParseCPUList(f.targetCPUs); err != nil {
			return usageError{fmt.Errorf("--target-cpus: %w", err)}
		}
	}
	start := bench.StartOptions{CPUs: f.targetCPUs, CPUQuota: f.quota, AllowRemote: f.allowRemote, Namespace: f.targetNetns}
	if f.targetHost != "" {
		if start.Host, err = netip.ParseAddr(f.targetHost); err != nil {
			return usageError{fmt.Errorf("--target-host: %w", err)}
		}
	}
	if f.device != "" {
		flood.Raw.Interface = f.device
		if f.sourceNetwork != "" {
			if flood.Raw.SourceNetwork, err = netip.ParsePrefix(f.sourceNetwork); err != nil {
				return usageError{fmt.Errorf("--source-network: %w", err)}
			}
		}
		if f.nextHop != "" {
			if flood.Raw.NextHop, err = net.ParseMAC(f.nextHop); err != nil || len(flood.Raw.NextHop) != 6 {
				return usageError{fmt.Errorf("--next-hop %q: want an Ethernet address such as 02:00:00:00:00:01", f.nextHop)}
			}
		}
		if f.sourceMAC != "" {
			if flood.Raw.SourceMAC, err = net.ParseMAC(f.sourceMAC); err != nil || len(flood.Raw.SourceMAC) != 6 {
				return usageError{fmt.Errorf("--source-mac %q: want an Ethernet address such as 02:00:00:00:00:01", f.sourceMAC)}
			}
		}
		flood.Raw.XDPPeer = f.xdpPeer
	} else if f.sourceNetwork != "" || f.nextHop != "" || f.sourceMAC != "" || f.xdpPeer {
		return usageError{errors.New("--source-network, --next-hop, --source-mac and --xdp-peer need --interface")}
	}

	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if f.benchCPUs != "" {
		if err := pinSelf(f.benchCPUs); err != nil {
			return err
		}
	}
	started, err := bench.StartTargets(ctx, specs, start)
	if err != nil {
		return err
	}
	defer func() {
		for _, t := range started {
			t.Stop()
		}
	}()

	format := bench.Table
	switch {
	case f.asJSON:
		format = bench.JSON
	case f.asCSV:
		format = bench.CSV
	}
	out := bench.NewStepWriter(stdout, format)
	var steps []bench.Step
	record := func(s bench.Step) {
		out.Write(s)
		steps = append(steps, s)
	}
	var summaries []bench.Summary
	var stops map[string]string // why each target's ramp stopped, for the plot
	switch mode {
	case "ramp", "fixed":
		t := started[0]
		flood.Target, flood.TargetPID, flood.ScrapeURL = t.Addr, t.PID, t.MetricsURL
		fl, err := bench.NewFlooder(flood)
		if err != nil {
			return err
		}
		defer fl.Close()
		if mode == "ramp" {
			ramp.OnStep = func(s bench.Step) { s.Target = t.Name; record(s) }
			var result bench.RampResult
			result, err = fl.Ramp(ctx, ramp)
			if err == nil {
				fmt.Fprintf(stdout, "\n%s: %s\n", t.Name, result)
				stops = map[string]string{t.Name: string(result.Stop)}
			}
		} else {
			var s bench.Step
			s, err = fl.Run(ctx, f.rate, f.duration)
			s.Target = t.Name
			record(s)
		}
		if err != nil {
			return err
		}
	case "compare":
		summaries, _, err = bench.Compare(ctx, started, bench.CompareConfig{
			Rounds: f.rounds, Ramp: ramp, Points: points, FixedDuration: f.step,
			Flood: flood, OnStep: record,
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout)
		if err := bench.WriteSummaries(stdout, summaries); err != nil {
			return err
		}
		stops = map[string]string{}
		for _, s := range summaries {
			stops[s.Target] = stopsLabel(s.StopPerRound)
		}
	}
	if f.plotPath != "" {
		if err := drawPlot(f.plotPath, "fastntp-bench "+mode, steps, stops); err != nil {
			return err
		}
	}
	if f.jsonOut != "" {
		b, err := json.MarshalIndent(struct {
			Summaries []bench.Summary `json:"summaries,omitempty"`
			Steps     []bench.Step    `json:"steps"`
		}{summaries, steps}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(f.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return bench.CheckRequirements(stdout, checks, summaries)
}

// parseRequires parses --require values and checks that each names a
// target after the first.
func parseRequires(requires []string, specs []bench.TargetSpec) ([]bench.Requirement, error) {
	var reqs []bench.Requirement
	for _, text := range requires {
		r, err := bench.ParseRequirement(text)
		if err != nil {
			return nil, fmt.Errorf("--require: %w", err)
		}
		for _, term := range r.Terms {
			found := false
			for _, s := range specs[1:] {
				found = found || s.Name == term.Target
			}
			if !found {
				return nil, fmt.Errorf("--require %q: no target after the first is named %s", text, term.Target)
			}
		}
		reqs = append(reqs, r)
	}
	return reqs, nil
}

// stopsLabel says why the rounds' ramps stopped, once per distinct reason.
func stopsLabel(stops []bench.StopReason) string {
	var seen []string
	for _, s := range stops {
		if !slices.Contains(seen, string(s)) {
			seen = append(seen, string(s))
		}
	}
	return strings.Join(seen, "; ")
}

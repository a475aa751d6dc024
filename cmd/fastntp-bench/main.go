// Command fastntp-bench load-tests NTP servers on this host: it probes one,
// ramps the request rate against one to find where it saturates, holds a
// fixed rate, or compares several servers side by side.
//
// It is a command of its own, not a subcommand of fastntp, so that the
// daemon keeps rsntp's command line and none of the plotting code.
//
//	fastntp-bench probe 127.0.0.1:123
//	fastntp-bench ramp --target 127.0.0.1:123 --plot ramp.png
//	fastntp-bench fixed --target 'fastntp=exec:fastntp -a 127.0.0.1:{port} -6 0' --rate 200000
//	fastntp-bench compare --target 'chronyd=chronyd' --target 'fastntp=exec:fastntp -a 127.0.0.1:{port} -6 0 -s {addr:chronyd}'
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/bench"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `Usage: fastntp-bench COMMAND [options]

Commands:
  probe ADDRESS   send one request and print the reply
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
		err = probe(ctx, args[1:], stdout, stderr)
	case "ramp", "fixed", "compare":
		err = load(ctx, args[0], args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "fastntp-bench: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "fastntp-bench %s: %v\n", args[0], err)
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "fastntp-bench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// usageError is a mistake on the command line.
type usageError struct{ error }

func probe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the reply")
	allowRemote := fs.Bool("allow-remote", false, "allow a server that is not on this host")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("want one ADDRESS:PORT")}
	}
	addr, err := netip.ParseAddrPort(fs.Arg(0))
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
	return nil
}

// repeated collects a repeatable flag.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ", ") }
func (r *repeated) Set(s string) error { *r = append(*r, s); return nil }

func load(ctx context.Context, mode string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var targets, requires repeated
	fs.Var(&targets, "target", "server to load: ADDRESS:PORT, NAME=addr:ADDRESS:PORT, NAME=exec:COMMAND (with {port} and {addr:NAME}), or NAME=chronyd; repeat for compare")
	start := fs.Float64("start", 20000, "ramp: first rate, requests/s")
	multiplier := fs.Float64("multiplier", 1.5, "ramp: rate multiplier per step")
	maxRate := fs.Float64("max", 2e6, "ramp: highest rate, requests/s")
	stepDuration := fs.Duration("step", 2*time.Second, "duration of each rate step")
	maxLoss := fs.Float64("max-loss", 20, "ramp: stop after a step losing more than this percentage")
	rate := fs.Float64("rate", 50000, "fixed: requests/s")
	duration := fs.Duration("duration", 10*time.Second, "fixed: how long to hold the rate")
	rounds := fs.Int("rounds", 3, "compare: rounds of every target, interleaved")
	fixedRate := fs.Float64("fixed-rate", 0, "compare: also run each target at this common rate to measure CPU per response (0: no)")
	clients := fs.Int("clients", 32, "simulated clients (sockets), spread over 127.0.0.1-127.0.0.4 on loopback")
	batchSize := fs.Int("batch", 32, "requests per send call")
	clientIO := fs.String("client-io", "portable", "clients' socket I/O: portable (x/net, one poller for all sockets) or fast (a blocking thread per socket)")
	benchCPUs := fs.String("bench-cpus", "", "pin the generator to these CPUs (taskset list, e.g. 0)")
	targetCPUs := fs.String("target-cpus", "", "pin started servers to these CPUs (e.g. 1)")
	quota := fs.Float64("target-cpu-quota", 0, "limit each started server to this fraction of a CPU with a cgroup (e.g. 0.5)")
	allowRemote := fs.Bool("allow-remote", false, "allow servers that are not on this host")
	asJSON := fs.Bool("json", false, "print steps as JSON lines")
	asCSV := fs.Bool("csv", false, "print steps as CSV")
	plotPath := fs.String("plot", "", "draw response rate against request rate into this .png or .svg file")
	jsonOut := fs.String("json-out", "", "compare: write the steps and summaries to this JSON file")
	fs.Var(&requires, "require-ahead", "compare: NAME=RATIO fails unless the first target's median peak is at least RATIO times NAME's")
	timeout := fs.Duration("timeout", 15*time.Minute, "stop everything after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if len(targets) == 0 || (mode != "compare" && len(targets) > 1) {
		return usageError{fmt.Errorf("%s takes %s --target", mode, map[bool]string{true: "one or more", false: "one"}[mode == "compare"])}
	}
	if *asJSON && *asCSV {
		return usageError{errors.New("--json and --csv exclude each other")}
	}
	var specs []bench.TargetSpec
	for i, t := range targets {
		if ap, err := netip.ParseAddrPort(t); err == nil {
			t = fmt.Sprintf("server%d=addr:%s", i+1, ap)
		}
		spec, err := bench.ParseTargetSpec(t)
		if err != nil {
			return usageError{err}
		}
		specs = append(specs, spec)
	}
	checks, err := parseRequires(requires, specs)
	if err != nil {
		return usageError{err}
	}
	clientPath, err := batch.ParsePath(*clientIO)
	if err != nil {
		return usageError{fmt.Errorf("--client-io: %w", err)}
	}
	ramp := bench.RampConfig{Start: *start, Multiplier: *multiplier, Max: *maxRate, StepDuration: *stepDuration, MaxLossPercent: *maxLoss}
	flood := bench.FloodConfig{Clients: *clients, BatchSize: *batchSize, AllowRemote: *allowRemote, Path: clientPath}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *benchCPUs != "" {
		if err := pinSelf(*benchCPUs); err != nil {
			return err
		}
	}
	started, err := bench.StartTargets(ctx, specs, bench.StartOptions{CPUs: *targetCPUs, CPUQuota: *quota, AllowRemote: *allowRemote})
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
	case *asJSON:
		format = bench.JSON
	case *asCSV:
		format = bench.CSV
	}
	out := bench.NewStepWriter(stdout, format)
	var steps []bench.Step
	record := func(s bench.Step) {
		out.Write(s)
		steps = append(steps, s)
	}
	var summaries []bench.Summary
	switch mode {
	case "ramp", "fixed":
		t := started[0]
		flood.Target, flood.TargetPID = t.Addr, t.PID
		f, err := bench.NewFlooder(flood)
		if err != nil {
			return err
		}
		defer f.Close()
		if mode == "ramp" {
			ramp.OnStep = func(s bench.Step) { s.Target = t.Name; record(s) }
			_, err = f.Ramp(ctx, ramp)
		} else {
			var s bench.Step
			s, err = f.Run(ctx, *rate, *duration)
			s.Target = t.Name
			record(s)
		}
		if err != nil {
			return err
		}
	case "compare":
		summaries, _, err = bench.Compare(ctx, started, bench.CompareConfig{
			Rounds: *rounds, Ramp: ramp, FixedRate: *fixedRate, FixedDuration: *stepDuration,
			Flood: flood, OnStep: record,
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout)
		if err := bench.WriteSummaries(stdout, summaries); err != nil {
			return err
		}
	}
	if *plotPath != "" {
		if err := bench.Plot(*plotPath, "fastntp-bench "+mode, steps); err != nil {
			return err
		}
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(struct {
			Summaries []bench.Summary `json:"summaries,omitempty"`
			Steps     []bench.Step    `json:"steps"`
		}{summaries, steps}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return checkRequires(stdout, checks, summaries)
}

type requirement struct {
	name  string
	ratio float64
}

func parseRequires(requires []string, specs []bench.TargetSpec) ([]requirement, error) {
	var reqs []requirement
	for _, r := range requires {
		name, value, ok := strings.Cut(r, "=")
		ratio, err := strconv.ParseFloat(value, 64)
		if !ok || err != nil || ratio <= 0 {
			return nil, fmt.Errorf("--require-ahead %q: want NAME=RATIO", r)
		}
		found := false
		for _, s := range specs[1:] {
			found = found || s.Name == name
		}
		if !found {
			return nil, fmt.Errorf("--require-ahead %q: no target after the first is named %s", r, name)
		}
		reqs = append(reqs, requirement{name, ratio})
	}
	return reqs, nil
}

// checkRequires compares the first target against the named ones.
func checkRequires(w io.Writer, reqs []requirement, summaries []bench.Summary) error {
	var failed []string
	for _, r := range reqs {
		for _, s := range summaries {
			if s.Target != r.name {
				continue
			}
			got := summaries[0].PeakResponse / s.PeakResponse
			verdict := "ok"
			if !(got >= r.ratio) {
				verdict = "FAIL"
				failed = append(failed, fmt.Sprintf("%s is %.2fx %s, below the required %.2fx", summaries[0].Target, got, r.name, r.ratio))
			}
			fmt.Fprintf(w, "check: %s / %s = %.2fx (required %.2fx): %s\n", summaries[0].Target, r.name, got, r.ratio, verdict)
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

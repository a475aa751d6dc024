// Command fastntp is a multi-threaded NTP server that serves the system
// clock with the synchronization state of a local chronyd, which it polls
// over NTP. It takes rsntp's options with the same meanings and defaults.
//
// Usage:
//
//	fastntp [options]
//
// See fastntp -h for the options.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/responder"
	"github.com/fastntp/fastntp/upstream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the parsed command line.
type options struct {
	ipv4Threads, ipv6Threads  int
	ipv4Address, ipv6Address  netip.AddrPort
	explicitIPv6              bool
	server                    netip.AddrPort
	user, root                string
	debug                     bool
	batchSize                 int
	path                      batch.Path
	pollInterval, maxAge      time.Duration
	maxOffset                 time.Duration
	receiveBuffer, sendBuffer int
	logFormat                 string
	statsInterval             time.Duration
	showVersion               bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("fastntp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// rsntp's options, each under its short and its long name.
	shortOf := map[string]string{}
	both := func(short, long string, f func(name string)) {
		f(short)
		f(long)
		shortOf[long] = short
	}
	var ipv4Address, ipv6Address, server, path string
	both("4", "ipv4-threads", func(n string) { fs.IntVar(&o.ipv4Threads, n, 1, "number of IPv4 `threads` (0 disables IPv4)") })
	both("6", "ipv6-threads", func(n string) { fs.IntVar(&o.ipv6Threads, n, 1, "number of IPv6 `threads` (0 disables IPv6)") })
	both("a", "ipv4-address", func(n string) { fs.StringVar(&ipv4Address, n, "0.0.0.0:123", "IPv4 `address:port` to serve") })
	both("b", "ipv6-address", func(n string) { fs.StringVar(&ipv6Address, n, "[::]:123", "IPv6 `[address]:port` to serve") })
	both("s", "server-address", func(n string) {
		fs.StringVar(&server, n, "127.0.0.1:11123", "`address:port` of the backend NTP server (chronyd)")
	})
	both("u", "user", func(n string) { fs.StringVar(&o.user, n, "", "run as `user` after binding the sockets") })
	both("r", "root", func(n string) { fs.StringVar(&o.root, n, "", "chroot to `directory` after binding the sockets") })
	both("d", "debug", func(n string) { fs.BoolVar(&o.debug, n, false, "log debug messages, including one per request") })
	fs.IntVar(&o.batchSize, "batch-size", batch.DefaultBatchSize, "most datagrams moved per system call (1 disables batching)")
	fs.StringVar(&path, "io-path", "auto", "socket I/O: fast (recvmmsg/sendmmsg, Linux), portable (x/net), or auto")
	fs.DurationVar(&o.pollInterval, "poll-interval", time.Second, "interval between polls of the backend")
	fs.DurationVar(&o.maxAge, "max-age", 4*time.Second, "serve unsynchronized replies once the last valid backend answer is this old")
	fs.DurationVar(&o.maxOffset, "max-offset", 10*time.Millisecond, "serve unsynchronized replies while the backend's clock differs from the system clock by more")
	fs.IntVar(&o.receiveBuffer, "receive-buffer", 4<<20, "socket receive buffer `bytes` per thread (0 keeps the kernel default)")
	fs.IntVar(&o.sendBuffer, "send-buffer", 0, "socket send buffer `bytes` per thread (0 keeps the kernel default)")
	fs.StringVar(&o.logFormat, "log-format", "console", "log format: console or json")
	fs.DurationVar(&o.statsInterval, "stats-interval", time.Minute, "interval between rate summaries in the log (0 disables them)")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: fastntp [options]\n\n"+
			"Serve NTP with the synchronization state of a local chronyd.\n"+
			"Options take one or two dashes; rsntp's take their short forms too.\n\n")
		printOptions(fs, shortOf)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "6", "ipv6-threads", "b", "ipv6-address":
			o.explicitIPv6 = true
		}
	})

	var err error
	if o.ipv4Address, err = parseAddress(ipv4Address, false); err != nil {
		return nil, fmt.Errorf("-a/--ipv4-address: %w", err)
	}
	if o.ipv6Address, err = parseAddress(ipv6Address, true); err != nil {
		return nil, fmt.Errorf("-b/--ipv6-address: %w", err)
	}
	if o.server, err = netip.ParseAddrPort(server); err != nil {
		return nil, fmt.Errorf("-s/--server-address: %w", err)
	}
	if o.path, err = batch.ParsePath(path); err != nil {
		return nil, fmt.Errorf("--io-path: %w", err)
	}
	switch {
	case o.ipv4Threads < 0 || o.ipv4Threads > 1024:
		return nil, fmt.Errorf("-4/--ipv4-threads: %d is out of range 0..1024", o.ipv4Threads)
	case o.ipv6Threads < 0 || o.ipv6Threads > 1024:
		return nil, fmt.Errorf("-6/--ipv6-threads: %d is out of range 0..1024", o.ipv6Threads)
	case o.ipv4Threads == 0 && o.ipv6Threads == 0:
		return nil, errors.New("both IPv4 and IPv6 are disabled: nothing to serve")
	case o.batchSize < 1 || o.batchSize > 1024:
		return nil, fmt.Errorf("--batch-size: %d is out of range 1..1024", o.batchSize)
	case o.pollInterval <= 0:
		return nil, fmt.Errorf("--poll-interval: %v is not positive", o.pollInterval)
	case o.maxAge < o.pollInterval:
		return nil, fmt.Errorf("--max-age: %v is shorter than the poll interval %v", o.maxAge, o.pollInterval)
	case o.maxOffset <= 0:
		return nil, fmt.Errorf("--max-offset: %v is not positive", o.maxOffset)
	case o.receiveBuffer < 0 || o.sendBuffer < 0:
		return nil, errors.New("--receive-buffer and --send-buffer must not be negative")
	case o.logFormat != "console" && o.logFormat != "json":
		return nil, fmt.Errorf("--log-format: %q is neither console nor json", o.logFormat)
	case o.statsInterval < 0:
		return nil, fmt.Errorf("--stats-interval: %v is negative", o.statsInterval)
	}
	return o, nil
}

// printOptions lists the options as PrintDefaults does, but with each
// short alias beside its long name rather than as an option of its own.
func printOptions(fs *flag.FlagSet, shortOf map[string]string) {
	isShort := map[string]bool{}
	for _, short := range shortOf {
		isShort[short] = true
	}
	fs.VisitAll(func(f *flag.Flag) {
		if isShort[f.Name] {
			return
		}
		names := "--" + f.Name
		if short, ok := shortOf[f.Name]; ok {
			names = "-" + short + ", " + names
		}
		arg, usage := flag.UnquoteUsage(f)
		if arg != "" {
			names += " " + arg
		}
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(fs.Output(), "  %s\n    \t%s\n", names, usage)
	})
}

// parseAddress parses an address of the given family.
func parseAddress(s string, v6 bool) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, err
	}
	if ap.Addr().Is4() == v6 || ap.Addr().Is4In6() {
		family := "IPv4"
		if v6 {
			family = "IPv6"
		}
		return ap, fmt.Errorf("%s is not an %s address", s, family)
	}
	return ap, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "fastntp: %v\n", err)
		return 2
	}
	if o.showVersion {
		fmt.Fprintf(stdout, "fastntp %s\n", buildVersion())
		return 0
	}
	logger, err := newLogger(o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "fastntp: %v\n", err)
		return 1
	}
	defer logger.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, o, logger); err != nil {
		logger.Error("fastntp stopped", zap.Error(err))
		return 1
	}
	return 0
}

func newLogger(o *options, w io.Writer) (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if o.debug {
		level = zapcore.DebugLevel
	}
	encoding := zap.NewProductionEncoderConfig()
	encoding.EncodeTime = zapcore.ISO8601TimeEncoder
	encoding.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if o.logFormat == "json" {
		enc = zapcore.NewJSONEncoder(encoding)
	} else {
		encoding.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encoding)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)), nil
}

// serve runs fastntp until ctx is done.
func serve(ctx context.Context, o *options, logger *zap.Logger) error {
	poller, err := upstream.New(upstream.Config{
		Server:    o.server,
		Interval:  o.pollInterval,
		MaxAge:    o.maxAge,
		MaxOffset: o.maxOffset,
		Logger:    logger,
	})
	if err != nil {
		return err
	}
	srv, err := responder.Listen(responder.Config{
		Listeners: []responder.Listener{
			{Address: o.ipv4Address, Workers: o.ipv4Threads},
			{Address: o.ipv6Address, Workers: o.ipv6Threads, Optional: !o.explicitIPv6},
		},
		Source:        poller,
		Path:          o.path,
		BatchSize:     o.batchSize,
		ReceiveBuffer: o.receiveBuffer,
		SendBuffer:    o.sendBuffer,
		Logger:        logger,
	})
	if err != nil {
		return err
	}
	logStart(logger, o, srv)
	if err := dropPrivileges(o.user, o.root); err != nil {
		return fmt.Errorf("drop privileges: %w", err)
	}
	if o.user != "" || o.root != "" {
		logger.Info("dropped privileges", zap.String("user", o.user), zap.String("root", o.root),
			zap.Int("uid", os.Getuid()), zap.Int("gid", os.Getgid()))
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var pollErr error
	wg.Go(func() {
		if err := poller.Run(ctx); !errors.Is(err, context.Canceled) {
			pollErr = err
			cancel()
		}
	})
	if o.statsInterval > 0 {
		wg.Go(func() { logRates(ctx, logger, srv, poller, o.statsInterval) })
	}
	srv.Serve(ctx)
	cancel()
	wg.Wait()
	logger.Info("stopped", countersFields(srv.Counters())...)
	return pollErr
}

func logStart(logger *zap.Logger, o *options, srv *responder.Server) {
	sockets := srv.Sockets()
	addrs := make([]string, 0, len(sockets))
	for _, s := range srv.Addrs() {
		addrs = append(addrs, s.String())
	}
	logger.Info("fastntp started",
		zap.String("version", buildVersion()),
		zap.Strings("addresses", addrs),
		zap.Int("ipv4_threads", o.ipv4Threads),
		zap.Int("ipv6_threads", o.ipv6Threads),
		zap.Stringer("io_path", sockets[0].Path),
		zap.Int("batch_size", o.batchSize),
		zap.Stringer("backend", o.server),
		zap.Duration("poll_interval", o.pollInterval),
		zap.Duration("max_age", o.maxAge),
		zap.Duration("max_offset", o.maxOffset))
	// What the kernel granted, once per address: every socket of an address
	// is opened alike.
	for i, s := range sockets {
		if i > 0 && sockets[i-1].Address == s.Address {
			continue
		}
		logger.Info("socket",
			zap.Stringer("address", s.Address),
			zap.Int("receive_buffer", s.ReceiveBuffer),
			zap.Int("send_buffer", s.SendBuffer),
			zap.Bool("kernel_timestamps", s.Timestamps),
			zap.Bool("packet_info", s.PacketInfo))
		if !s.Timestamps {
			logger.Warn("no kernel receive timestamps; receive times are read after each receive call", zap.Stringer("address", s.Address))
		}
		if o.receiveBuffer > 0 && s.ReceiveBuffer < o.receiveBuffer {
			logger.Warn("kernel granted a smaller receive buffer than asked (raise net.core.rmem_max or grant CAP_NET_ADMIN)",
				zap.Stringer("address", s.Address), zap.Int("asked", o.receiveBuffer), zap.Int("granted", s.ReceiveBuffer))
		}
	}
}

// logRates logs one line of rates per interval until ctx is done.
func logRates(ctx context.Context, logger *zap.Logger, srv *responder.Server, src responder.Source, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	prev, prevTime := srv.Counters(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			cur := srv.Counters()
			secs := now.Sub(prevTime).Seconds()
			rate := func(a, b uint64) float64 { return float64(a-b) / secs }
			snap := src.Load()
			logger.Info("rates",
				zap.Float64("received_per_s", rate(cur.Received, prev.Received)),
				zap.Float64("replied_per_s", rate(cur.Replied, prev.Replied)),
				zap.Float64("dropped_per_s", rate(cur.Dropped(), prev.Dropped())),
				zap.Uint64("send_errors", cur.SendErrors-prev.SendErrors),
				zap.Uint64("missing_timestamps", cur.MissingTimestamps-prev.MissingTimestamps),
				zap.Uint64("kernel_drops", cur.KernelDrops-prev.KernelDrops),
				zap.Bool("synchronized", snap.Valid(now)))
			prev, prevTime = cur, now
		}
	}
}

func countersFields(c responder.Counters) []zap.Field {
	return []zap.Field{
		zap.Uint64("received", c.Received),
		zap.Uint64("replied", c.Replied),
		zap.Uint64("dropped_short", c.DroppedShort),
		zap.Uint64("dropped_format", c.DroppedFormat),
		zap.Uint64("dropped_version", c.DroppedVersion),
		zap.Uint64("dropped_mode", c.DroppedMode),
		zap.Uint64("dropped_authenticated", c.DroppedAuth),
		zap.Uint64("dropped_truncated", c.DroppedTruncated),
		zap.Uint64("dropped_source_port", c.DroppedSourcePort),
		zap.Uint64("send_errors", c.SendErrors),
		zap.Uint64("read_errors", c.ReadErrors),
		zap.Uint64("missing_timestamps", c.MissingTimestamps),
		zap.Uint64("control_truncations", c.ControlTruncations),
		zap.Uint64("kernel_drops", c.KernelDrops),
	}
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" {
		return info.Main.Version
	}
	return "(devel)"
}

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
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
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

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args)
	if err != nil {
		fmt.Fprintf(stderr, "fastntp: %v\nRun 'fastntp --help' for the options.\n", err)
		return 2
	}
	if o.help {
		fmt.Fprint(stdout, usage())
		return 0
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
	// A log reader that went away must not kill the server: without this, a
	// write to a closed stdout or stderr ends the process with SIGPIPE,
	// which systemd counts as a clean exit and does not restart.
	signal.Ignore(syscall.SIGPIPE)
	// SIGHUP (a closed terminal, systemctl reload) logs the status instead
	// of ending the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, o, logger, hup); err != nil {
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

// serve runs fastntp until ctx is done or a part of it fails, and logs the
// status at each value from hup.
func serve(ctx context.Context, o *options, logger *zap.Logger, hup <-chan os.Signal) error {
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
	var access *responder.AccessList
	if len(o.access) > 0 {
		if access, err = responder.NewAccessList(o.access); err != nil {
			return err
		}
	}
	srv, err := responder.Listen(responder.Config{
		Listeners: []responder.Listener{
			{Address: o.ipv4Address, Workers: o.ipv4Threads},
			{Address: o.ipv6Address, Workers: o.ipv6Threads, Optional: !o.explicitIPv6},
		},
		Source:         poller,
		Path:           o.path,
		BatchSize:      o.batchSize,
		ReceiveBuffer:  o.receiveBuffer,
		SendBuffer:     o.sendBuffer,
		Logger:         logger,
		RateLimit:      o.rateLimit,
		Access:         access,
		TransmitStamps: o.transmitStamps,
		FastPath:       fastPath(o),
		// The check of device stamps runs with the rate summary, or once
		// a minute without one.
		StampCheckInterval: o.statsInterval,
	})
	if err != nil {
		return err
	}
	reserveProcs(srv)
	var monitorListener net.Listener
	if o.metricsAddress.IsValid() {
		// Bound before privileges are dropped, like the NTP sockets.
		if monitorListener, err = listenMonitor(o.metricsAddress); err != nil {
			srv.Close()
			return err
		}
	}
	logStart(logger, o, srv)
	// Bound and attached: nothing from here on needs a privilege.
	if err := dropPrivileges(o.user, o.root); err != nil {
		srv.Close()
		return fmt.Errorf("drop privileges: %w", err)
	}
	if o.user != "" || o.root != "" {
		logger.Info("dropped privileges", zap.String("user", o.user), zap.String("root", o.root),
			zap.Int("uid", os.Getuid()), zap.Int("gid", os.Getgid()))
	}
	if os.Geteuid() == 0 {
		logger.Warn("running as root: a flaw in fastntp would hand the attacker the machine; " +
			"start it with -u USER (and -r DIR), or as a user with CAP_NET_BIND_SERVICE as its systemd unit (fastntp.service) does")
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
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				logger.Info("status", statusFields(srv, poller)...)
			}
		}
	})
	var monitorErr error
	if monitorListener != nil {
		wg.Go(func() {
			if monitorErr = serveMonitor(ctx, monitorListener, srv, poller); monitorErr != nil {
				cancel()
			}
		})
		logger.Info("serving metrics and health", zap.String("address", "http://"+o.metricsAddress.String()),
			zap.Strings("paths", []string{"/metrics", "/healthz"}))
	}
	wg.Go(func() { feedWatchdog(ctx, srv, logger) })
	notifyReady(logger)
	serveErr := srv.Serve(ctx)
	notifyStopping()
	cancel()
	wg.Wait()
	logger.Info("stopped", countersFields(srv.Counters())...)
	return errors.Join(serveErr, pollErr, monitorErr)
}

// reserveProcs gives the Go scheduler one P more than there are workers on
// the blocking I/O path. Each such worker keeps its P while it blocks in
// recvmmsg; with no P left over, the poller, the timers and the signal
// handler would wait for the runtime's monitor (sysmon) to take one back,
// which it does when it next wakes, up to 10 ms later, or which keeps it
// waking every 20 µs, at a cost in CPU that a quiet server notices. An
// operator's GOMAXPROCS is left alone.
func reserveProcs(srv *responder.Server) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	blocking := 0
	for _, s := range srv.Sockets() {
		if s.Path == batch.PathFast {
			blocking++
		}
	}
	if want := blocking + 1; blocking > 0 && runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}

// transmitStamps says where replies are stamped, for the start-up log.
func transmitStamps(srv *responder.Server) string {
	if devices := srv.StampDevices(); devices != nil {
		return "at the device (" + strings.Join(devices, ", ") + ")"
	}
	return "before each send"
}

// statusFields describe the synchronization state and the counters.
func statusFields(srv *responder.Server, src responder.Source) []zap.Field {
	fields := syncFields(src.Load(), time.Now())
	return append(fields, countersFields(srv.Counters())...)
}

// syncFields describe the state served at now: synchronized, with the
// backend's measured offset, or why not.
func syncFields(snap *upstream.Snapshot, now time.Time) []zap.Field {
	synchronized, cause, reason := snap.Status(now)
	if synchronized {
		return []zap.Field{zap.Bool("synchronized", true), zap.Duration("offset", snap.Offset), zap.Duration("delay", snap.Delay)}
	}
	return []zap.Field{zap.Bool("synchronized", false), zap.Stringer("cause", cause), zap.String("reason", reason)}
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
		zap.String("transmit_stamps", transmitStamps(srv)),
		zap.Int("gomaxprocs", runtime.GOMAXPROCS(0)),
		zap.Int("batch_size", o.batchSize),
		zap.Stringer("backend", o.server),
		zap.Duration("poll_interval", o.pollInterval),
		zap.Duration("max_age", o.maxAge),
		zap.Duration("max_offset", o.maxOffset),
		zap.Int("access_rules", len(o.access)))
	if r := o.rateLimit; r != nil {
		logger.Info("rate limiting",
			zap.Int("interval", r.Interval),
			zap.Int("burst", r.Burst),
			zap.Int("leak", r.Leak),
			zap.Int("kod", r.KoD),
			zap.Int("memory", r.Memory))
	}
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
		// Both sizes are usable bytes: batch halves what Linux reports.
		if o.receiveBuffer > 0 && s.ReceiveBuffer < o.receiveBuffer {
			logger.Warn("kernel granted a smaller receive buffer than asked (raise net.core.rmem_max or grant CAP_NET_ADMIN)",
				zap.Stringer("address", s.Address), zap.Int("asked", o.receiveBuffer), zap.Int("granted", s.ReceiveBuffer))
		}
		if o.sendBuffer > 0 && s.SendBuffer < o.sendBuffer {
			logger.Warn("kernel granted a smaller send buffer than asked (raise net.core.wmem_max or grant CAP_NET_ADMIN)",
				zap.Stringer("address", s.Address), zap.Int("asked", o.sendBuffer), zap.Int("granted", s.SendBuffer))
		}
	}
}

// logRates logs one line of rates per interval until ctx is done.
func logRates(ctx context.Context, logger *zap.Logger, srv *responder.Server, src responder.Source, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	prev, prevTime := srv.Counters(), time.Now()
	prevStamps, _ := srv.DeviceStamps()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			cur := srv.Counters()
			secs := now.Sub(prevTime).Seconds()
			rate := func(a, b uint64) float64 { return perSecond(a-b, secs) }
			fields := []zap.Field{
				zap.Float64("received_per_s", rate(cur[responder.Received], prev[responder.Received])),
				zap.Float64("replied_per_s", rate(cur[responder.Replied], prev[responder.Replied])),
				zap.Float64("dropped_per_s", rate(cur.Dropped(), prev.Dropped())),
				// The drops of the operator's policy, also in dropped_per_s.
				zap.Float64("denied_per_s", rate(cur[responder.DroppedDenied], prev[responder.DroppedDenied])),
				zap.Float64("rate_limited_per_s", rate(cur[responder.DroppedRateLimited], prev[responder.DroppedRateLimited])),
				zap.Float64("kod_sent_per_s", rate(cur[responder.KoDSent], prev[responder.KoDSent])),
				zap.Uint64("client_records_evicted", cur[responder.ClientEvictions]-prev[responder.ClientEvictions]),
				zap.Uint64("send_errors", cur[responder.SendErrors]-prev[responder.SendErrors]),
				zap.Uint64("missing_timestamps", cur[responder.MissingTimestamps]-prev[responder.MissingTimestamps]),
				zap.Uint64("kernel_drops", cur[responder.KernelDrops]-prev[responder.KernelDrops]),
			}
			stamps, atDevice := srv.DeviceStamps()
			if atDevice {
				fields = append(fields, zap.Float64("device_stamped_per_s", rate(stamps.Stamped, prevStamps.Stamped)))
			}
			logger.Info("rates", append(fields, syncFields(src.Load(), now)...)...)
			prev, prevStamps, prevTime = cur, stamps, now
		}
	}
}

// perSecond returns n events over secs seconds as a rate, to a tenth of an
// event per second: more digits than that are the jitter of the ticker.
func perSecond(n uint64, secs float64) float64 {
	return math.Round(float64(n)/secs*10) / 10
}

// countersFields renders every counter as a log field.
func countersFields(c responder.Counters) []zap.Field {
	fields := make([]zap.Field, 0, responder.NumCounters)
	for k := range responder.NumCounters {
		fields = append(fields, zap.Uint64(k.String(), c[k]))
	}
	return fields
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

// fastPath returns the fast path the options ask for, or nil.
func fastPath(o *options) *responder.FastPath {
	if len(o.xdpDevices) == 0 {
		return nil
	}
	return &responder.FastPath{Devices: o.xdpDevices, Mode: o.xdpMode}
}

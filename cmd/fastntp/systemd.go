package main

import (
	"context"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// fastntp speaks systemd's notify protocol through go-systemd's daemon
// package, which does what the protocol needs (the socket's abstract and
// path forms, the watchdog's PID check) and nothing else. Without systemd
// (no NOTIFY_SOCKET) every call is a no-op.

// notifyReady tells systemd that fastntp serves: its sockets are bound.
func notifyReady(logger *zap.Logger) {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		logger.Warn("could not tell systemd that fastntp is ready", zap.Error(err))
	}
}

// notifyStopping tells systemd that fastntp is shutting down.
func notifyStopping() {
	daemon.SdNotify(false, daemon.SdNotifyStopping)
}

// workerCount is what the watchdog asks of a server: *responder.Server.
type workerCount interface {
	Running() int
	Size() int
}

// feedWatchdog keeps systemd's watchdog (WatchdogSec=) fed, twice per
// period, for as long as every worker of srv is serving and until ctx is
// done. A worker that stopped, or a process too wedged to run this loop,
// lets the watchdog fire and systemd restart fastntp.
func feedWatchdog(ctx context.Context, srv workerCount, logger *zap.Logger) {
	period, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		logger.Warn("systemd watchdog settings unreadable", zap.Error(err))
		return
	}
	if period <= 0 {
		return
	}
	ticker := time.NewTicker(period / 2)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if running, want := srv.Running(), srv.Size(); running != want {
				logger.Error("not feeding systemd's watchdog: workers stopped",
					zap.Int("running", running), zap.Int("workers", want))
				continue
			}
			daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}

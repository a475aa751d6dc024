package responder

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fastntp/fastntp/responder/egress"
)

// DeviceStamps returns the device stamper's counts since start, and false
// when replies are not stamped at the device.
func (s *Server) DeviceStamps() (egress.Counts, bool) {
	if s.stamper == nil || !s.deviceStamps.Load() {
		return egress.Counts{}, false
	}
	c, err := s.stamper.Counts()
	if err != nil {
		return egress.Counts{}, false
	}
	return c, true
}

// The stamp check: stamping at the device can stop without an error, when
// another program ahead of fastntp's on a device ends the chain, or when
// replies leave through a device the program is not on, and the replies
// then carry stamps read before the send. Each interval, the replies the
// program stamped are compared with those the workers sent.
const (
	// minStampedShare is the least share of the replies sent in an
	// interval that must be stamped at the device.
	minStampedShare = 0.99
	// minJudged is the least number of replies an interval needs to be
	// judged: on a quiet server the replies of one batch, counted by the
	// program in one interval and by the worker in the next, would be
	// more than 1% of them.
	minJudged = 100
	// defaultStampCheck is the interval when the configuration gives none.
	defaultStampCheck = time.Minute
)

// stampVerdict is the stamp check's judgement of one interval.
type stampVerdict struct {
	judged bool // enough replies were sent to judge
	short  bool // fewer than minStampedShare of them were stamped
	// notSeen replies never reached the program; unsure and
	// checksumFailed reached it and were left alone.
	notSeen, unsure, checksumFailed uint64
}

// judgeStamps judges an interval in which the workers sent sent replies and
// the program counted seen.
func judgeStamps(sent uint64, seen egress.Counts) stampVerdict {
	v := stampVerdict{judged: sent >= minJudged, unsure: seen.Unsure, checksumFailed: seen.ChecksumFailed}
	if reached := seen.Stamped + seen.Unsure + seen.ChecksumFailed; reached < sent {
		v.notSeen = sent - reached
	}
	v.short = v.judged && float64(seen.Stamped) < minStampedShare*float64(sent)
	return v
}

// cause names the likely causes of a shortfall, the commonest first.
func (v stampVerdict) cause(refused []string) string {
	type part struct {
		n    uint64
		text string
	}
	var parts []part
	if v.notSeen > 0 {
		text := "replies never reached the program: another eBPF program ahead of fastntp's on a device's egress (TCX) ends the chain (list them with bpftool net), or replies leave through a device the program is not attached to"
		if len(refused) > 0 {
			text += " (refused by " + strings.Join(refused, ", ") + ")"
		}
		parts = append(parts, part{v.notSeen, text})
	}
	if v.unsure > 0 {
		parts = append(parts, part{v.unsure, "the program's clock disagreed with the stamps read before the send by more than " +
			egress.Guard.String() + ", and not by whole seconds (a changed TAI offset, which it corrects): the system clock was stepped, or the packets carry a trailer"})
	}
	if v.checksumFailed > 0 {
		parts = append(parts, part{v.checksumFailed, "the kernel refused to adjust the UDP checksum"})
	}
	slices.SortStableFunc(parts, func(a, b part) int { return cmp.Compare(b.n, a.n) })
	texts := make([]string, len(parts))
	for i, p := range parts {
		texts[i] = fmt.Sprintf("%d %s", p.n, p.text)
	}
	return strings.Join(texts, "; ")
}

// sent returns how many replies the workers have sent.
func (s *Server) sent() uint64 {
	c := s.Counters()
	return c[Replied] + c[KoDSent]
}

// watchDeviceStamps runs the stamp check every interval until ctx is done,
// and warns once when stamping at the device falls short, then once more
// only after it has recovered.
func (s *Server) watchDeviceStamps(ctx context.Context, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	// The workers' count is read before the program's, so that a reply
	// counted by the worker has been counted by the program too.
	prevSent := s.sent()
	prev, err := s.stamper.Counts()
	if err != nil {
		return
	}
	short := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if !s.deviceStamps.Load() {
			return
		}
		sent := s.sent()
		cur, err := s.stamper.Counts()
		if err != nil {
			return
		}
		delta := egress.Counts{
			Stamped:        cur.Stamped - prev.Stamped,
			Corrected:      cur.Corrected - prev.Corrected,
			Unsure:         cur.Unsure - prev.Unsure,
			ChecksumFailed: cur.ChecksumFailed - prev.ChecksumFailed,
		}
		v := judgeStamps(sent-prevSent, delta)
		switch {
		case v.short && !short:
			s.cfg.Logger.Warn("fewer than 99% of the replies were stamped at the device; the others carry the stamp read before the send",
				zap.Uint64("sent", sent-prevSent), zap.Uint64("stamped", delta.Stamped),
				zap.String("likely_cause", v.cause(s.stamper.Refused())))
		case v.judged && !v.short && short:
			s.cfg.Logger.Info("replies are stamped at the device again")
		}
		if v.judged {
			short = v.short
		}
		prevSent, prev = sent, cur
	}
}

// logStamperEvent logs what the device stamper reports.
func (s *Server) logStamperEvent(e egress.Event) {
	switch e.Kind {
	case egress.Attached:
		s.cfg.Logger.Info("stamping replies at a new device", zap.String("device", e.Device))
	case egress.Refused:
		s.cfg.Logger.Warn("replies through this device carry the stamp read before the send: it refused the stamper",
			zap.String("device", e.Device), zap.Error(e.Err))
	case egress.WatchFailed:
		s.cfg.Logger.Warn("cannot follow the kernel's announcements of new devices, which get no stamper until it can; trying again",
			zap.Error(e.Err))
	case egress.WatchResumed:
		s.cfg.Logger.Info("following the kernel's announcements of new devices again")
	}
}

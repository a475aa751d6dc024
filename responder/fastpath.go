package responder

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/fastntp/fastntp/responder/xdp"
)

// FastPath asks for the XDP fast path (package xdp) beside the sockets: a
// program at the named devices' drivers that answers the requests the
// socket path answers with its plain reply, under the same access rules
// and rate limit, and passes everything else on to the sockets.
type FastPath struct {
	Devices []string
	Mode    xdp.Mode
}

// FastPathStats are the fast path's counters, by address family, in the
// server's terms: Received, Replied, KoDSent, DroppedDenied,
// DroppedRateLimited and ClientEvictions. Passed counts the frames the
// program passed on to the kernel's stack, by reason; those that reach a
// socket are counted again there.
type FastPathStats struct {
	// Attached is false once the program was detached, after a failure
	// or as the server stopped; the counts are then those it had.
	Attached   bool
	Devices    []xdp.Device
	IPv4, IPv6 Counters
	Passed     [xdp.NumPassReasons]uint64
}

// attachFastPath loads and attaches the program, for the addresses the
// sockets were bound to. memory is the rate limit's share for it.
func (s *Server) attachFastPath(memory int) error {
	fp := s.cfg.FastPath
	if !xdp.Available {
		return errors.New("responder: the XDP fast path needs Linux")
	}
	cfg := xdp.Config{Devices: fp.Devices, Mode: fp.Mode, Served: s.Addrs(), MinPoll: minPoll}
	if l := s.cfg.Access; l != nil {
		cfg.Access = []xdp.AccessRule{}
		for prefix, allow := range l.table.All() {
			cfg.Access = append(cfg.Access, xdp.AccessRule{Prefix: prefix, Allow: allow})
		}
		cfg.DefaultAllow = l.defaultAllow
	}
	if r := s.cfg.RateLimit; r != nil {
		var t clientTable
		t.setBucket(r.Interval, r.Burst)
		// The workers' floor: minPoll raised to the interval.
		cfg.MinPoll = int8(r.Interval)
		cfg.RateLimit = &xdp.RateLimit{
			TokensPerHit:    t.tokensPerHit,
			MaxTokens:       t.maxTokens,
			TokenShift:      int8(t.tokenShift),
			Leak:            uint8(r.Leak),
			KoD:             uint8(r.KoD),
			TimestampOffset: time.Duration(rand.Uint32N(1e9 >> tsFrac)),
			Slots:           memory / (xdp.SlotRecords * xdp.RecordSize),
			HashSeed:        rand.Uint64(),
		}
	}
	p, err := xdp.Attach(cfg)
	if err != nil {
		return fmt.Errorf("responder: %w", err)
	}
	s.fastPath = p
	for _, d := range p.Devices() {
		// Said at every start: an operator's firewall rules no longer see
		// what the program answers.
		s.cfg.Logger.Warn("answering NTP requests at the device's driver (XDP), ahead of the host's firewall: nftables and iptables rules do not see them; --allow, --deny and --ratelimit apply",
			zap.String("device", d.Name), zap.Stringer("mode", d.Mode))
	}
	return nil
}

// FastPathStats returns the fast path's counters, and false if the server
// has none. It is safe to call at any time.
func (s *Server) FastPathStats() (FastPathStats, bool) {
	if s.fastPath == nil {
		return FastPathStats{}, false
	}
	// A failed read gives the counts last read: never fewer.
	c, _ := s.fastPath.Counts()
	stats := FastPathStats{Attached: s.fastPath.Attached(), Devices: s.fastPath.Devices(), Passed: c.Passed}
	for _, f := range []struct {
		from *xdp.FamilyCounts
		to   *Counters
	}{{&c.IPv4, &stats.IPv4}, {&c.IPv6, &stats.IPv6}} {
		f.to[Received] = f.from.Received
		f.to[Replied] = f.from.Replied
		f.to[KoDSent] = f.from.KoDSent
		f.to[DroppedDenied] = f.from.Denied
		f.to[DroppedRateLimited] = f.from.RateLimited
		f.to[ClientEvictions] = f.from.Evicted
	}
	return stats, true
}

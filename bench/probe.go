// Package bench measures NTP servers: it probes one with a single request,
// floods one at a paced rate from many simulated clients, ramps the rate up
// to find where it saturates, and compares several servers side by side.
//
// Every measurement is bounded in time, and by default only addresses of
// this host are accepted as targets.
package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/fastntp/fastntp/internal/ntp"
)

// ProbeResult is a server's answer to one request.
type ProbeResult struct {
	Server ntp.Header
	// Sent and Received are the local times of the request and the reply.
	Sent, Received time.Time
	// Offset is the server's clock minus the local clock, and Delay the
	// round trip less the server's processing time (RFC 5905).
	Offset, Delay time.Duration
}

// Synchronized reports whether the server claims to be synchronized.
func (r *ProbeResult) Synchronized() bool {
	return r.Server.Leap != ntp.LeapUnsynchronized && r.Server.Stratum > 0 && r.Server.Stratum < ntp.MaxStratum
}

// Probe sends one NTPv4 client request to addr and returns the reply.
func Probe(ctx context.Context, addr netip.AddrPort, timeout time.Duration) (*ProbeResult, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", addr, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	req := make([]byte, ntp.HeaderSize)
	req[0] = ntp.LeapVersionMode(ntp.LeapNone, 4, ntp.ModeClient)
	cookie := rand.Uint64()
	binary.BigEndian.PutUint64(req[40:], cookie)
	r := &ProbeResult{Sent: time.Now()}
	if _, err := conn.Write(req); err != nil {
		return nil, fmt.Errorf("probe %s: %w", addr, err)
	}
	buf := make([]byte, 1024)
	for {
		n, err := conn.Read(buf)
		r.Received = time.Now()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, fmt.Errorf("probe %s: no reply within %v", addr, timeout)
			}
			return nil, fmt.Errorf("probe %s: %w", addr, err)
		}
		if r.Server.Parse(buf[:n]) != nil || uint64(r.Server.OriginTime) != cookie {
			continue // not the answer to this request
		}
		break
	}
	t2 := r.Server.ReceiveTime.Time(r.Sent)
	t3 := r.Server.TransmitTime.Time(r.Sent)
	r.Offset = (t2.Sub(r.Sent) + t3.Sub(r.Received)) / 2
	r.Delay = r.Received.Sub(r.Sent) - t3.Sub(t2)
	return r, nil
}

// String renders the reply's fields for people, as ntpdig does.
func (r *ProbeResult) String() string {
	h := r.Server
	state := "claims to be synchronized"
	switch {
	case h.Stratum == 0 && h.ReferenceID != 0:
		state = fmt.Sprintf("sent a kiss-o'-death (%s): it refuses to give the time", formatReferenceID(h.ReferenceID, 0))
	case !r.Synchronized():
		state = "is NOT synchronized"
	}
	return fmt.Sprintf("leap %d, version %d, mode %d, stratum %d, poll %d, precision %d\n"+
		"root delay %.6fs, root dispersion %.6fs, reference ID %s, reference time %s\n"+
		"offset %+.6fs, delay %.6fs: the server %s",
		h.Leap, h.Version, h.Mode, h.Stratum, h.Poll, h.Precision,
		h.RootDelay.Seconds(), h.RootDispersion.Seconds(), formatReferenceID(h.ReferenceID, h.Stratum),
		formatReferenceTime(h.ReferenceTime, r.Sent), r.Offset.Seconds(), r.Delay.Seconds(), state)
}

func formatReferenceID(id uint32, stratum uint8) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], id)
	if stratum <= 1 {
		return fmt.Sprintf("%q", string(b[:]))
	}
	return netip.AddrFrom4(b).String()
}

func formatReferenceTime(t ntp.Time64, pivot time.Time) string {
	if t.IsZero() {
		return "none"
	}
	return t.Time(pivot).UTC().Format(time.RFC3339Nano)
}

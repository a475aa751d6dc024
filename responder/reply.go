package responder

import (
	"encoding/binary"
	"time"

	"github.com/fastntp/fastntp/internal/ntp"
	"github.com/fastntp/fastntp/upstream"
)

// minPoll is the lowest poll exponent a reply carries. chronyd answers with
// the larger of the request's poll and its rate-limiting interval, whose
// least value is 2^-19 s; so does fastntp, with this floor when it does not
// limit.
const minPoll = MinRateLimitInterval

// replyTemplate holds the reply fields that are the same for every reply of
// a batch, prepared once per batch from one Snapshot.
type replyTemplate struct {
	pollRaise     int8 // the rate limit's interval above minPoll, or 0
	snapshot      *upstream.Snapshot
	valid         bool
	leap          uint8
	stratum       uint8
	precision     int8
	rootDelay     ntp.Short
	referenceID   uint32
	referenceTime ntp.Time64
}

// prepare loads the fields for a batch served at now.
func (h *replyTemplate) prepare(s *upstream.Snapshot, now time.Time) {
	h.snapshot = s
	h.valid = s.Valid(now)
	if !h.valid {
		// Stale or unsynchronized: chronyd's unsynchronized form, never
		// the last state as if it were current.
		*h = replyTemplate{pollRaise: h.pollRaise, snapshot: s, leap: ntp.LeapUnsynchronized, precision: s.Precision, rootDelay: 1 << 16}
		return
	}
	h.leap = s.LeapAt(now)
	h.stratum = s.Stratum
	h.precision = s.Precision
	h.rootDelay = s.RootDelay
	h.referenceID = s.ReferenceID
	h.referenceTime = s.ReferenceTime
}

// dispersion returns the root dispersion to send at t.
func (h *replyTemplate) dispersion(t time.Time) ntp.Short {
	if !h.valid {
		return 1 << 16
	}
	return h.snapshot.DispersionAt(t)
}

// build turns the request in b[:n] into a reply in place and returns the
// reply's length, which never exceeds the request's. The transmit timestamp
// and root dispersion are left for stamp, which runs just before sending.
func (h *replyTemplate) build(b []byte, mode uint8, received ntp.Time64) int {
	_ = b[ntp.HeaderSize-1]
	version := b[0] >> 3 & 7
	// The request's transmit timestamp becomes the origin timestamp; copy it
	// before anything overwrites it.
	copy(b[24:32], b[40:48])
	// Poll (b[2]) stays as the client sent it, raised to chronyd's floor.
	b[2] = byte(max(int8(b[2]), minPoll+h.pollRaise))
	b[0] = ntp.LeapVersionMode(h.leap, version, mode)
	b[1] = h.stratum
	b[3] = byte(h.precision)
	binary.BigEndian.PutUint32(b[4:], uint32(h.rootDelay))
	binary.BigEndian.PutUint32(b[12:], h.referenceID)
	binary.BigEndian.PutUint64(b[16:], uint64(h.referenceTime))
	binary.BigEndian.PutUint64(b[32:], uint64(received))
	return ntp.HeaderSize
}

// kissRate is the kiss code of a rate-limited client, "RATE".
const kissRate = 0x52415445

// buildKoD turns the request in b into chronyd's RATE kiss-o'-death: a
// reply whose leap is 3, stratum 0 and reference ID the kiss code.
func (h *replyTemplate) buildKoD(b []byte, mode uint8, received ntp.Time64) int {
	n := h.build(b, mode, received)
	b[0] = ntp.LeapVersionMode(ntp.LeapUnsynchronized, b[0]>>3&7, mode)
	b[1] = 0
	binary.BigEndian.PutUint32(b[12:], kissRate)
	return n
}

// stamp writes the root dispersion and transmit timestamp of a reply.
func stamp(b []byte, dispersion ntp.Short, transmit ntp.Time64) {
	_ = b[ntp.HeaderSize-1]
	binary.BigEndian.PutUint32(b[8:], uint32(dispersion))
	binary.BigEndian.PutUint64(b[40:], uint64(transmit))
}

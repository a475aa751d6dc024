// Package upstream mirrors the synchronization state of a local NTP server,
// normally chronyd, so that fastntp can serve the system clock with the
// backend's leap status, stratum, reference and error bounds.
//
// A Poller asks the backend for the time once per interval and publishes what
// it learns as an immutable Snapshot. Readers load the current Snapshot with
// one atomic operation and never see it change.
package upstream

import (
	"time"

	"github.com/fastntp/fastntp/internal/ntp"
)

// Snapshot is the synchronization state to serve, as of one moment. It is
// never modified after it is published.
type Snapshot struct {
	// Synchronized is false before the first valid answer from the backend,
	// when the backend reports itself unsynchronized, when its clock
	// disagrees with the system clock, and when its last valid answer is
	// too old. Replies then use the unsynchronized form (see Unsynchronized).
	Synchronized bool

	Leap           uint8
	Stratum        uint8
	Precision      int8
	ReferenceID    uint32
	ReferenceTime  ntp.Time64
	RootDelay      ntp.Short
	RootDispersion ntp.Short // at Taken; it grows with age, see DispersionAt

	// Taken is when the backend's answer arrived. It carries a monotonic
	// clock reading, so ages computed from it ignore clock steps.
	Taken time.Time
	// Expires is when the state stops being valid if no newer answer
	// replaces it. Readers must serve the unsynchronized form after it.
	Expires time.Time

	// Offset is the backend's clock minus the system clock, and Delay the
	// round trip of the measurement: the sample of the recent polls with
	// the shortest round trip, whose half bounds the offset's error.
	Offset, Delay time.Duration
	// Cause and Reason say why the snapshot is unsynchronized: the kind of
	// trouble, and a sentence for people. CauseNone and empty when it is
	// synchronized.
	Cause  Cause
	Reason string

	// LeapStart is when the leap second that Leap announces goes into
	// progress, or zero if none is announced. It carries a monotonic
	// reading where Taken does, so the window is measured in real time.
	// See LeapAt.
	LeapStart time.Time
}

// Frequency tolerance of RFC 5905 (PHI), in parts per million: the rate at
// which dispersion grows while nothing refreshes it.
const phiPPM = 15

// DispersionAt returns the root dispersion to serve at now: the backend's
// value plus PHI times the snapshot's age, as RFC 5905 section 11.2 grows
// dispersion between updates.
// An age of zero or less (a clock read before Taken) adds nothing, for
// ShortFromSeconds takes it as zero.
func (s *Snapshot) DispersionAt(now time.Time) ntp.Short {
	age := now.Sub(s.Taken)
	return s.RootDispersion.Add(ntp.ShortFromSeconds(age.Seconds() * phiPPM / 1e6))
}

// Valid reports whether the snapshot may be served as synchronized at now.
func (s *Snapshot) Valid(now time.Time) bool {
	return s.Synchronized && now.Before(s.Expires)
}

// Unsynchronized returns the state that chronyd serves when it is not
// synchronized: leap 3, stratum 0, reference ID 0, no reference time, and
// root delay and dispersion of one second each.
func Unsynchronized(precision int8, cause Cause, reason string) *Snapshot {
	return &Snapshot{
		Leap:           ntp.LeapUnsynchronized,
		Stratum:        0,
		Precision:      precision,
		RootDelay:      1 << 16,
		RootDispersion: 1 << 16,
		Cause:          cause,
		Reason:         reason,
	}
}

// Status reports whether the snapshot is served as synchronized at now, and
// if it is not, the kind of cause and a sentence for people: its own, or,
// for a synchronized state that has expired, that its answer is too old.
func (s *Snapshot) Status(now time.Time) (synchronized bool, cause Cause, reason string) {
	switch {
	case s.Valid(now):
		return true, CauseNone, ""
	case s.Synchronized:
		return false, CauseNoAnswer, "the last valid answer from the backend is too old"
	}
	return false, s.Cause, s.Reason
}

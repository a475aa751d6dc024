// Package ntp implements the NTP packet header and timestamp formats of
// RFC 5905, and the extension field and MAC layout of RFC 7822.
//
// It does no I/O and allocates nothing: every function works on caller-owned
// byte slices, so it can sit on a server's per-packet path.
package ntp

import (
	"encoding/binary"
	"errors"
	"math"
	"time"
)

// HeaderSize is the length of the fixed NTP header, and of every reply that
// fastntp sends.
const HeaderSize = 48

// Leap indicator values.
const (
	LeapNone           = 0
	LeapInsertSecond   = 1
	LeapDeleteSecond   = 2
	LeapUnsynchronized = 3
)

// Association modes.
const (
	ModeReserved  = 0
	ModeActive    = 1
	ModePassive   = 2
	ModeClient    = 3
	ModeServer    = 4
	ModeBroadcast = 5
	ModeControl   = 6
	ModePrivate   = 7
)

// MaxStratum is the stratum of an unsynchronized server. On the wire it is
// customarily sent as 0 (RFC 5905 section 7.3), which is what chronyd does.
const MaxStratum = 16

// Errors returned by the parsers.
var (
	ErrShort     = errors.New("ntp: packet shorter than the 48-byte header")
	ErrMalformed = errors.New("ntp: malformed extension field or MAC")
)

// Header is the fixed 48-byte NTP header.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|LI | VN  |Mode |    Stratum    |     Poll      |   Precision   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                         Root Delay                            |
//	|                         Root Dispersion                       |
//	|                         Reference ID                          |
//	|                     Reference Timestamp (64)                  |
//	|                      Origin Timestamp (64)                    |
//	|                      Receive Timestamp (64)                   |
//	|                      Transmit Timestamp (64)                  |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
type Header struct {
	Leap           uint8 // 2 bits
	Version        uint8 // 3 bits
	Mode           uint8 // 3 bits
	Stratum        uint8
	Poll           int8
	Precision      int8
	RootDelay      Short
	RootDispersion Short
	ReferenceID    uint32
	ReferenceTime  Time64
	OriginTime     Time64
	ReceiveTime    Time64
	TransmitTime   Time64
}

// LeapVersionMode packs the first octet of a header.
func LeapVersionMode(leap, version, mode uint8) byte {
	return leap<<6 | (version&7)<<3 | mode&7
}

// Parse decodes the fixed header at the start of b. Bytes past the header
// are not examined; see ParseTrailer.
func (h *Header) Parse(b []byte) error {
	if len(b) < HeaderSize {
		return ErrShort
	}
	_ = b[HeaderSize-1] // bounds-check hint
	h.Leap = b[0] >> 6
	h.Version = b[0] >> 3 & 7
	h.Mode = b[0] & 7
	h.Stratum = b[1]
	h.Poll = int8(b[2])
	h.Precision = int8(b[3])
	h.RootDelay = Short(binary.BigEndian.Uint32(b[4:]))
	h.RootDispersion = Short(binary.BigEndian.Uint32(b[8:]))
	h.ReferenceID = binary.BigEndian.Uint32(b[12:])
	h.ReferenceTime = Time64(binary.BigEndian.Uint64(b[16:]))
	h.OriginTime = Time64(binary.BigEndian.Uint64(b[24:]))
	h.ReceiveTime = Time64(binary.BigEndian.Uint64(b[32:]))
	h.TransmitTime = Time64(binary.BigEndian.Uint64(b[40:]))
	return nil
}

// Encode writes the header into the first 48 bytes of b, which must be at
// least that long.
func (h *Header) Encode(b []byte) {
	_ = b[HeaderSize-1] // bounds-check hint: panic early if b is too short
	b[0] = LeapVersionMode(h.Leap, h.Version, h.Mode)
	b[1] = h.Stratum
	b[2] = byte(h.Poll)
	b[3] = byte(h.Precision)
	binary.BigEndian.PutUint32(b[4:], uint32(h.RootDelay))
	binary.BigEndian.PutUint32(b[8:], uint32(h.RootDispersion))
	binary.BigEndian.PutUint32(b[12:], h.ReferenceID)
	binary.BigEndian.PutUint64(b[16:], uint64(h.ReferenceTime))
	binary.BigEndian.PutUint64(b[24:], uint64(h.OriginTime))
	binary.BigEndian.PutUint64(b[32:], uint64(h.ReceiveTime))
	binary.BigEndian.PutUint64(b[40:], uint64(h.TransmitTime))
}

// Short is the NTP short format: unsigned seconds in 16.16 fixed point, used
// for root delay and root dispersion.
type Short uint32

// ShortFromSeconds converts seconds to the short format, saturating at the
// largest representable value and at zero.
func ShortFromSeconds(s float64) Short {
	if !(s > 0) { // also catches NaN
		return 0
	}
	// Saturating after rounding up: just under 65536 s rounds up to 2^32
	// units, which would wrap to zero.
	units := math.Ceil(s * 65536)
	if units >= math.MaxUint32 {
		return math.MaxUint32
	}
	return Short(units)
}

// Seconds returns the value in seconds.
func (s Short) Seconds() float64 { return float64(s) / 65536 }

// Add returns s+d, saturating instead of wrapping.
func (s Short) Add(d Short) Short {
	if sum := s + d; sum >= s {
		return sum
	}
	return math.MaxUint32
}

// Time64 is the NTP timestamp format: seconds since 1900-01-01 00:00 UTC
// modulo 2^32 in the high word and a binary fraction of a second in the low
// word. The era (which multiple of 2^32 seconds) is not carried; see Time.
type Time64 uint64

// unixToNTP is the number of seconds from 1900-01-01 to 1970-01-01.
const unixToNTP = 2208988800

// TimeFromUnix converts seconds and nanoseconds since the Unix epoch. Times in
// other eras wrap, as the format requires (RFC 5905 section 6).
func TimeFromUnix(sec, nsec int64) Time64 {
	// Multiplying before dividing keeps full precision: nsec < 1e9 < 2^30,
	// so nsec<<32 fits in 62 bits.
	frac := (uint64(nsec) << 32) / 1e9
	return Time64(uint64(uint32(sec+unixToNTP))<<32 | frac)
}

// TimeFrom converts t.
func TimeFrom(t time.Time) Time64 {
	return TimeFromUnix(t.Unix(), int64(t.Nanosecond()))
}

// Time converts the timestamp into the time.Time of the era closest to pivot,
// which resolves the 2036 rollover for any timestamp within 68 years of it.
func (t Time64) Time(pivot time.Time) time.Time {
	pivotNTP := pivot.Unix() + unixToNTP
	// The difference modulo 2^32, taken as signed, is the offset from the
	// pivot to the nearest time with these low 32 bits.
	delta := int64(int32(uint32(t>>32) - uint32(pivotNTP)))
	sec := pivotNTP + delta - unixToNTP
	nsec := (uint64(uint32(t))*1e9 + 1<<31) >> 32
	return time.Unix(sec, int64(nsec))
}

// IsZero reports whether the timestamp is zero, which NTP uses for "unknown".
func (t Time64) IsZero() bool { return t == 0 }

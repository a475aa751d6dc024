package upstream

import (
	"time"

	"github.com/fastntp/fastntp/internal/ntp"
)

// Leap seconds, as chronyd handles them in its default "system" leapsecmode,
// where the kernel inserts or deletes the second at midnight UTC:
//
//   - A leap may only end the last day of June or of December (UTC); an
//     announcement on any other day is ignored.
//   - The announcement (leap 1 or 2) is served until shortly before the
//     kernel applies it. From half a second before, for two seconds of real
//     time, the clock is ambiguous (23:59:59 repeats, or is skipped) and
//     chronyd serves leap 3, unsynchronized, keeping its stratum and
//     reference (reference.c: leap_in_progress).
//   - After that the announcement is over and leap 0 is served, whatever
//     the last poll said.
//
// fastntp applies these windows with its own clock at the moment it serves,
// not with the state it last polled, which can be a second old.

// leapWindowLead is how long before the kernel applies a leap second chronyd
// starts serving leap 3: its timer fires half a second early so as to beat
// the kernel.
const leapWindowLead = 500 * time.Millisecond

// leapWindowLength is how long, in real time, chronyd serves leap 3 around
// a leap second.
const leapWindowLength = 2 * time.Second

// isLeapSecondDay reports whether the UTC day of t may end with a leap
// second: June 30 and December 31, as chronyd allows.
func isLeapSecondDay(t time.Time) bool {
	_, month, day := t.UTC().Date()
	return (month == time.June && day == 30) || (month == time.December && day == 31)
}

// leapWindowStart returns when the leap second announced at taken goes into
// progress. It is computed from taken's wall clock, before the leap bends
// it, and carries taken's monotonic reading: the window is then measured in
// real time, through a repeated second that sends the wall clock back.
func leapWindowStart(leap uint8, taken time.Time) time.Time {
	y, m, d := taken.UTC().Date()
	// The kernel inserts a second at midnight, stepping the clock back to
	// 23:59:59; it deletes one by stepping from 23:59:59 to midnight.
	applied := time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
	if leap == ntp.LeapDeleteSecond {
		applied = applied.Add(-time.Second)
	}
	return taken.Add(applied.Sub(taken) - leapWindowLead)
}

// LeapWindow returns when the leap second that the snapshot announces
// goes into progress and when it is over: LeapAt serves leap 3 from start
// until end. Both are zero if none is announced.
func (s *Snapshot) LeapWindow() (start, end time.Time) {
	if s.LeapStart.IsZero() {
		return time.Time{}, time.Time{}
	}
	return s.LeapStart, s.LeapStart.Add(leapWindowLength)
}

// LeapAt returns the leap indicator to serve at now, a reading of the system
// clock: the backend's announcement before its leap second, leap 3 while the
// second is applied, and leap 0 once it is over.
func (s *Snapshot) LeapAt(now time.Time) uint8 {
	start, end := s.LeapWindow()
	switch {
	case start.IsZero() || now.Before(start):
		return s.Leap
	case now.Before(end):
		return ntp.LeapUnsynchronized
	}
	return ntp.LeapNone
}

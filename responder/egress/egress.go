package egress

import "time"

// Guard is how far the program's clock reading may be from the transmit
// timestamp user space wrote before the send for the program to write its
// reading as it is. A change of the kernel's TAI offset is a whole number
// of seconds, so a reading made with an outdated offset is at least half a
// second further off than that, whatever the send took; and a send would
// have to stall for half a second for a right reading to be taken for one.
const Guard = 500 * time.Millisecond

// Beyond the guard, a reading that is a whole number of seconds, at most
// MaxCorrection, from user space's stamp, give or take CorrectionSlack, is
// one made with an outdated TAI offset (the system clock that user space
// read has no whole-second error of its own to show): the program takes
// the whole seconds away and writes the rest, its own reading of the
// fraction. Anything else it leaves alone.
const (
	MaxCorrection   = 64 // seconds
	CorrectionSlack = 100 * time.Millisecond
)

// Counts are the program's counts of the replies of registered sockets that
// reached a device it is attached to, since Attach. A reply that leaves
// through two devices (a VLAN and its parent, say) is counted at each.
type Counts struct {
	// Stamped replies got the program's transmit timestamp.
	Stamped uint64
	// Corrected replies, among the stamped ones, got the program's reading
	// less the whole seconds by which the kernel's TAI offset had changed
	// since the program was told it.
	Corrected uint64
	// Unsure replies kept the stamp user space wrote, because the
	// program's reading was further from it than Guard, and not by a whole
	// number of seconds: the bytes where a reply's stamp would be are not
	// one (a trailer), or the system clock was stepped by a fraction of a
	// second between the two readings.
	Unsure uint64
	// ChecksumFailed replies kept the stamp user space wrote, because the
	// kernel refused to adjust the UDP checksum.
	ChecksumFailed uint64
}

// EventKind says what an Event reports.
type EventKind uint8

const (
	// Attached: a device that appeared took the program.
	Attached EventKind = iota
	// Refused: a device refused the program; replies through it keep the
	// stamps written before the send.
	Refused
	// WatchFailed: the kernel's announcements of new devices cannot be
	// followed; Run keeps trying, and devices that appear in the meantime
	// do not get the program until it succeeds.
	WatchFailed
	// WatchResumed: the announcements are followed again, after a
	// WatchFailed.
	WatchResumed
)

func (k EventKind) String() string {
	switch k {
	case Attached:
		return "attached"
	case Refused:
		return "refused"
	case WatchFailed:
		return "watch failed"
	case WatchResumed:
		return "watch resumed"
	}
	return "unknown"
}

// An Event is something Run reports about the devices.
type Event struct {
	Kind EventKind
	// Device names the device of an Attached or Refused event.
	Device string
	// Err says why, for Refused and WatchFailed.
	Err error
}

// Package xdp is fastntp's fast path: an XDP program (responder/kernel's
// xdp.c) that answers the common NTP request at the network driver, before
// the kernel's socket layer, from a copy of the synchronization state that
// the daemon keeps current. Everything the program does not answer goes on
// to fastntp's socket workers, which keep running beside it.
//
// The program runs before the host's firewall (nftables, iptables): what it
// answers, the firewall never sees. Its own access rules and rate limit
// are fastntp's.
package xdp

import (
	"net/netip"
	"time"
)

// Mode is how the program is attached to a device.
type Mode uint8

const (
	// ModeAuto attaches in the driver (native) where the driver supports
	// it, else in the generic path that every device has.
	ModeAuto Mode = iota
	// ModeNative attaches in the driver, or fails.
	ModeNative
	// ModeGeneric attaches after the kernel has built its socket buffer:
	// slower than native, for devices whose drivers lack XDP and for
	// tests.
	ModeGeneric
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return "unknown"
}

// ParseMode parses the names String returns.
func ParseMode(s string) (Mode, bool) {
	for m := ModeAuto; m <= ModeGeneric; m++ {
		if m.String() == s {
			return m, true
		}
	}
	return 0, false
}

// Config says where the program runs and what it may answer.
type Config struct {
	// Devices names the network devices to attach to; at least one.
	Devices []string
	Mode    Mode
	// Served lists the addresses and ports the socket path serves; the
	// program answers requests to those alone. An unspecified address
	// stands for the addresses of its family that the host's devices have
	// at Attach, loopback addresses aside: requests to an address added
	// later go to the sockets, and one removed is answered until fastntp
	// restarts, if frames for it still reach this host.
	Served []netip.AddrPort
	// Access, if not nil, decides which clients are answered, by the
	// rule with the longest prefix that holds the client's address; a
	// client no rule holds is answered if DefaultAllow.
	Access       []AccessRule
	DefaultAllow bool
	// RateLimit, if not nil, limits the replies to each client address.
	RateLimit *RateLimit
	// MinPoll is the least poll exponent a reply carries.
	MinPoll int8
}

// AccessRule allows or denies the clients of one network.
type AccessRule struct {
	Prefix netip.Prefix
	Allow  bool
}

// RateLimit is a token bucket per client address, with the arithmetic of
// responder's rate limit, which computes these parameters.
type RateLimit struct {
	TokensPerHit, MaxTokens uint16
	TokenShift              int8
	// Leak and KoD are the log2 of the inverse chances that a limited
	// request is answered anyway, and that one not answered gets a RATE
	// kiss-o'-death (0: never).
	Leak, KoD uint8
	// TimestampOffset randomizes where the records' 1/16 s ticks fall
	// within each second.
	TimestampOffset time.Duration
	// Slots bounds the addresses remembered, to SlotRecords in each
	// slot, where the least recently heard record makes room for a new
	// address. HashSeed, a secret, spreads the addresses over the slots.
	Slots    int
	HashSeed uint64
}

// SlotRecords is how many records a slot of the rate limit holds, and
// RecordSize the memory each takes.
const (
	SlotRecords = 16
	RecordSize  = 28
)

// FamilyCounts are the program's counts for one address family.
type FamilyCounts struct {
	// Received are the requests the program took on: the others it
	// passed on to the socket path.
	Received uint64
	// Replied, KoDSent, Denied and RateLimited say what became of them.
	Replied, KoDSent, Denied, RateLimited uint64
	// Evicted counts the rate-limit records forgotten to make room for
	// new addresses.
	Evicted uint64
}

// PassReason says why the program passed a frame on to the kernel's
// stack.
type PassReason uint8

const (
	// PassOther: not IPv4 or IPv6 over Ethernet, or not to a served
	// address and port.
	PassOther PassReason = iota
	// PassForm: a form left to the stack: IP options, extension headers,
	// fragments, more than one VLAN tag, bytes past the datagram, or
	// another host's, a group's or a special address.
	PassForm
	// PassRequest: an NTP datagram the plain reply is not for (not 48
	// bytes, or a version, mode or source port the socket path drops or
	// answers otherwise).
	PassRequest
	// PassChecksum: a bad IPv4 header or UDP checksum, for the stack to
	// count and drop.
	PassChecksum
	// PassClock: the system clock was stepped or the kernel's TAI offset
	// changed since the daemon last told the program, which then cannot
	// tell the time.
	PassClock
	// NumPassReasons is the number of reasons, not a reason.
	NumPassReasons
)

func (r PassReason) String() string {
	switch r {
	case PassOther:
		return "other"
	case PassForm:
		return "form"
	case PassRequest:
		return "request"
	case PassChecksum:
		return "checksum"
	case PassClock:
		return "clock"
	}
	return "unknown"
}

// Counts are the program's counts since it was loaded, summed over the
// CPUs.
type Counts struct {
	IPv4, IPv6 FamilyCounts
	Passed     [NumPassReasons]uint64
}

package ntp

import "encoding/binary"

// Lengths that decide how the bytes after the header are read, as chronyd
// reads them (RFC 7822 and chrony's ntp.h).
const (
	minMACLength            = 20 // a key ID (4) and the shortest digest (16)
	maxV4MACLength          = 24 // a key ID and the longest digest (20) that still allows EF parsing
	minExtensionFieldLength = 16
)

// Extension field types of NTS (RFC 8915 section 5.7).
const (
	extUniqueIdentifier     = 0x0104
	extNTSCookie            = 0x0204
	extNTSCookiePlaceholder = 0x0304
	extNTSAuthenticator     = 0x0404
)

// Auth tells what authentication a request carries.
type Auth uint8

// Authentication found by ParseTrailer.
const (
	AuthNone      Auth = iota // no MAC and no NTS fields
	AuthSymmetric             // a MAC (symmetric key, MS-SNTP or crypto-NAK)
	AuthNTS                   // NTS extension fields
)

// Trailer describes what follows the header of a packet.
type Trailer struct {
	ExtensionFields int  // well-formed extension fields, of any type
	Auth            Auth // the strongest authentication present
}

// ParseTrailer reads the extension fields and MAC that follow the header of
// packet, which must be a whole datagram. It accepts exactly what chronyd
// accepts: the length is a multiple of 4; before NTPv4 anything after the
// header is a MAC; in NTPv4 a trailer of 20 to 24 octets is a MAC, 4 zero
// octets are a crypto-NAK, and everything else must be a chain of extension
// fields, each at least 16 octets long and a multiple of 4.
func ParseTrailer(packet []byte, version uint8) (Trailer, error) {
	var tr Trailer
	if len(packet) < HeaderSize {
		return tr, ErrShort
	}
	if len(packet)%4 != 0 {
		return tr, ErrMalformed
	}
	rest := packet[HeaderSize:]
	if len(rest) == 0 {
		return tr, nil
	}
	if version <= 3 {
		tr.Auth = AuthSymmetric
		return tr, nil
	}
	if len(rest) == 4 && binary.BigEndian.Uint32(rest) == 0 {
		tr.Auth = AuthSymmetric // crypto-NAK
		return tr, nil
	}
	for len(rest) > 0 {
		// What is too short for an extension field after the header or
		// the fields before it is a MAC, or malformed.
		if len(rest) <= maxV4MACLength {
			if len(rest) < minMACLength {
				return tr, ErrMalformed
			}
			tr.Auth = AuthSymmetric
			return tr, nil
		}
		typ := binary.BigEndian.Uint16(rest)
		n := int(binary.BigEndian.Uint16(rest[2:]))
		if n < minExtensionFieldLength || n > len(rest) || n%4 != 0 {
			return tr, ErrMalformed
		}
		switch typ {
		case extUniqueIdentifier, extNTSCookie, extNTSCookiePlaceholder, extNTSAuthenticator:
			tr.Auth = AuthNTS
		}
		tr.ExtensionFields++
		rest = rest[n:]
	}
	return tr, nil
}

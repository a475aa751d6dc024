package responder

import (
	"github.com/fastntp/fastntp/responder/ntp"
)

// verdict is what the responder does with one datagram: reply, or drop it
// for the reason named.
type verdict uint8

const (
	reply          verdict = iota
	dropShort              // shorter than the NTP header
	dropFormat             // length not a multiple of 4, malformed extension fields or MAC
	dropVersion            // version 0, or above 4
	dropMode               // not a request: modes 0 (but NTPv1), 2, 4, 5, 6 and 7
	dropAuth               // a MAC or NTS fields: fastntp holds no keys, so it cannot answer
	dropTruncated          // longer than the receive buffer
	dropSourcePort         // source port 0, which no reply can reach
	numVerdicts
)

// ntpPort is the NTP service port. An NTPv1 request has no mode field and
// announces itself as a client by coming from another port.
const ntpPort = 123

// classify decides, as chronyd 4.x does, whether req deserves a reply and
// with which mode.
func classify(req []byte, sourcePort uint16) (mode uint8, v verdict) {
	if len(req) < ntp.HeaderSize {
		return 0, dropShort
	}
	version := req[0] >> 3 & 7
	if len(req)%4 != 0 {
		return 0, dropFormat
	}
	if version < 1 || version > 4 {
		return 0, dropVersion
	}
	tr, err := ntp.ParseTrailer(req, version)
	if err != nil {
		return 0, dropFormat
	}
	switch req[0] & 7 {
	case ntp.ModeClient:
		mode = ntp.ModeServer
	case ntp.ModeActive:
		// Symmetric passive, without ever keeping state for the peer.
		mode = ntp.ModePassive
	case ntp.ModeReserved:
		if version == 1 && sourcePort != ntpPort {
			mode = ntp.ModeServer
			break
		}
		return 0, dropMode
	default:
		return 0, dropMode
	}
	if tr.Auth != ntp.AuthNone {
		return 0, dropAuth
	}
	if sourcePort == 0 {
		return 0, dropSourcePort
	}
	return mode, reply
}

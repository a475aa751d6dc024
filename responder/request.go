package responder

import (
	"github.com/fastntp/fastntp/internal/ntp"
)

// ntpPort is the NTP service port. An NTPv1 request has no mode field and
// announces itself as a client by coming from another port.
const ntpPort = 123

// classify decides, as chronyd 4.x does, whether req deserves a reply and
// with which mode. The verdict is Replied, or the Dropped counter of the
// reason it does not.
func classify(req []byte, sourcePort uint16) (mode uint8, v Counter) {
	if len(req) < ntp.HeaderSize {
		return 0, DroppedShort
	}
	version := req[0] >> 3 & 7
	if len(req)%4 != 0 {
		return 0, DroppedFormat
	}
	if version < 1 || version > 4 {
		return 0, DroppedVersion
	}
	tr, err := ntp.ParseTrailer(req, version)
	if err != nil {
		return 0, DroppedFormat
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
		return 0, DroppedMode
	default:
		return 0, DroppedMode
	}
	if tr.Auth != ntp.AuthNone {
		return 0, DroppedAuth
	}
	if sourcePort == 0 {
		return 0, DroppedSourcePort
	}
	return mode, Replied
}

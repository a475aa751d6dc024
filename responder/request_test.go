package responder

import (
	"encoding/binary"
	"testing"

	"github.com/fastntp/fastntp/internal/ntp"
)

// packet builds a request: a header with the given version and mode,
// followed by trailer.
func packet(version, mode uint8, trailer ...[]byte) []byte {
	b := make([]byte, ntp.HeaderSize)
	b[0] = ntp.LeapVersionMode(0, version, mode)
	b[2] = 6 // poll
	binary.BigEndian.PutUint64(b[40:], 0xdeadbeefcafef00d)
	for _, t := range trailer {
		b = append(b, t...)
	}
	return b
}

// extensionField returns an RFC 7822 extension field of the given type and
// total length.
func extensionField(typ uint16, length int) []byte {
	b := make([]byte, length)
	binary.BigEndian.PutUint16(b, typ)
	binary.BigEndian.PutUint16(b[2:], uint16(length))
	return b
}

// withPoll sets a request's poll exponent.
func withPoll(b []byte, poll int8) []byte {
	b[2] = byte(poll)
	return b
}

// withLength overwrites the length an extension field claims.
func withLength(ef []byte, length uint16) []byte {
	binary.BigEndian.PutUint16(ef[2:], length)
	return ef
}

// mac returns a key ID and digest of the given total length.
func mac(length int) []byte {
	b := make([]byte, length)
	binary.BigEndian.PutUint32(b, 42)
	for i := 4; i < length; i++ {
		b[i] = byte(i)
	}
	return b
}

// requestClasses are the kinds of datagram a public server receives, with
// what chronyd 4.x does with each. The comparison against a real chronyd
// in server_test.go sends every one of them.
var requestClasses = []struct {
	name     string
	pkt      []byte
	wantMode uint8
	want     Counter
}{
	{"v4 client", packet(4, ntp.ModeClient), ntp.ModeServer, Replied},
	{"v3 client", packet(3, ntp.ModeClient), ntp.ModeServer, Replied},
	{"v2 client", packet(2, ntp.ModeClient), ntp.ModeServer, Replied},
	{"v1 client", packet(1, ntp.ModeClient), ntp.ModeServer, Replied},
	{"v4 symmetric active", packet(4, ntp.ModeActive), ntp.ModePassive, Replied},
	{"v4 client poll -128", withPoll(packet(4, ntp.ModeClient), -128), ntp.ModeServer, Replied},
	{"v4 client poll 17", withPoll(packet(4, ntp.ModeClient), 17), ntp.ModeServer, Replied},
	{"v1 mode 0", packet(1, ntp.ModeReserved), ntp.ModeServer, Replied},
	{"v2 mode 0", packet(2, ntp.ModeReserved), 0, DroppedMode},
	{"v4 mode 0", packet(4, ntp.ModeReserved), 0, DroppedMode},
	{"v4 symmetric passive", packet(4, ntp.ModePassive), 0, DroppedMode},
	{"v4 server", packet(4, ntp.ModeServer), 0, DroppedMode},
	{"v4 broadcast", packet(4, ntp.ModeBroadcast), 0, DroppedMode},
	{"v2 control", packet(2, ntp.ModeControl), 0, DroppedMode},
	{"v2 private (monlist)", packet(2, ntp.ModePrivate), 0, DroppedMode},
	{"v0 client", packet(0, ntp.ModeClient), 0, DroppedVersion},
	{"v5 client", packet(5, ntp.ModeClient), 0, DroppedVersion},
	{"v7 client", packet(7, ntp.ModeClient), 0, DroppedVersion},
	{"47 bytes", packet(4, ntp.ModeClient)[:47], 0, DroppedShort},
	{"12 bytes", packet(4, ntp.ModeClient)[:12], 0, DroppedShort},
	{"50 bytes", packet(4, ntp.ModeClient, []byte{0, 0}), 0, DroppedFormat},
	{"v4 unknown extension field", packet(4, ntp.ModeClient, extensionField(0x7777, 28)), ntp.ModeServer, Replied},
	{"v4 two extension fields", packet(4, ntp.ModeClient, extensionField(0x7777, 16), extensionField(0x7778, 28)), ntp.ModeServer, Replied},
	{"v4 short last extension field", packet(4, ntp.ModeClient, extensionField(0x7777, 16)), 0, DroppedFormat},
	{"v4 extension field too long", packet(4, ntp.ModeClient, withLength(extensionField(0x7777, 28), 40)), 0, DroppedFormat},
	{"v4 extension field length not multiple of 4", packet(4, ntp.ModeClient, withLength(extensionField(0x7777, 28), 30)), 0, DroppedFormat},
	{"v4 MAC 20", packet(4, ntp.ModeClient, mac(20)), 0, DroppedAuth},
	{"v4 MAC 24", packet(4, ntp.ModeClient, mac(24)), 0, DroppedAuth},
	{"v4 extension field and MAC", packet(4, ntp.ModeClient, extensionField(0x7777, 16), mac(20)), 0, DroppedAuth},
	{"v4 crypto-NAK", packet(4, ntp.ModeClient, make([]byte, 4)), 0, DroppedAuth},
	{"v4 4 trailing bytes", packet(4, ntp.ModeClient, mac(4)), 0, DroppedFormat},
	{"v4 8 trailing bytes", packet(4, ntp.ModeClient, mac(8)), 0, DroppedFormat},
	{"v4 long MAC", packet(4, ntp.ModeClient, mac(68)), 0, DroppedFormat},
	{"v3 MAC 20", packet(3, ntp.ModeClient, mac(20)), 0, DroppedAuth},
	{"v3 MS-SNTP", packet(3, ntp.ModeClient, append(mac(4), make([]byte, 16)...)), 0, DroppedAuth},
	{"v4 NTS unique identifier", packet(4, ntp.ModeClient, extensionField(0x0104, 36)), 0, DroppedAuth},
	{"v4 NTS cookie", packet(4, ntp.ModeClient, extensionField(0x0104, 36), extensionField(0x0204, 100)), 0, DroppedAuth},
	{"v4 mode 6 with MAC", packet(4, ntp.ModeControl, mac(20)), 0, DroppedMode},
}

func TestClassify(t *testing.T) {
	for _, tc := range requestClasses {
		t.Run(tc.name, func(t *testing.T) {
			mode, v := classify(tc.pkt, 40000)
			if v != tc.want || mode != tc.wantMode {
				t.Errorf("classify = mode %d %s, want mode %d %s", mode, v, tc.wantMode, tc.want)
			}
		})
	}
}

func TestClassifySourcePort(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		port uint16
		want Counter
	}{
		{"v1 mode 0 from port 123 is a peer, not a client", packet(1, ntp.ModeReserved), 123, DroppedMode},
		{"v1 mode 0 from another port", packet(1, ntp.ModeReserved), 1023, Replied},
		{"client from port 123", packet(4, ntp.ModeClient), 123, Replied},
		{"client from port 0 cannot be answered", packet(4, ntp.ModeClient), 0, DroppedSourcePort},
	}
	for _, tt := range tests {
		if _, v := classify(tt.pkt, tt.port); v != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, v, tt.want)
		}
	}
}

package upstream

import (
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/ntp"
)

// FuzzParseAnswer feeds arbitrary answers to the poller's parser: no panic,
// and a synchronized snapshot only from a server-mode answer to our request.
func FuzzParseAnswer(f *testing.F) {
	good := make([]byte, ntp.HeaderSize)
	now := time.Now()
	(&ntp.Header{Version: 4, Mode: ntp.ModeServer, Stratum: 2, OriginTime: 7,
		ReceiveTime: ntp.TimeFrom(now), TransmitTime: ntp.TimeFrom(now)}).Encode(good)
	f.Add(good)
	f.Add(make([]byte, 10))
	p, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		snap, err := p.parse(b, 7, now, now)
		if err != nil || !snap.Synchronized {
			return
		}
		var h ntp.Header
		if h.Parse(b) != nil || h.Mode != ntp.ModeServer || h.OriginTime != 7 || h.Leap == ntp.LeapUnsynchronized {
			t.Fatalf("synchronized snapshot from %x", b)
		}
	})
}

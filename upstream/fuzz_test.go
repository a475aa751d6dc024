package upstream

import (
	"testing"
	"time"

	"github.com/fastntp/fastntp/internal/ntp"
)

// FuzzParseAnswer feeds arbitrary answers to the poller's reader and judge:
// no panic, and a synchronized snapshot only from a server-mode answer to
// our request that claims a stratum, never from a kiss-o'-death.
func FuzzParseAnswer(f *testing.F) {
	good := make([]byte, ntp.HeaderSize)
	now := time.Now()
	(&ntp.Header{Version: 4, Mode: ntp.ModeServer, Stratum: 2, OriginTime: 7,
		ReceiveTime: ntp.TimeFrom(now), TransmitTime: ntp.TimeFrom(now)}).Encode(good)
	f.Add(good)
	f.Add(make([]byte, 10))
	f.Fuzz(func(t *testing.T, b []byte) {
		// A poller of its own, so that a failure reproduces from its input
		// alone, whatever the inputs before it taught the poller.
		p, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		a := &answer{sent: now, arrived: now, received: now}
		if readAnswer(&a.header, b, 7) != nil {
			return
		}
		snap, _, _ := p.judge(a, nil, now)
		if snap == nil || !snap.Synchronized {
			return
		}
		h := a.header
		if h.Mode != ntp.ModeServer || h.OriginTime != 7 || h.Stratum == 0 || h.Stratum >= ntp.MaxStratum {
			t.Fatalf("synchronized snapshot from %x", b)
		}
	})
}

package bench

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// checkRawReply accounts for frame as the raw generator's capture would, and
// fails unless it was counted exactly once.
func checkRawReply(t *testing.T, frame []byte) {
	target := netip.MustParseAddrPort("198.19.0.2:123")
	tmpl, err := newFrameTemplate(net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2},
		netip.MustParsePrefix("198.18.0.0/16"), target)
	if err != nil {
		t.Fatal(err)
	}
	e := &rawEngine{template: tmpl, addresses: 1 << 16, target: target}
	e.sent.Store(1 << 20)
	e.acc = newAccumulator(1, 64)
	e.add(frame, time.Now())
	if a := e.acc; a.valid+a.invalid+a.kod+a.late != 1 {
		t.Fatalf("one frame counted %d times", a.valid+a.invalid+a.kod+a.late)
	}
}

// TestRawReplyAccounting checks how the capture judges replies: one to the
// client that sent the request counts as valid; one to another address or
// port, or from another server, as invalid; one to an earlier step as late.
func TestRawReplyAccounting(t *testing.T) {
	target := netip.MustParseAddrPort("198.19.0.2:123")
	tmpl, err := newFrameTemplate(net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2},
		netip.MustParsePrefix("198.18.0.0/16"), target)
	if err != nil {
		t.Fatal(err)
	}
	// The seed answers request 5 of step 1, from client 5 (198.18.0.5), port 1024.
	mutate := map[string]func(ip []byte){
		"valid":          func(ip []byte) {},
		"other address":  func(ip []byte) { ip[19] = 6 },
		"other port":     func(ip []byte) { ip[ipv4HeaderSize+3] = 1 },
		"other server":   func(ip []byte) { ip[15] = 3 },
		"earlier step":   func(ip []byte) { ip[ipv4HeaderSize+udpHeaderSize+24] = 0 },
		"never sent":     func(ip []byte) { ip[ipv4HeaderSize+udpHeaderSize+31] = 200 },
		"client request": func(ip []byte) { ip[ipv4HeaderSize+udpHeaderSize] = 0x23 },
	}
	for name, change := range mutate {
		e := &rawEngine{template: tmpl, addresses: 1 << 16, target: target}
		e.sent.Store(100)
		e.acc = newAccumulator(1, 64)
		frame := replyFrameSeed()
		change(frame[ethernetHeaderSize:])
		e.add(frame, time.Now())
		a := e.acc
		got := map[bool]string{true: "valid"}[a.valid == 1]
		switch {
		case a.late == 1:
			got = "late"
		case a.invalid == 1:
			got = "invalid"
		}
		want := map[string]string{"valid": "valid", "earlier step": "late"}[name]
		if want == "" {
			want = "invalid"
		}
		if got != want {
			t.Errorf("%s: counted %q, want %q", name, got, want)
		}
	}
}

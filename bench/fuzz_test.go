package bench

import (
	"net"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/fastntp/fastntp/batch"
)

// FuzzParsers feeds arbitrary bytes to every parser of outside input: /proc
// stat lines and /proc/stat, CPU lists, target specifications, fixed
// points, requirements, server replies and captured reply frames. None may
// panic, what parses prints back as itself, and a reply counts once.
func FuzzParsers(f *testing.F) {
	f.Add([]byte("1 (fastntp) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0"))
	f.Add([]byte("x=exec:fastntp -a 127.0.0.1:{port}"))
	f.Add(make([]byte, 48))
	f.Add([]byte("txp99@50%<=8*chronyd"))
	f.Add([]byte("peak>=0.5*c+0.5*unbatched"))
	f.Add([]byte("90%"))
	f.Add([]byte("cpu1 200 1 100 2000 20 3 40 2 0 0\n"))
	f.Add([]byte("0,2-3"))
	f.Add(replyFrameSeed())
	f.Fuzz(func(t *testing.T, b []byte) {
		parseStat(b)
		ParseTargetSpec(string(b))
		if p, err := ParsePoint(string(b)); err == nil {
			if again, err := ParsePoint(p.String()); err != nil || again != p {
				t.Fatalf("point %q prints as %q", b, p)
			}
		}
		if r, err := ParseRequirement(string(b)); err == nil {
			if again, err := ParseRequirement(r.String()); err != nil || !reflect.DeepEqual(again, r) {
				t.Fatalf("requirement %q prints as %q", b, r)
			}
		}
		parseCPUTimes(b, []int{0, 1})
		if cpus, err := ParseCPUList(string(b)); err == nil && len(cpus) == 0 {
			t.Fatalf("CPU list %q names no CPU", b)
		}
		if r, err := parseReplyFrame(b); err == nil && len(r.payload) > len(b) {
			t.Fatalf("a %d-byte frame has a %d-byte payload", len(b), len(r.payload))
		}
		checkRawReply(t, b)
		c := &client{index: 1}
		c.sent.Store(1 << 20)
		c.acc = accumulator{step: 1, seen: make([]uint64, 1)}
		m := batch.Message{Buffer: b, N: len(b)}
		c.acc.add(c, &m)
		a := c.acc
		if a.valid+a.invalid+a.kod+a.late != 1 {
			t.Fatalf("one reply counted %d times", a.valid+a.invalid+a.kod+a.late)
		}
	})
}

// replyFrameSeed is a reply frame as a server would send it to the raw
// generator: a request frame, turned around.
func replyFrameSeed() []byte {
	tmpl, err := newFrameTemplate(net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2},
		netip.MustParsePrefix("198.18.0.0/16"), netip.MustParseAddrPort("198.19.0.2:123"))
	if err != nil {
		panic(err)
	}
	frame := slices.Clone(tmpl.frame)
	tmpl.fill(frame, 5, 1024, rawRequestID(1, 5))
	ip := frame[ethernetHeaderSize:]
	var source, destination [4]byte
	copy(source[:], ip[12:16])
	copy(destination[:], ip[16:20])
	copy(ip[12:16], destination[:])
	copy(ip[16:20], source[:])
	udp := ip[ipv4HeaderSize:]
	udp[0], udp[1], udp[2], udp[3] = udp[2], udp[3], udp[0], udp[1]
	ntpPayload := udp[udpHeaderSize:]
	copy(ntpPayload[24:32], ntpPayload[40:48])
	ntpPayload[0] = 0x24 // version 4, server
	ntpPayload[1] = 1
	return frame
}

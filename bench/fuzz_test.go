package bench

import (
	"reflect"
	"testing"

	"github.com/fastntp/fastntp/batch"
)

// FuzzParsers feeds arbitrary bytes to every parser of outside input: /proc
// stat lines, target specifications, fixed points, requirements and server
// replies. None may panic, and what parses prints back as itself.
func FuzzParsers(f *testing.F) {
	f.Add([]byte("1 (fastntp) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0"))
	f.Add([]byte("x=exec:fastntp -a 127.0.0.1:{port}"))
	f.Add(make([]byte, 48))
	f.Add([]byte("txp99@50%<=8*chronyd"))
	f.Add([]byte("peak>=0.5*c+0.5*unbatched"))
	f.Add([]byte("90%"))
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

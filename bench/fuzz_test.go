package bench

import (
	"testing"

	"github.com/fastntp/fastntp/batch"
)

// FuzzParsers feeds arbitrary bytes to every parser of outside input: /proc
// stat lines, target specifications and server replies. None may panic.
func FuzzParsers(f *testing.F) {
	f.Add([]byte("1 (fastntp) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0"))
	f.Add([]byte("x=exec:fastntp -a 127.0.0.1:{port}"))
	f.Add(make([]byte, 48))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseStat(b)
		ParseTargetSpec(string(b))
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

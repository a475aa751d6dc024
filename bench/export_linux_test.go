package bench

import "testing"

// SendAllocs returns the allocations per call of a raw Flooder's send of a
// full batch, once warm.
func SendAllocs(f *Flooder) float64 {
	e := f.engine.(*rawEngine)
	e.begin(1, 1<<20)
	e.send(1, rawBatchSize)
	return testing.AllocsPerRun(100, func() { e.send(1, rawBatchSize) })
}

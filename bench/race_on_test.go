//go:build race

package bench_test

// raceEnabled is true under the race detector, whose instrumentation
// allocates, so allocation counts are only checked without it.
const raceEnabled = true

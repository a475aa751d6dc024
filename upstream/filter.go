package upstream

import "time"

// sample is one measurement of the backend's clock against the system
// clock.
type sample struct {
	// offset is the backend's clock minus the system clock.
	offset time.Duration
	// delay is the round trip less the backend's own processing time. Half
	// of it bounds the error of offset: whatever held up the request or the
	// answer on one way only, scheduling included, shows up in both.
	delay time.Duration
}

// errorBound returns the most by which offset can be wrong.
func (s sample) errorBound() time.Duration { return s.delay / 2 }

// filterSize is how many recent samples the filter weighs, as NTP's clock
// filter does.
const filterSize = 8

// offsetFilter keeps the most recent samples and trusts the one with the
// shortest round trip. Delays only ever lengthen a round trip, so under load
// (a flood, more busy threads than cores) the shortest of several is the
// one that delays distorted least, where the latest alone may be far off.
type offsetFilter struct {
	samples [filterSize]sample
	n, next int
}

func (f *offsetFilter) add(s sample) {
	f.samples[f.next] = s
	f.next = (f.next + 1) % filterSize
	f.n = min(f.n+1, filterSize)
}

// best returns the sample with the shortest round trip, if there is one.
func (f *offsetFilter) best() (sample, bool) {
	if f.n == 0 {
		return sample{}, false
	}
	best := f.samples[0]
	for _, s := range f.samples[1:f.n] {
		if s.delay < best.delay {
			best = s
		}
	}
	return best, true
}

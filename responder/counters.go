package responder

import "sync/atomic"

// Counters are the server's totals since it started.
type Counters struct {
	Received uint64 // datagrams read from the sockets
	Replied  uint64 // replies the kernel accepted
	// Dropped counts requests that got no reply, by reason.
	DroppedShort       uint64 // shorter than 48 bytes
	DroppedFormat      uint64 // length not a multiple of 4, or malformed extension fields
	DroppedVersion     uint64 // version 0 or above 4
	DroppedMode        uint64 // not a client or symmetric active request
	DroppedAuth        uint64 // carried a MAC or NTS fields
	DroppedTruncated   uint64 // longer than the receive buffer
	DroppedSourcePort  uint64 // from port 0
	SendErrors         uint64 // replies the kernel refused
	ReadErrors         uint64 // failed receive calls (not datagrams)
	MissingTimestamps  uint64 // datagrams without a kernel receive time
	ControlTruncations uint64 // datagrams whose control data was cut short
	KernelDrops        uint64 // datagrams the kernel dropped for a full receive buffer
}

// Dropped returns the total of the Dropped counters.
func (c Counters) Dropped() uint64 {
	return c.DroppedShort + c.DroppedFormat + c.DroppedVersion + c.DroppedMode +
		c.DroppedAuth + c.DroppedTruncated + c.DroppedSourcePort
}

// Indexes of the per-worker counters that are not verdicts.
const (
	countReceived = int(numVerdicts) + iota
	countSendErrors
	countReadErrors
	countMissingTimestamps
	countControlTruncations
	numCounts
)

// cacheLine is larger than the cache line of the CPUs fastntp runs on (64
// bytes, 128 with adjacent-line prefetch).
const cacheLine = 128

// workerCounters belong to one worker, which adds to them once per batch.
// Padding on both sides keeps them off the cache lines of whatever memory
// neighbours them, another worker's included, so workers on different cores
// never contend for a line.
type workerCounters struct {
	_      [cacheLine]byte
	counts [numCounts]atomic.Uint64
	_      [cacheLine]byte
}

// add publishes a batch's counts and clears them.
func (w *workerCounters) add(batch *[numCounts]uint64) {
	for i, n := range batch {
		if n != 0 {
			w.counts[i].Add(n)
			batch[i] = 0
		}
	}
}

func (c *Counters) addWorker(w *workerCounters) {
	get := func(i int) uint64 { return w.counts[i].Load() }
	c.Received += get(countReceived)
	c.Replied += get(int(reply))
	c.DroppedShort += get(int(dropShort))
	c.DroppedFormat += get(int(dropFormat))
	c.DroppedVersion += get(int(dropVersion))
	c.DroppedMode += get(int(dropMode))
	c.DroppedAuth += get(int(dropAuth))
	c.DroppedTruncated += get(int(dropTruncated))
	c.DroppedSourcePort += get(int(dropSourcePort))
	c.SendErrors += get(countSendErrors)
	c.ReadErrors += get(countReadErrors)
	c.MissingTimestamps += get(countMissingTimestamps)
	c.ControlTruncations += get(countControlTruncations)
}

package responder

import "sync/atomic"

// Counter names one of the server's counters. The table counterInfo is the
// one place a counter is defined: adding one there, and a constant here, is
// enough for it to be counted, logged and summed.
type Counter uint8

// The counters. A request that gets no reply is counted under exactly one of
// the Dropped counters; classify and handle return them as verdicts, with
// Replied for a request that deserves a reply.
const (
	Received Counter = iota
	Replied
	DroppedShort
	DroppedFormat
	DroppedVersion
	DroppedMode
	DroppedAuth
	DroppedTruncated
	DroppedSourcePort
	DroppedDenied
	DroppedRateLimited
	KoDSent
	ClientEvictions
	SendErrors
	ReadErrors
	MissingTimestamps
	ControlTruncations
	KernelDrops
	// NumCounters is the number of counters, not a counter.
	NumCounters
)

var counterInfo = [NumCounters]struct {
	name string // in logs: lower case, words joined by underscores
	drop bool   // a reason why a request got no reply
	help string
}{
	Received:           {"received", false, "datagrams read from the sockets"},
	Replied:            {"replied", false, "replies the kernel accepted for sending"},
	DroppedShort:       {"dropped_short", true, "requests shorter than the 48-byte NTP header"},
	DroppedFormat:      {"dropped_format", true, "requests whose length is not a multiple of 4, or with malformed extension fields"},
	DroppedVersion:     {"dropped_version", true, "requests of NTP version 0 or above 4"},
	DroppedMode:        {"dropped_mode", true, "datagrams that are not client or symmetric active requests"},
	DroppedAuth:        {"dropped_authenticated", true, "requests with a MAC or NTS fields, which fastntp cannot answer"},
	DroppedTruncated:   {"dropped_truncated", true, "datagrams longer than the receive buffer"},
	DroppedSourcePort:  {"dropped_source_port", true, "requests from port 0, which no reply can reach"},
	DroppedDenied:      {"dropped_denied", true, "requests from addresses the access rules deny"},
	DroppedRateLimited: {"dropped_rate_limited", true, "requests over their address's rate limit, dropped"},
	KoDSent:            {"kod_sent", false, "requests over their address's rate limit, answered with a RATE kiss-o'-death"},
	ClientEvictions:    {"client_records_evicted", false, "rate-limit records forgotten to make room for new addresses"},
	SendErrors:         {"send_errors", false, "replies the kernel refused"},
	ReadErrors:         {"read_errors", false, "failed receive calls (not datagrams)"},
	MissingTimestamps:  {"missing_timestamps", false, "requests without a kernel receive timestamp"},
	ControlTruncations: {"control_truncations", false, "datagrams whose control data was cut short"},
	KernelDrops:        {"kernel_drops", false, "datagrams the kernel dropped because a receive buffer was full"},
}

// String returns the counter's name as logs show it, such as
// "dropped_short".
func (c Counter) String() string {
	if c >= NumCounters {
		return "unknown"
	}
	return counterInfo[c].name
}

// Help describes what the counter counts.
func (c Counter) Help() string { return counterInfo[c].help }

// IsDrop reports whether the counter counts requests that got no reply for
// one reason.
func (c Counter) IsDrop() bool { return counterInfo[c].drop }

// Counters holds one value for every Counter: the server's totals since it
// started.
type Counters [NumCounters]uint64

// Dropped returns the total of the Dropped counters.
func (c *Counters) Dropped() uint64 {
	var sum uint64
	for k, n := range c {
		if Counter(k).IsDrop() {
			sum += n
		}
	}
	return sum
}

// cacheLine is larger than the cache line of the CPUs fastntp runs on (64
// bytes, 128 with adjacent-line prefetch).
const cacheLine = 128

// workerCounters belong to one worker, which adds to them once per batch.
// Padding on both sides keeps them off the cache lines of whatever memory
// neighbours them, another worker's included, so workers on different cores
// never contend for a line.
type workerCounters struct {
	_      [cacheLine]byte
	counts [NumCounters]atomic.Uint64
	_      [cacheLine]byte
}

// add publishes a batch's counts and clears them.
func (w *workerCounters) add(batch *Counters) {
	for i, n := range batch {
		if n != 0 {
			w.counts[i].Add(n)
			batch[i] = 0
		}
	}
}

// addTo adds the published counts to c.
func (w *workerCounters) addTo(c *Counters) {
	for i := range c {
		c[i] += w.counts[i].Load()
	}
}

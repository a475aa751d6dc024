package responder

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"net/netip"
	"time"
)

// RateLimit limits the responses to each client address, with the meaning
// and the arithmetic of chronyd's ratelimit directive (chrony's
// clientlog.c): a token bucket per address that refills at one response per
// 2^Interval seconds and holds Burst of them; a request that finds the
// bucket empty is still answered with probability 1/2^Leak, so that a
// client whose address an attacker spoofs is never cut off; and a client
// that sends faster when it gets no answers (more than twice as fast, as
// estimated) has the leak inverted, so that it gets most answers and stops
// adding traffic.
type RateLimit struct {
	// Interval is the log2 of the least mean interval between responses to
	// one address, in seconds: -19 to 12. chronyd's default is 3 (8 s).
	Interval int
	// Burst is how many responses an address may get back to back: 1 to
	// 255. chronyd's default is 8.
	Burst int
	// Leak is the log2 of the inverse chance that a limited request is
	// answered anyway: 1 to 4. chronyd's default is 2 (one in four).
	Leak int
	// KoD, if not zero (1 to 4), answers a limited request that is not let
	// through with a RATE kiss-o'-death with probability 1/2^KoD, as the
	// kod option of chronyds newer than 4.3 does. Zero drops them silently,
	// the safer default with clients that mishandle kiss codes.
	KoD int
	// Memory bounds the client records, in bytes, across all workers;
	// chronyd's clientloglimit. When a record's hash slot is full, the
	// address heard from least recently is forgotten: it starts again with
	// a full bucket, so a flood of spoofed addresses can only reset
	// clients, never make the table grow or deny anyone for long.
	Memory int
}

// DefaultRateLimit returns chronyd's defaults: interval 3, burst 8, leak 2,
// no kiss-o'-death, and a memory limit of chronyd's 524288 bytes.
func DefaultRateLimit() RateLimit {
	return RateLimit{Interval: 3, Burst: 8, Leak: 2, Memory: 524288}
}

// Bounds of the settings, chronyd's.
const (
	MinRateLimitInterval = -19
	MaxRateLimitInterval = 12
	maxRateLimitBurst    = 255
	maxLeak              = 4
	// minClientMemory is one slot of records.
	minClientMemory = slotSize * clientRecordSize
	// maxClientMemory is what chronyd allows (2^24 records of its size).
	maxClientMemory = 1 << 30
)

// Validate reports a setting out of range.
func (r RateLimit) Validate() error {
	if r.Interval < MinRateLimitInterval || r.Interval > MaxRateLimitInterval {
		return fmt.Errorf("rate limit interval %d is out of range %d..%d", r.Interval, MinRateLimitInterval, MaxRateLimitInterval)
	}
	if r.Burst < 1 || r.Burst > maxRateLimitBurst {
		return fmt.Errorf("rate limit burst %d is out of range 1..%d", r.Burst, maxRateLimitBurst)
	}
	if r.Leak < 1 || r.Leak > maxLeak {
		return fmt.Errorf("rate limit leak %d is out of range 1..%d", r.Leak, maxLeak)
	}
	if r.KoD < 0 || r.KoD > maxLeak {
		return fmt.Errorf("rate limit kiss-o'-death rate %d is out of range 0..%d", r.KoD, maxLeak)
	}
	if r.Memory < minClientMemory || r.Memory > maxClientMemory {
		return fmt.Errorf("client memory %d bytes is out of range %d..%d", r.Memory, minClientMemory, maxClientMemory)
	}
	return nil
}

// What a limiter decides for one request.
type limitVerdict uint8

const (
	limitPass limitVerdict = iota
	limitDrop
	limitKoD
)

// Times in client records are chronyd's: seconds in 32-bit fixed point with
// four fraction bits, wrapping every 8.5 years of seconds.
const (
	tsFrac    = 4
	invalidTS = 0
	// Request rates are log2 intervals scaled by rateScale, in an int8.
	rateScale   = 4
	minRate     = -14 * rateScale
	invalidRate = -128
)

// clientRecord is what a limiter knows of one address: 28 bytes.
type clientRecord struct {
	addr        [16]byte
	lastHit     uint32
	hits        uint16 // saturating; breaks ties between equally old records
	tokens      uint16
	rate        int8 // request rate when answered, scaled log2 of the interval, negated
	timeoutRate int8 // the same after requests that went unanswered
	used        bool
	dropped     bool // the last request was not answered
}

const (
	clientRecordSize = 28
	// slotBits sets the records per hash slot, as chronyd's: an address
	// can only live in its slot, whose least recently heard record makes
	// room for a new one.
	slotBits = 4
	slotSize = 1 << slotBits
)

// clientTable limits the rate of one worker's clients. With the workers'
// SO_REUSEPORT group steered by source address (batch.Config.SteerGroup)
// every request of an address reaches the same worker, so each worker owns
// its table and nothing is locked.
type clientTable struct {
	records      []clientRecord
	slots        uint64
	seed         maphash.Seed
	tsOffset     uint32 // nanoseconds, randomizing the alignment of the time fractions
	maxTokens    uint16
	tokensPerHit uint16
	tokenShift   int
	leak, kod    int
	random       *rand.PCG
	randomBits   uint64
	randomLeft   int
	evictions    uint64
}

// newClientTable returns a table for cfg whose records take at most
// memory bytes.
func newClientTable(cfg RateLimit, memory int) (*clientTable, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	slots := memory / (slotSize * clientRecordSize)
	if slots < 1 {
		return nil, errors.New("responder: client memory below one slot of records")
	}
	t := &clientTable{
		records:  make([]clientRecord, slots*slotSize),
		slots:    uint64(slots),
		seed:     maphash.MakeSeed(),
		tsOffset: rand.Uint32N(1e9 >> tsFrac),
		leak:     cfg.Leak,
		kod:      cfg.KoD,
		random:   rand.NewPCG(rand.Uint64(), rand.Uint64()),
	}
	t.setBucket(cfg.Interval, cfg.Burst)
	return t, nil
}

// setBucket computes the token bucket's parameters as chronyd's
// set_bucket_params does: one token per 1/16 s, shifted down so that a
// bucket of Burst responses fits in 16 bits, or, for intervals shorter
// than 1/16 s, shifted up.
func (t *clientTable) setBucket(interval, burst int) {
	if interval >= -tsFrac {
		for t.tokenShift = 0; t.tokenShift < interval+tsFrac; t.tokenShift++ {
			if burst<<(tsFrac+interval-t.tokenShift) < 1<<16 {
				break
			}
		}
	} else {
		t.tokenShift = interval + tsFrac
		burst = max(1<<-t.tokenShift, burst)
	}
	t.tokensPerHit = uint16(1) << (tsFrac + interval - t.tokenShift)
	t.maxTokens = t.tokensPerHit * uint16(burst)
}

// timestamp converts t to the records' fixed-point seconds.
func (t *clientTable) timestamp(now time.Time) uint32 {
	sec, nsec := uint32(now.Unix()), uint32(now.Nanosecond())+t.tsOffset
	if nsec >= 1e9 {
		nsec -= 1e9
		sec++
	}
	return sec<<tsFrac | uint32(uint64(nsec)<<tsFrac/1e9)
}

// check accounts for a request from addr at now and decides whether it is
// answered.
func (t *clientTable) check(addr netip.Addr, now time.Time) limitVerdict {
	r := t.record(addr.Unmap().As16())
	t.update(r, t.timestamp(now))
	return t.limit(r)
}

// record returns addr's record, making room for it if it is new.
func (t *clientTable) record(addr [16]byte) *clientRecord {
	// Scaling the hash's top bits to the slot count spreads addresses as
	// evenly as a modulo, without a division and for any number of slots.
	slot := uint32(maphash.Bytes(t.seed, addr[:]) >> 32 * t.slots >> 32)
	records := t.records[slot*slotSize : (slot+1)*slotSize]
	var oldest *clientRecord
	for i := range records {
		r := &records[i]
		if !r.used {
			oldest = r
			break
		}
		if r.addr == addr {
			return r
		}
		if oldest == nil || older(r, oldest) {
			oldest = r
		}
	}
	if oldest.used {
		t.evictions++
	}
	*oldest = clientRecord{addr: addr, used: true, tokens: t.maxTokens, rate: invalidRate, timeoutRate: invalidRate}
	return oldest
}

// older reports whether a was heard from before b, or as recently but less.
func older(a, b *clientRecord) bool {
	if a.lastHit != b.lastHit {
		return a.lastHit == invalidTS || (b.lastHit != invalidTS && int32(a.lastHit-b.lastHit) < 0)
	}
	return a.hits < b.hits
}

// update refills r's bucket for the time since its last request and
// updates its rate estimates, as chronyd's update_record does.
func (t *clientTable) update(r *clientRecord, now uint32) {
	prev := r.lastHit
	r.lastHit = now
	if r.hits < ^uint16(0) {
		r.hits++
	}
	interval := now - prev
	if prev == invalidTS || int32(interval) < 0 {
		return
	}
	var tokens uint32
	if t.tokenShift >= 0 {
		tokens = now>>t.tokenShift - prev>>t.tokenShift
	} else if interval > uint32(t.maxTokens) {
		tokens = uint32(t.maxTokens)
	} else {
		tokens = interval << -t.tokenShift
	}
	r.tokens = uint16(min(uint32(r.tokens)+tokens, uint32(t.maxTokens)))

	// The interval as a scaled, rounded log2.
	var interval2 int
	if interval != 0 {
		interval += interval >> 1
		for interval2 = -rateScale * tsFrac; interval2 < -minRate; interval2 += rateScale {
			if interval <= 1 {
				break
			}
			interval >>= 1
		}
	} else {
		interval2 = -rateScale * (tsFrac + 1)
	}
	rate := &r.rate
	if r.dropped {
		rate = &r.timeoutRate
	}
	// A rough exponential moving average.
	if *rate == invalidRate {
		*rate = int8(-interval2)
	} else if int(*rate) < -interval2 {
		*rate++
	} else if int(*rate) > -interval2 {
		if int(*rate) > rateScale*5/2-interval2 {
			*rate = int8(rateScale*5/2 - interval2)
		} else {
			*rate = int8((int(*rate) - interval2 - 1) / 2)
		}
	}
}

// limit decides on a request whose record was just updated, as chronyd's
// CLG_LimitServiceRate does.
func (t *clientTable) limit(r *clientRecord) limitVerdict {
	r.dropped = false
	if r.tokens >= t.tokensPerHit {
		r.tokens -= t.tokensPerHit
		return limitPass
	}
	drop := t.chance(t.leak)
	// A client that sends faster when unanswered gets the leak inverted.
	if r.timeoutRate != invalidRate && int(r.timeoutRate) > int(r.rate)+rateScale {
		drop = !drop
	}
	if !drop {
		r.tokens = 0
		return limitPass
	}
	if t.kod > 0 && !t.chance(t.kod) {
		return limitKoD
	}
	r.dropped = true
	return limitDrop
}

// chance returns false with probability 1/2^bits.
func (t *clientTable) chance(bits int) bool {
	if t.randomLeft < bits {
		t.randomBits, t.randomLeft = t.random.Uint64(), 64
	}
	v := t.randomBits & (1<<bits - 1)
	t.randomBits >>= bits
	t.randomLeft -= bits
	return v != 0
}

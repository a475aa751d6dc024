package responder

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
	"unsafe"
)

func TestClientRecordSize(t *testing.T) {
	if got := unsafe.Sizeof(clientRecord{}); got != clientRecordSize {
		t.Errorf("a client record takes %d bytes, the memory accounting says %d", got, clientRecordSize)
	}
}

func newTable(t *testing.T, cfg RateLimit) *clientTable {
	t.Helper()
	table, err := newClientTable(cfg, cfg.Memory)
	if err != nil {
		t.Fatal(err)
	}
	return table
}

// share sends requests from addr every gap for d and returns the share
// that got an answer (a reply or a kiss-o'-death).
func share(table *clientTable, addr netip.Addr, start time.Time, gap, d time.Duration) float64 {
	answered, sent := 0, 0
	for at := start; at.Sub(start) < d; at = at.Add(gap) {
		sent++
		if table.check(addr, at) != limitDrop {
			answered++
		}
	}
	return float64(answered) / float64(sent)
}

// The bucket's arithmetic, as chronyd's: a new address gets its burst at
// once, then one response per interval; the rest of a burst waits.
func TestRateLimitBucket(t *testing.T) {
	cfg := RateLimit{Interval: 0, Burst: 4, Leak: 4, Memory: 1 << 16} // one per second, a leak of 1/16
	table := newTable(t, cfg)
	client := netip.MustParseAddr("192.0.2.1")
	now := time.Unix(1_700_000_000, 0)
	for i := range 4 {
		if v := table.check(client, now); v != limitPass {
			t.Fatalf("request %d of a burst of 4: %v", i+1, v)
		}
	}
	limited := 0
	for range 64 {
		if table.check(client, now) == limitDrop {
			limited++
		}
	}
	if limited < 48 {
		t.Errorf("%d of 64 requests beyond the burst dropped, want about 60 (a leak of 1/16)", limited)
	}
	// A second later there is a token again, whatever leaked before.
	table = newTable(t, cfg)
	for range 4 {
		table.check(client, now)
	}
	if v := table.check(client, now.Add(time.Second)); v != limitPass {
		t.Errorf("a second after the burst: %v, want a response", v)
	}
}

// A client under its limit is always answered; one above it gets a share
// that falls with its rate but never to zero.
func TestRateLimitShare(t *testing.T) {
	cfg := RateLimit{Interval: -2, Burst: 4, Leak: 2, Memory: 1 << 16} // four per second
	start := time.Unix(1_700_000_000, 0)
	client := netip.MustParseAddr("2001:db8::1")
	if got := share(newTable(t, cfg), client, start, 500*time.Millisecond, time.Minute); got != 1 {
		t.Errorf("at half the limit %.2f answered, want all", got)
	}
	prev := 1.0
	for _, factor := range []int{4, 8, 32} {
		got := share(newTable(t, cfg), client, start, time.Second/time.Duration(4*factor), time.Minute)
		// About the leak's quarter at least; less than at a lower rate. (A
		// leaked response empties the bucket, so the share is below the
		// limit's plus the leak's: chronyd's arithmetic, compared against
		// chronyd itself by TestRateLimitAgainstChronyd.)
		if got < 0.22 || got >= prev {
			t.Errorf("at %dx the limit %.3f answered, want at least about 0.25 and less than at a lower rate (%.3f)", factor, got, prev)
		}
		prev = got
	}
}

// A client that sends faster when it gets no answers is answered more,
// not less (chronyd's inverted leak), so that it stops adding traffic.
func TestRateLimitInvertsLeakForRetryingClients(t *testing.T) {
	cfg := RateLimit{Interval: 0, Burst: 1, Leak: 2, Memory: 1 << 16}
	table := newTable(t, cfg)
	client := netip.MustParseAddr("192.0.2.7")
	at := time.Unix(1_700_000_000, 0)
	answered, sent := 0, 0
	for range 2000 {
		sent++
		gap := 500 * time.Millisecond // twice the limit when answered
		if table.check(client, at) != limitDrop {
			answered++
		} else {
			gap = 30 * time.Millisecond // and far faster when not
		}
		at = at.Add(gap)
	}
	if got := float64(answered) / float64(sent); got < 0.5 {
		t.Errorf("a client retrying fast when unanswered got %.2f of its requests answered, want most", got)
	}
}

func TestRateLimitKoD(t *testing.T) {
	cfg := RateLimit{Interval: 0, Burst: 1, Leak: 4, KoD: 1, Memory: 1 << 16}
	table := newTable(t, cfg)
	client := netip.MustParseAddr("192.0.2.9")
	now := time.Unix(1_700_000_000, 0)
	table.check(client, now)
	kods, drops := 0, 0
	for range 1000 {
		switch table.check(client, now) {
		case limitKoD:
			kods++
		case limitDrop:
			drops++
		}
	}
	if kods < 350 || kods > 600 || drops < 350 {
		t.Errorf("%d kiss-o'-death and %d drops of about 940 limited requests, want about half each", kods, drops)
	}
}

// The table never grows: a new address takes the place of the one heard
// from least recently in its slot, which starts again with a full bucket.
func TestClientTableEviction(t *testing.T) {
	cfg := RateLimit{Interval: 3, Burst: 1, Leak: 4, Memory: slotSize * clientRecordSize} // one slot
	table := newTable(t, cfg)
	if len(table.records) != slotSize {
		t.Fatalf("%d records for one slot's memory", len(table.records))
	}
	now := time.Unix(1_700_000_000, 0)
	victim := netip.MustParseAddr("192.0.2.1")
	table.check(victim, now)
	if table.check(victim, now) == limitPass {
		t.Log("leaked") // possible, 1/16
	}
	for i := range slotSize {
		table.check(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), now.Add(time.Second))
	}
	if table.evictions != 1 {
		t.Errorf("%d evictions, want 1", table.evictions)
	}
	if v := table.check(victim, now.Add(2*time.Second)); v != limitPass {
		t.Errorf("the evicted client, heard again: %v, want a fresh bucket", v)
	}
}

func TestRateLimitValidate(t *testing.T) {
	for _, cfg := range []RateLimit{
		{Interval: -20, Burst: 8, Leak: 2, Memory: 1 << 20},
		{Interval: 13, Burst: 8, Leak: 2, Memory: 1 << 20},
		{Interval: 3, Burst: 0, Leak: 2, Memory: 1 << 20},
		{Interval: 3, Burst: 256, Leak: 2, Memory: 1 << 20},
		{Interval: 3, Burst: 8, Leak: 0, Memory: 1 << 20},
		{Interval: 3, Burst: 8, Leak: 5, Memory: 1 << 20},
		{Interval: 3, Burst: 8, Leak: 2, KoD: 5, Memory: 1 << 20},
		{Interval: 3, Burst: 8, Leak: 2, Memory: 100},
	} {
		if cfg.Validate() == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if err := DefaultRateLimit().Validate(); err != nil {
		t.Errorf("chronyd's defaults: %v", err)
	}
	// The bounds themselves are allowed.
	for _, cfg := range []RateLimit{
		{Interval: MinRateLimitInterval, Burst: 1, Leak: 1, Memory: minClientMemory},
		{Interval: MaxRateLimitInterval, Burst: maxRateLimitBurst, Leak: maxLeak, KoD: maxLeak, Memory: maxClientMemory},
	} {
		if err := cfg.Validate(); err != nil {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	// Every interval chronyd accepts gives a bucket that fits in 16 bits.
	for interval := MinRateLimitInterval; interval <= MaxRateLimitInterval; interval++ {
		for _, burst := range []int{1, 8, 255} {
			table := newTable(t, RateLimit{Interval: interval, Burst: burst, Leak: 2, Memory: 1 << 12})
			if table.tokensPerHit == 0 || table.maxTokens < table.tokensPerHit {
				t.Errorf("interval %d burst %d: %d tokens per response, %d at most", interval, burst, table.tokensPerHit, table.maxTokens)
			}
		}
	}
}

func TestRateLimitAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are checked by the run without -race")
	}
	table := newTable(t, DefaultRateLimit())
	now := time.Now()
	i := 0
	if n := testing.AllocsPerRun(1000, func() {
		i++
		table.check(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), now)
	}); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}

// The records fill the memory they are given, to the last whole slot.
func TestClientTableSize(t *testing.T) {
	for _, tc := range []struct{ memory, records int }{
		{slotSize * clientRecordSize, slotSize},
		{2*slotSize*clientRecordSize - 1, slotSize},
		{524288, 1170 * slotSize},
		{4 << 20, 9362 * slotSize},
	} {
		table, err := newClientTable(DefaultRateLimit(), tc.memory)
		if err != nil {
			t.Fatal(err)
		}
		if len(table.records) != tc.records {
			t.Errorf("%d bytes: %d records, want %d", tc.memory, len(table.records), tc.records)
		}
		if size := len(table.records) * int(unsafe.Sizeof(clientRecord{})); size > tc.memory {
			t.Errorf("%d bytes: records take %d", tc.memory, size)
		}
	}
	if _, err := newClientTable(DefaultRateLimit(), slotSize*clientRecordSize-1); err == nil {
		t.Error("a table smaller than a slot was made")
	}
}

// The bucket's parameters, as chronyd's set_bucket_params computes them: a
// token per 1/16 s, shifted down until a burst's worth fits in 16 bits, or
// up for intervals under 1/16 s.
func TestSetBucket(t *testing.T) {
	for _, tt := range []struct {
		interval, burst         int
		shift                   int
		tokensPerHit, maxTokens uint16
	}{
		{3, 8, 0, 128, 1024},
		{0, 255, 0, 16, 4080},
		{12, 255, 8, 256, 65280},
		{12, 1, 1, 32768, 32768},
		{6, 255, 2, 256, 65280},
		{-4, 8, 0, 1, 8},
		{-5, 8, -1, 1, 8},
		{-19, 8, -15, 1, 32768},
	} {
		var table clientTable
		table.setBucket(tt.interval, tt.burst)
		if table.tokenShift != tt.shift || table.tokensPerHit != tt.tokensPerHit || table.maxTokens != tt.maxTokens {
			t.Errorf("interval %d burst %d: shift %d, %d tokens a hit, %d at most; want %d, %d, %d", tt.interval, tt.burst,
				table.tokenShift, table.tokensPerHit, table.maxTokens, tt.shift, tt.tokensPerHit, tt.maxTokens)
		}
	}
}

// A record's rate estimate follows chronyd's update_record step by step:
// these are the values chrony's own code computes for the same requests,
// 1/16 s apart by the steps given.
func TestRateEstimate(t *testing.T) {
	table := clientTable{}
	table.setBucket(3, 8)
	r := clientRecord{rate: invalidRate, timeoutRate: invalidRate}
	now := uint32(1000 << tsFrac)
	for i, step := range []struct {
		after uint32
		rate  int8
	}{{0, invalidRate}, {16, 0}, {4, 1}, {128, -2}, {128, -7}, {0, -6}, {1 << 20, -46}, {1, -45}, {2, -44}, {3, -43}, {24, -42}, {40, -41}} {
		now += step.after
		table.update(&r, now)
		if r.rate != step.rate {
			t.Fatalf("request %d, %d/16 s after the last: rate %d, want chronyd's %d", i+1, step.after, r.rate, step.rate)
		}
	}
	// A dropped request's successor updates the rate of unanswered
	// requests instead.
	r.dropped = true
	table.update(&r, now+16)
	if r.rate != -41 || r.timeoutRate != 0 {
		t.Errorf("after a drop: rate %d, timeout rate %d; want -41 and 0", r.rate, r.timeoutRate)
	}
}

// Tokens accrue with the time between requests, up to the bucket's size,
// for intervals above and below 1/16 s.
func TestTokens(t *testing.T) {
	for _, tt := range []struct {
		interval, burst int
		after           uint32 // 1/16 s
		from, want      uint16
	}{
		{3, 8, 16, 0, 16},        // 1 s: 16 tokens, at a token per 1/16 s
		{3, 8, 1 << 10, 0, 1024}, // a minute: full
		{-5, 8, 1, 0, 2},         // 1/16 s at 1/32 s a response: two tokens
		{-5, 8, 100, 0, 8},       // full
		{-5, 8, 9, 0, 8},         // beyond the bucket, in one step
	} {
		var table clientTable
		table.setBucket(tt.interval, tt.burst)
		r := clientRecord{lastHit: 1000 << tsFrac, tokens: tt.from, rate: invalidRate, timeoutRate: invalidRate}
		table.update(&r, r.lastHit+tt.after)
		if r.tokens != tt.want {
			t.Errorf("interval %d burst %d, %d/16 s later: %d tokens, want %d", tt.interval, tt.burst, tt.after, r.tokens, tt.want)
		}
	}
}

// A rate already at the estimate of the latest interval stays there; one
// above it moves halfway down, one far above it to 10 (2.5 doublings)
// above; one below moves up by one.
func TestRateMoves(t *testing.T) {
	var table clientTable
	table.setBucket(3, 8)
	for _, tt := range []struct {
		rate  int8
		after uint32 // 1/16 s
		want  int8
	}{
		{0, 16, 0}, // 1 s: estimate 0
		{4, 8, 4},  // 1/2 s: estimate 4
		{5, 8, 4},  // (5+4-1)/2
		{20, 8, 14},
		{3, 8, 4},
		{15, 0, 16}, // the same instant: estimate 20
	} {
		r := clientRecord{lastHit: 1000 << tsFrac, rate: tt.rate, timeoutRate: invalidRate}
		table.update(&r, r.lastHit+tt.after)
		if r.rate != tt.want {
			t.Errorf("rate %d, %d/16 s later: %d, want %d", tt.rate, tt.after, r.rate, tt.want)
		}
	}
}

// A request at the same instant as the last counts (a rate at 1/32 s);
// one dated before it (a clock step) counts nothing.
func TestUpdateAtTheSameTime(t *testing.T) {
	var table clientTable
	table.setBucket(3, 8)
	r := clientRecord{lastHit: 1000 << tsFrac, rate: 0, timeoutRate: invalidRate}
	table.update(&r, r.lastHit)
	if r.rate != 1 || r.hits != 1 {
		t.Errorf("same instant: rate %d, %d hits; want 1 and 1", r.rate, r.hits)
	}
	table.update(&r, r.lastHit-16)
	if r.rate != 1 || r.hits != 2 || r.lastHit != 999<<tsFrac {
		t.Errorf("a second earlier: rate %d, %d hits, last %d; want the rate kept", r.rate, r.hits, r.lastHit)
	}
}

// The hit count stops at its largest value rather than wrap.
func TestHitsSaturate(t *testing.T) {
	var table clientTable
	table.setBucket(3, 8)
	r := clientRecord{hits: 65534, rate: invalidRate, timeoutRate: invalidRate}
	table.update(&r, 1000<<tsFrac)
	table.update(&r, 1001<<tsFrac)
	if r.hits != 65535 {
		t.Errorf("%d hits, want 65535", r.hits)
	}
}

// Records' times are seconds in fixed point, their fraction offset by a
// random share of a second that carries into the seconds.
func TestTimestamp(t *testing.T) {
	table := clientTable{tsOffset: 1}
	for _, tt := range []struct {
		sec, nsec int64
		want      uint32
	}{
		{101, 0, 101 << tsFrac},
		{101, 999_999_998, 101<<tsFrac | 15},
		{101, 999_999_999, 102 << tsFrac}, // with the offset, a whole second
		{101, 500_000_000, 101<<tsFrac | 8},
	} {
		if got := table.timestamp(time.Unix(tt.sec, tt.nsec)); got != tt.want {
			t.Errorf("%d.%09d: %d, want %d", tt.sec, tt.nsec, got, tt.want)
		}
	}
}

// Of two records, the one heard from earlier is older, by the clock of
// records that wraps; a record never heard from is the oldest; at the same
// time, the one with fewer hits.
func TestOlder(t *testing.T) {
	for _, tt := range []struct {
		name string
		a, b clientRecord
		want bool
	}{
		{"earlier", clientRecord{lastHit: 10}, clientRecord{lastHit: 20}, true},
		{"later", clientRecord{lastHit: 20}, clientRecord{lastHit: 10}, false},
		{"across the wrap", clientRecord{lastHit: 0xfffffff0}, clientRecord{lastHit: 0x10}, true},
		{"never heard", clientRecord{lastHit: invalidTS}, clientRecord{lastHit: 20}, true},
		{"than one never heard", clientRecord{lastHit: 20}, clientRecord{lastHit: invalidTS}, false},
		{"fewer hits", clientRecord{lastHit: 20, hits: 1}, clientRecord{lastHit: 20, hits: 2}, true},
		{"more hits", clientRecord{lastHit: 20, hits: 2}, clientRecord{lastHit: 20, hits: 1}, false},
		{"same hits", clientRecord{lastHit: 20, hits: 2}, clientRecord{lastHit: 20, hits: 2}, false},
	} {
		if got := older(&tt.a, &tt.b); got != tt.want {
			t.Errorf("%s: older = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Addresses spread over the slots: a table of four slots holds half its
// records' worth of addresses without evicting one.
func TestSlotsSpread(t *testing.T) {
	cfg := RateLimit{Interval: 3, Burst: 8, Leak: 2, Memory: 4 * slotSize * clientRecordSize}
	table := newTable(t, cfg)
	if table.slots != 4 {
		t.Fatalf("%d slots", table.slots)
	}
	now := time.Unix(1_700_000_000, 0)
	for i := range 2 * slotSize {
		table.check(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), now)
	}
	if table.evictions != 0 {
		t.Errorf("%d evictions for %d addresses in %d records", table.evictions, 2*slotSize, 4*slotSize)
	}
}

// The leak is inverted only for a client whose rate of unanswered requests
// is more than twice (a scaled log2 of 1) its rate of answered ones.
func TestLeakInversion(t *testing.T) {
	for _, tt := range []struct {
		rate, timeoutRate int8
		inverted          bool
	}{{0, invalidRate, false}, {0, 4, false}, {0, 5, true}, {-8, -3, true}} {
		table := clientTable{leak: 4}
		table.setBucket(3, 8)
		// Random bits of zero: the leak answers (chance is false).
		table.randomLeft = 64
		r := clientRecord{rate: tt.rate, timeoutRate: tt.timeoutRate}
		want := limitPass
		if tt.inverted {
			want = limitDrop
		}
		if got := table.limit(&r); got != want {
			t.Errorf("rate %d, timeout rate %d: %v, want %v", tt.rate, tt.timeoutRate, got, want)
		}
	}
}

// chance draws bits from its store of random bits, and refills it only
// when too few are left.
func TestChance(t *testing.T) {
	table := clientTable{randomBits: 0b0110, randomLeft: 4}
	for i, want := range []bool{true, true} { // 0b10, then 0b01
		if got := table.chance(2); got != want {
			t.Fatalf("draw %d: %v, want %v", i+1, got, want)
		}
	}
	if table.randomLeft != 0 {
		t.Fatalf("%d bits left, want 0", table.randomLeft)
	}
	table = clientTable{randomBits: 0b00, randomLeft: 2, random: rand.NewPCG(1, 2)}
	if table.chance(2) {
		t.Error("the last two bits, both zero, drew true: the store was refilled too early")
	}
}

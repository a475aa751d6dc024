package responder

import (
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

package responder

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func rule(allow bool, prefix string) AccessRule {
	return AccessRule{Prefix: netip.MustParsePrefix(prefix), Allow: allow}
}

// chronyd's precedence: the most specific matching rule wins, whatever the
// order; for the same prefix the later rule wins. What no rule matches
// follows fastntp's own default, as the code documents: with any allow rule
// the rest is denied; with deny rules alone, or none, the rest is served,
// as rsntp serves everyone (chronyd with no allow rule serves no one).
func TestAccessList(t *testing.T) {
	tests := []struct {
		name  string
		rules []AccessRule
		allow []string
		deny  []string
	}{
		{name: "no rules: everyone", allow: []string{"192.0.2.1", "2001:db8::1"}},
		{name: "deny only", rules: []AccessRule{rule(false, "10.0.0.0/8")},
			allow: []string{"192.0.2.1", "::1"}, deny: []string{"10.1.2.3", "::ffff:10.1.2.3"}},
		{name: "allow only: an allowlist", rules: []AccessRule{rule(true, "192.0.2.0/24")},
			allow: []string{"192.0.2.200", "::ffff:192.0.2.1"}, deny: []string{"198.51.100.1", "2001:db8::1"}},
		{name: "the more specific wins, in either order",
			rules: []AccessRule{rule(false, "10.1.0.0/16"), rule(true, "10.0.0.0/8"), rule(true, "10.1.2.0/24")},
			allow: []string{"10.2.0.1", "10.1.2.3"}, deny: []string{"10.1.3.1", "11.0.0.1"}},
		{name: "the later rule for the same prefix wins",
			rules: []AccessRule{rule(true, "0.0.0.0/0"), rule(false, "192.0.2.0/24"), rule(true, "192.0.2.0/24")},
			allow: []string{"192.0.2.5", "203.0.113.9"}, deny: []string{"2001:db8::1"}},
		{name: "host routes and IPv6",
			rules: []AccessRule{rule(true, "::/0"), rule(true, "0.0.0.0/0"), rule(false, "2001:db8::/32"), rule(false, "192.0.2.7/32")},
			allow: []string{"2001:db9::1", "192.0.2.8"}, deny: []string{"2001:db8:1::1", "192.0.2.7", "::ffff:192.0.2.7"}},
		{name: "an IPv4-mapped prefix is IPv4", rules: []AccessRule{rule(false, "::ffff:10.0.0.0/104")},
			allow: []string{"11.0.0.1"}, deny: []string{"10.9.9.9"}},
		{name: "all of the IPv4-mapped space is all of IPv4", rules: []AccessRule{rule(false, "::ffff:0.0.0.0/96")},
			allow: []string{"2001:db8::1"}, deny: []string{"192.0.2.1", "::ffff:198.51.100.1"}},
		{name: "unmasked prefixes are masked", rules: []AccessRule{rule(false, "10.1.2.3/8")},
			deny: []string{"10.200.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := NewAccessList(tt.rules)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range tt.allow {
				if !l.Allowed(netip.MustParseAddr(a)) {
					t.Errorf("%s denied, want allowed", a)
				}
			}
			for _, a := range tt.deny {
				if l.Allowed(netip.MustParseAddr(a)) {
					t.Errorf("%s allowed, want denied", a)
				}
			}
		})
	}
	if _, err := NewAccessList([]AccessRule{{}}); err == nil {
		t.Error("an invalid prefix was accepted")
	}
}

// manyRules returns n deny rules of /24s and /48s, half of each family.
func manyRules(n int) []AccessRule {
	rules := make([]AccessRule, n)
	for i := range rules {
		if i%2 == 0 {
			rules[i] = rule(false, fmt.Sprintf("10.%d.%d.0/24", i>>8&255, i&255))
		} else {
			rules[i] = rule(false, fmt.Sprintf("2001:db8:%x::/48", i))
		}
	}
	return rules
}

func TestAccessListAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are checked by the run without -race")
	}
	l, err := NewAccessList(manyRules(10000))
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("10.3.8.1") // in rule 776
	if n := testing.AllocsPerRun(1000, func() { l.Allowed(addr) }); n != 0 {
		t.Errorf("%v allocations per lookup", n)
	}
	if l.Allowed(addr) || !l.Allowed(netip.MustParseAddr("192.0.2.1")) || l.Len() != 10000 {
		t.Error("10,000 rules misapplied")
	}
}

// BenchmarkAccessList shows that a lookup costs the same with 10 rules as
// with 10,000.
func BenchmarkAccessList(b *testing.B) {
	for _, n := range []int{10, 10000} {
		l, err := NewAccessList(manyRules(n))
		if err != nil {
			b.Fatal(err)
		}
		addrs := []netip.Addr{netip.MustParseAddr("10.3.8.1"), netip.MustParseAddr("192.0.2.1"),
			netip.MustParseAddr("2001:db8:5::1"), netip.MustParseAddr("2001:db9::1")}
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				l.Allowed(addrs[i&3])
				i++
			}
		})
	}
}

func BenchmarkRateLimit(b *testing.B) {
	table, err := newClientTable(DefaultRateLimit(), 1<<20)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	i := 0
	for b.Loop() {
		i++
		table.check(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), now)
	}
}

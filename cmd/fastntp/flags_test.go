package main

import (
	"net/netip"
	"testing"
)

// FuzzParseNetwork checks that any text is either refused or read as
// valid prefixes that read back the same from their own text.
func FuzzParseNetwork(f *testing.F) {
	for _, s := range []string{"all", "192.0.2.0/24", "192.0.2.1", "2001:db8::/32", "::ffff:10.0.0.0/104",
		"10.1.2.3/8", "fe80::1%eth0", "1.2.3.4/", "/8", "::/0", "0.0.0.0/0", "", "10.0.0.0/33", "1.2.3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		prefixes, err := parseNetwork(s)
		if err != nil {
			if prefixes != nil {
				t.Errorf("parseNetwork(%q) returned %v with error %v", s, prefixes, err)
			}
			return
		}
		if len(prefixes) == 0 {
			t.Fatalf("parseNetwork(%q) returned nothing", s)
		}
		for _, p := range prefixes {
			if !p.IsValid() || p.Addr().Zone() != "" {
				t.Fatalf("parseNetwork(%q) returned %v", s, p)
			}
			again, err := parseNetwork(p.String())
			if err != nil || len(again) != 1 || again[0] != p {
				t.Errorf("%q read as %v, whose text reads as %v, %v", s, p, again, err)
			}
		}
		if s != "all" {
			want, err := netip.ParsePrefix(s)
			if err != nil {
				want = netip.PrefixFrom(netip.MustParseAddr(s), netip.MustParseAddr(s).BitLen())
			}
			if prefixes[0] != want {
				t.Errorf("parseNetwork(%q) = %v, want %v", s, prefixes[0], want)
			}
		}
	})
}

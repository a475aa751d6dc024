package xdp

import "testing"

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModeAuto, ModeNative, ModeGeneric} {
		if got, ok := ParseMode(m.String()); !ok || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), got, ok)
		}
	}
	for _, s := range []string{"", "skb", "Native", "offload"} {
		if _, ok := ParseMode(s); ok {
			t.Errorf("ParseMode(%q) accepted", s)
		}
	}
}

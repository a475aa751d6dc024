package responder

import (
	"fmt"
	"net/netip"

	"github.com/gaissmai/bart"
)

// AccessList decides which clients are served, as chronyd's allow and deny
// directives do: the rule with the most specific prefix that contains a
// client's address applies, and a later rule for the same prefix replaces an
// earlier one. Where no rule applies, a list with allow rules denies (allow
// names the networks served) and a list with only deny rules allows, so
// that an empty list serves everyone, as rsntp does.
//
// Lookups cost the same however many rules there are: the rules sit in a
// prefix table (github.com/gaissmai/bart, a compressed multibit trie) whose
// lookup walks at most one node per byte of the address.
type AccessList struct {
	table        bart.Table[bool]
	defaultAllow bool
	rules        int
}

// AccessRule is one allow or deny rule.
type AccessRule struct {
	Prefix netip.Prefix
	Allow  bool
}

// NewAccessList builds a list from rules, in order. Prefixes are masked to
// their length, and IPv4-mapped IPv6 prefixes are taken as IPv4.
func NewAccessList(rules []AccessRule) (*AccessList, error) {
	l := &AccessList{defaultAllow: true}
	for _, r := range rules {
		if !r.Prefix.IsValid() {
			return nil, fmt.Errorf("access rule: invalid prefix %v", r.Prefix)
		}
		l.table.Insert(canonicalPrefix(r.Prefix), r.Allow)
		if r.Allow {
			l.defaultAllow = false
		}
		l.rules++
	}
	return l, nil
}

// canonicalPrefix masks p and turns an IPv4-mapped IPv6 prefix into IPv4.
func canonicalPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// Allowed reports whether addr may be served. An IPv4-mapped IPv6 address
// is looked up as IPv4.
func (l *AccessList) Allowed(addr netip.Addr) bool {
	if allow, ok := l.table.Lookup(addr.Unmap()); ok {
		return allow
	}
	return l.defaultAllow
}

// Len returns the number of rules.
func (l *AccessList) Len() int { return l.rules }

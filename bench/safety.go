package bench

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// CheckTarget refuses to aim load at anything but this host: a loopback
// address, an address of one of its interfaces, or one of a network
// namespace on it that ip netns names (where a raw-frame generator's
// server runs). allowRemote lifts the rule, for an operator testing a
// server of their own across a network.
func CheckTarget(addr netip.AddrPort, allowRemote bool) error {
	if !addr.IsValid() || addr.Port() == 0 {
		return fmt.Errorf("invalid target %v", addr)
	}
	a := addr.Addr().Unmap()
	if allowRemote || a.IsLoopback() {
		return nil
	}
	ifaceAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("list local addresses: %w", err)
	}
	for _, ia := range ifaceAddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil && p.Addr().Unmap() == a {
			return nil
		}
	}
	inNamespaces, err := namespaceAddresses()
	if err != nil {
		return fmt.Errorf("list the addresses of this host's network namespaces: %w", err)
	}
	if slices.Contains(inNamespaces, a) {
		return nil
	}
	return fmt.Errorf("refusing to load %s: it is not an address of this host (pass --allow-remote to load a server you run elsewhere)", addr)
}

//go:build !linux

package bench

import (
	"errors"
	"net/netip"
)

// newRawEngine fails: the raw-frame generator needs Linux's packet rings.
func newRawEngine(FloodConfig) (engine, error) {
	return nil, errors.New("bench: the raw-frame generator needs Linux")
}

// namespaceAddresses returns nothing: named network namespaces are Linux's.
func namespaceAddresses() ([]netip.Addr, error) { return nil, nil }

//go:build !linux

package bench

import (
	"errors"
	"net/netip"
)

// rawEngine is the raw-frame generator, which needs Linux's packet rings.
type rawEngine struct{ socketEngine }

func newRawEngine(FloodConfig) (*rawEngine, error) {
	return nil, errors.New("bench: the raw-frame generator needs Linux")
}

// namespaceAddresses returns nothing: named network namespaces are Linux's.
func namespaceAddresses() ([]netip.Addr, error) { return nil, nil }

//go:build !linux

package egress

import (
	"context"
	"errors"
)

// Available reports whether this build can stamp at the device.
const Available = false

// errUnavailable is returned by Attach outside Linux.
var errUnavailable = errors.New("egress: stamping at the device needs Linux's eBPF")

// Stamper is an eBPF program attached to network devices. Outside Linux
// there is none.
type Stamper struct{}

// Attach fails outside Linux.
func Attach() (*Stamper, error) { return nil, errUnavailable }

// Devices returns nothing outside Linux.
func (s *Stamper) Devices() []string { return nil }

// Refused returns nothing outside Linux.
func (s *Stamper) Refused() []string { return nil }

// Add fails outside Linux.
func (s *Stamper) Add(cookie uint64) error { return errUnavailable }

// Counts fails outside Linux.
func (s *Stamper) Counts() (Counts, error) { return Counts{}, errUnavailable }

// Run returns at once outside Linux.
func (s *Stamper) Run(ctx context.Context, report func(Event)) error { return nil }

// Close does nothing outside Linux.
func (s *Stamper) Close() error { return nil }

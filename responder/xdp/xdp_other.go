//go:build !linux

package xdp

import (
	"context"
	"errors"

	"github.com/fastntp/fastntp/upstream"
)

// Available reports whether this build has the fast path.
const Available = false

// Device is a device the program is attached to, and how.
type Device struct {
	Name string
	Mode Mode
}

// Path is the program, attached to its devices; on this system there is
// none.
type Path struct{}

// Source provides the state to serve.
type Source interface {
	Load() *upstream.Snapshot
}

var errUnsupported = errors.New("xdp: the fast path needs Linux")

// Attach fails: XDP is Linux's.
func Attach(Config) (*Path, error) { return nil, errUnsupported }

// Attached reports false.
func (p *Path) Attached() bool { return false }

// Devices returns nothing.
func (p *Path) Devices() []Device { return nil }

// Publish fails.
func (p *Path) Publish(*upstream.Snapshot) error { return errUnsupported }

// Run fails.
func (p *Path) Run(context.Context, Source) error { return errUnsupported }

// Counts fails.
func (p *Path) Counts() (Counts, error) { return Counts{}, errUnsupported }

// Close does nothing.
func (p *Path) Close() error { return nil }

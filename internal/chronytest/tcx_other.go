//go:build !linux

package chronytest

import (
	"errors"
	"testing"
)

// TCX return codes of the programs OtherProgram attaches.
const (
	TCXPass = 0
	TCXNext = -1
)

// OtherProgram needs Linux's TCX.
func OtherProgram(t testing.TB, ns, device string, code int32, head bool) (detach func(), err error) {
	t.Skip("TCX programs need Linux")
	return nil, errors.New("unreachable")
}

// FillEgress needs Linux's TCX.
func FillEgress(t testing.TB, ns, device string) { t.Skip("TCX programs need Linux") }

// DropIngress needs Linux.
func DropIngress(t testing.TB, ns, device string) { t.Skip("TCX programs need Linux") }

// XDPPeer needs Linux.
func XDPPeer(t testing.TB, ns, device, name string) { t.Skip("XDP programs need Linux") }

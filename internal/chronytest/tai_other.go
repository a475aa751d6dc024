//go:build !linux

package chronytest

import "testing"

// KeepTAI does nothing where fastntp does not stamp at the device.
func KeepTAI(t testing.TB) {}

// ChangeTAI needs Linux's adjtimex.
func ChangeTAI(t testing.TB) func(seconds int) {
	t.Skip("the TAI offset is changed with Linux's adjtimex")
	return nil
}

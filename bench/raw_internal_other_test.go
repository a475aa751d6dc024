//go:build !linux

package bench

import "testing"

// checkRawReply has no raw generator to check without Linux.
func checkRawReply(t *testing.T, frame []byte) {}

package batch

import "net/netip"

// steerMultiplier is the golden-ratio constant of Knuth's multiplicative
// hashing: it spreads addresses that differ in a few low bits, as the
// addresses of one network do, over the whole 32-bit range.
const steerMultiplier = 0x9E3779B1

// SteerIndex returns the socket, counted in the order the sockets of a
// group of n were bound, that a Config with SteerGroup n hands datagrams
// from addr to. It is the hash the kernel runs, written in Go for tests and
// for tools that need to predict which worker serves a client.
func SteerIndex(addr netip.Addr, n int) int {
	if n <= 1 {
		return 0
	}
	return int(steerHash(addr) % uint32(n))
}

// steerHash folds an address to 32 bits, then mixes them: IPv6 addresses
// are the XOR of their four words.
func steerHash(addr netip.Addr) uint32 {
	var folded uint32
	if addr.Is4() {
		b := addr.As4()
		folded = uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	} else {
		b := addr.As16()
		for i := 0; i < 16; i += 4 {
			folded ^= uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3])
		}
	}
	return folded * steerMultiplier >> 16
}

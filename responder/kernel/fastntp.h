// fastntp.h: what fastntp's kernel programs share. The layouts here are
// mirrored by the Go types bpf2go generates from them (see gen.go); change
// them here and run make generate.

#ifndef FASTNTP_H
#define FASTNTP_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NTP_HEADER_SIZE 48
#define NTP_PORT 123
// Seconds from 1900, NTP's epoch, to 1970, the kernel's.
#define NTP_UNIX_OFFSET 2208988800ULL
#define NSEC_PER_SEC 1000000000ULL

#define NTP_MODE_RESERVED 0
#define NTP_MODE_ACTIVE 1
#define NTP_MODE_PASSIVE 2
#define NTP_MODE_CLIENT 3
#define NTP_MODE_SERVER 4
#define NTP_LEAP_UNSYNCHRONIZED 3

// ntp_time converts nanoseconds since 1970 to an NTP timestamp in host
// order: seconds since 1900 (modulo 2^32) and a binary fraction, the same
// arithmetic as internal/ntp.TimeFromUnix.
static __always_inline __u64 ntp_time(__u64 unix_ns)
{
	__u64 sec = unix_ns / NSEC_PER_SEC;
	__u64 frac = ((unix_ns - sec * NSEC_PER_SEC) << 32) / NSEC_PER_SEC;
	return ((__u64)(__u32)(sec + NTP_UNIX_OFFSET) << 32) | frac;
}

// struct clock is how a program turns the kernel's TAI clock, the only wall
// clock eBPF reads, into the system clock (CLOCK_REALTIME): less the TAI
// offset that user space read from the kernel. tai_minus_mono is CLOCK_TAI
// less CLOCK_MONOTONIC when it did. The two clocks run at one rate, so their
// difference moves only when the system clock is stepped or the TAI offset
// changes (at a leap second, or by adjtimex): a program that finds it moved
// by more than its guard knows its offset may be stale.
struct clock {
	__s64 tai_offset_ns;
	__s64 tai_minus_mono_ns;
};

// clock_unix_ns returns the system clock in nanoseconds, or 0 if the TAI
// clock's relation to the monotonic clock has moved by more than guard_ns
// (kernel.ClockGuard) since c was written.
static __always_inline __u64 clock_unix_ns(const struct clock *c, __u64 tai, __u64 mono, __s64 guard_ns)
{
	__s64 moved = (__s64)(tai - mono) - c->tai_minus_mono_ns;
	if (moved > guard_ns || moved < -guard_ns)
		return 0;
	return tai - c->tai_offset_ns;
}

// count adds one to the counter at index of a per-CPU array map. Atomic:
// a program at a device's egress can be interrupted on its CPU by another
// run of itself.
static __always_inline void count(void *map, __u32 index)
{
	__u64 *n = bpf_map_lookup_elem(map, &index);
	if (n)
		__sync_fetch_and_add(n, 1);
}

// fold_checksum folds a sum of 16-bit words into the ones' complement
// 16-bit sum.
static __always_inline __u16 fold_checksum(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

#endif

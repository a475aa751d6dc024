//go:build ignore

// egress.c writes the transmit timestamp of fastntp's replies as they reach
// a network device, later than user space can read the clock before its
// send. Package responder/egress attaches it at the head of the egress
// (TCX) of every device and tells it which sockets are fastntp's.
//
// For a packet of a registered socket that carries a 48-byte NTP reply
// (server or passive mode) at its end, it reads the kernel's TAI clock less
// the TAI offset user space gave it, and writes that as the transmit
// timestamp, adjusting the UDP checksum. The stamp user space wrote before
// the send is the guard: a reading further from it than guard_units is either
// off by whole seconds, an outdated TAI offset, and corrected, or left
// unwritten. Whatever it finds, it lets the packet go on (TCX_NEXT), so
// that programs attached after it still run and it never drops a packet.

#include <linux/bpf.h>
#include "fastntp.h"

// TCX_NEXT lets the packet go on to the next program, or out: enum
// tcx_action_base of Linux 6.6's linux/bpf.h, newer than the headers that
// Debian 12 builds with.
#ifndef TCX_NEXT
#define TCX_NEXT -1
#endif

// Offsets from the end of the packet: the program finds the reply from its
// end because the headers in front of it vary (an Ethernet header or none,
// a VLAN tag, IPv4 or IPv6 with or without options).
#define UDP_HEADER_SIZE 8
#define UDP_LENGTH (UDP_HEADER_SIZE + NTP_HEADER_SIZE) // the UDP header's length field
#define UDP_FROM_END (NTP_HEADER_SIZE + UDP_HEADER_SIZE)
#define CHECKSUM_FROM_END (UDP_FROM_END - 6)
#define TRANSMIT_FROM_END 8

// MIN_PACKET and MAX_PACKET bound the length of a packet that can hold a
// reply: at least an IPv4 header on a device without a link-layer header,
// and at most room for link-layer headers with VLAN tags, an IPv6 header
// with extension headers, or a tunnel's outer headers. Checked first, they
// let most other traffic pass at the cost of two comparisons.
#define MIN_PACKET (20 + UDP_LENGTH)
#define MAX_PACKET 256

// The guard (egress.Guard), the most whole seconds corrected
// (egress.MaxCorrection) and the slack of a correction
// (egress.CorrectionSlack), in units of an NTP timestamp (2^-32 s) and in
// seconds. The loader sets them from those constants before the program
// is loaded: they are read-only then, and the verifier folds them in as
// numbers.
volatile const __s64 guard_units;
volatile const __s64 max_correction;
volatile const __s64 slack_units;

// The sockets whose replies are stamped, by cookie; the value is unused.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} sockets SEC(".maps");

// The kernel's TAI offset, CLOCK_TAI less CLOCK_REALTIME, in nanoseconds.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} tai_offset SEC(".maps");

// The counts, per CPU, in the order of egress.Counts.
enum stamp_counter {
	STAMPED,
	CORRECTED,
	UNSURE,
	CHECKSUM_FAILED,
	NUM_STAMP_COUNTS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NUM_STAMP_COUNTS);
	__type(key, enum stamp_counter);
	__type(value, __u64);
} stamp_counts SEC(".maps");

static __always_inline void add_count(__u32 index)
{
	count(&stamp_counts, index);
}

static __always_inline int within(__s64 v, __s64 bound)
{
	return v >= -bound && v <= bound;
}

SEC("tcx/egress")
int fastntp_stamp(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	if (len < MIN_PACKET || len > MAX_PACKET)
		return TCX_NEXT;
	// Only replies from fastntp's own sockets.
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (!bpf_map_lookup_elem(&sockets, &cookie))
		return TCX_NEXT;
	// The UDP header and the reply's first bytes.
	__u8 head[UDP_HEADER_SIZE + 8];
	if (bpf_skb_load_bytes(skb, len - UDP_FROM_END, head, sizeof(head)))
		return TCX_NEXT;
	__u8 mode = head[UDP_HEADER_SIZE] & 7;
	if (((__u32)head[4] << 8 | head[5]) != UDP_LENGTH || (mode != NTP_MODE_SERVER && mode != NTP_MODE_PASSIVE))
		return TCX_NEXT;
	// The stamp user space wrote, for the guard and the checksum.
	__u64 old;
	if (bpf_skb_load_bytes(skb, len - TRANSMIT_FROM_END, &old, sizeof(old)))
		return TCX_NEXT;
	__u32 zero = 0;
	__s64 *offset = bpf_map_lookup_elem(&tai_offset, &zero);
	if (!offset)
		return TCX_NEXT;
	__u64 stamp = ntp_time(bpf_ktime_get_tai_ns() - *offset);

	int corrected = 0;
	__s64 difference = (__s64)(stamp - bpf_be64_to_cpu(old));
	if (!within(difference, guard_units)) {
		// Beyond it: the difference rounded to whole seconds must be at
		// most max_correction, and what is left within the slack. The
		// program's clock is then that many whole seconds off: its TAI
		// offset is stale, and taken away, the reading is right.
		__s64 seconds = (difference + (1LL << 31)) >> 32;
		if (!within(seconds, max_correction) || !within(difference - (seconds << 32), slack_units)) {
			add_count(UNSURE);
			return TCX_NEXT;
		}
		stamp -= seconds << 32;
		corrected = 1;
	}
	__u64 new = bpf_cpu_to_be64(stamp);
	__s64 checksum = bpf_csum_diff((__be32 *)&old, sizeof(old), (__be32 *)&new, sizeof(new), 0);
	if (checksum < 0 || bpf_skb_store_bytes(skb, len - TRANSMIT_FROM_END, &new, sizeof(new), 0)) {
		add_count(CHECKSUM_FAILED);
		return TCX_NEXT;
	}
	// The UDP checksum, adjusted by the difference. BPF_F_MARK_MANGLED_0
	// leaves an IPv4 checksum of 0, which means none, alone, and writes a
	// computed 0 as 0xffff.
	if (bpf_l4_csum_replace(skb, len - CHECKSUM_FROM_END, 0, checksum, BPF_F_MARK_MANGLED_0)) {
		// A new stamp under the old checksum would make the client drop
		// the reply: the old stamp goes back.
		bpf_skb_store_bytes(skb, len - TRANSMIT_FROM_END, &old, sizeof(old), 0);
		add_count(CHECKSUM_FAILED);
		return TCX_NEXT;
	}
	if (corrected)
		add_count(CORRECTED);
	add_count(STAMPED);
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

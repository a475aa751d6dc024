//go:build ignore

// xdp.c answers, at the network driver, the NTP requests that fastntp's
// socket path answers with its plain reply, and passes every other frame on
// to the kernel's stack unchanged: fastntp's socket workers answer or drop
// what the program leaves, as they would without it. It is fastntp's
// opt-in fast path (--xdp); package responder/xdp loads it.
//
// A frame is answered only if it is all of: Ethernet to the device's own
// address, with at most one 802.1Q tag; IPv4 without options or IPv6
// without extension headers, not a fragment, from a unicast address to one
// that fastntp serves; UDP to the served port, from a port other than 0,
// with a valid checksum (or none, on IPv4), ending where the IP header
// says; and a 48-byte NTP request of version 1 to 4 in client or symmetric
// active mode (or version 1 mode 0 from a port other than 123). The reply
// is built in place and sent back out of the device (XDP_TX); requests
// that the access rules deny, or that the rate limit drops, are dropped,
// as the socket path drops them.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include "fastntp.h"

// struct config is everything the reply is made of, and the rules it
// obeys. The daemon replaces it whole on every change of its state and of
// the clock's relation: a hash map's element is swapped, never written in
// place, so a program never reads half of an old one and half of a new.
struct config {
	struct clock clock;
	// expires_mono_ns is when, on the monotonic clock, the state stops
	// being synchronized if the daemon does not replace it; 0 when it is
	// not synchronized. A daemon that hangs can keep nothing alive.
	__u64 expires_mono_ns;
	// leap_start_mono_ns is when the announced leap second goes into
	// progress (0 if none): leap 3 from then until leap_end_mono_ns, then
	// 0.
	__u64 leap_start_mono_ns;
	__u64 leap_end_mono_ns;
	// taken_mono_ns is when root_dispersion was measured; the dispersion
	// served grows from it by 15 ppm of the time since.
	__u64 taken_mono_ns;
	__u64 reference_time; // NTP format, host order
	__u32 reference_id;   // host order
	__u32 root_delay;     // NTP short format, host order
	__u32 root_dispersion;
	__u8 leap;
	__u8 stratum;
	__s8 precision;
	// min_poll is the least poll exponent a reply carries.
	__s8 min_poll;
	// access says whether the allow and deny tries hold rules; a client
	// they say nothing of is served if default_allow.
	__u8 access;
	__u8 default_allow;
	// ratelimit turns the rate limit on; the rest are its token bucket's
	// parameters, as responder's clientTable computes them.
	__u8 ratelimit;
	__u8 leak;
	__u8 kod;
	__s8 token_shift;
	__u16 tokens_per_hit;
	__u16 max_tokens;
	__u16 pad;
	__u32 timestamp_offset_ns;
	// slots is how many slots of records the table has, and hash_seed
	// the secret that spreads addresses over them.
	__u32 slots;
	__u64 hash_seed;
};

// clock_guard_ns is kernel.ClockGuard, set by the loader before the
// program is loaded: read-only, the verifier folds it in as a number.
volatile const __s64 clock_guard_ns;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct config);
} configuration SEC(".maps");

// struct served is one address and port fastntp serves, IPv4 addresses
// IPv4-mapped. For a socket bound to a family's unspecified address the
// loader lists the host's addresses of that family: a frame to any other
// (another host's, routed through this one) is the stack's.
struct served {
	__u8 addr[16];
	__u16 port; // network order
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); // sized by the loader
	__type(key, struct served);
	__type(value, __u8);
} served_addresses SEC(".maps");

// struct device is a device the program is attached to: only frames to
// its own address are answered, as the IP layer would take only those.
struct device {
	__u8 mac[ETH_ALEN];
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32); // interface index
	__type(value, struct device);
} device_addresses SEC(".maps");

struct prefix4 {
	__u32 length;
	__u8 addr[4];
};

struct prefix6 {
	__u32 length;
	__u8 addr[16];
};

// The access rules, longest prefix first; a value of 1 allows. The loader
// sizes them to the rules.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix4);
	__type(value, __u8);
} access4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix6);
	__type(value, __u8);
} access6 SEC(".maps");

// The rate limit's records, kept as responder's clientTable keeps them
// (responder/ratelimit.go), with its arithmetic, chronyd's: an address
// hashes to a slot of SLOT_RECORDS records, where the least recently heard
// record makes room for a new address. One table serves all CPUs, a lock
// per slot, so that a client's requests count alike whichever CPU the
// device hands them to. The loader sizes it to the memory allowed.
struct record {
	__u8 addr[16];
	__u32 last_hit;
	__u16 hits; // saturating; breaks ties between equally old records
	__u16 tokens;
	__s8 rate;         // scaled log2 of the interval, negated
	__s8 timeout_rate; // the same after requests that went unanswered
	__u8 used;
	__u8 dropped; // the last request was not answered
};

#define SLOT_RECORDS 16

struct slot {
	struct bpf_spin_lock lock;
	struct record records[SLOT_RECORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct slot);
} client_slots SEC(".maps");

// The counts, per CPU: for each family the requests the program took on
// and what became of them, then the frames it passed on, by reason.
enum counter {
	COUNT_RECEIVED,
	COUNT_REPLIED,
	COUNT_KOD,
	COUNT_DENIED,
	COUNT_RATE_LIMITED,
	// Rate-limit records forgotten to make room for new addresses.
	COUNT_EVICTED,
	COUNTS_PER_FAMILY,
	// Passed on: not IPv4 or IPv6 over Ethernet, or not to a served
	// address and port.
	PASS_OTHER = 2 * COUNTS_PER_FAMILY,
	// Passed on: a form the program leaves to the stack (IP options,
	// extension headers, fragments, more than one VLAN tag, padding,
	// another host's or a group's address).
	PASS_FORM,
	// Passed on: an NTP datagram the plain reply is not for (not 48
	// bytes, a version, mode or source port the socket path drops or
	// answers otherwise).
	PASS_REQUEST,
	// Passed on: a bad IPv4 header or UDP checksum, for the stack to
	// count and drop.
	PASS_CHECKSUM,
	// Passed on: the clock's relation moved (a step or a new TAI offset)
	// since the daemon last wrote it, or there is no configuration yet.
	PASS_CLOCK,
	NUM_COUNTS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NUM_COUNTS);
	__type(key, enum counter);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void add_count(__u32 index)
{
	count(&counts, index);
}

static __always_inline int pass(__u32 reason)
{
	add_count(reason);
	return XDP_PASS;
}

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

#define ETH_P_8021Q_ 0x8100
#define IPV4_UDP_SIZE (sizeof(struct iphdr) + sizeof(struct udphdr) + NTP_HEADER_SIZE)
#define UDP_SIZE (sizeof(struct udphdr) + NTP_HEADER_SIZE)

// Rate limit verdicts.
enum verdict { LIMIT_PASS, LIMIT_DROP, LIMIT_KOD };

#define TIMESTAMP_FRACTION 4
#define RATE_SCALE 4
#define MIN_RATE (-14 * RATE_SCALE)
#define INVALID_RATE (-128)

// older reports whether record a was heard from before b, or as recently
// but less.
static __always_inline int older(const struct record *a, const struct record *b)
{
	if (a->last_hit != b->last_hit)
		return a->last_hit == 0 || (b->last_hit != 0 && (__s32)(a->last_hit - b->last_hit) < 0);
	return a->hits < b->hits;
}

// limit is responder's clientTable.check: the record's lookup, update and
// the decision, under its slot's lock. *evicted is set when another
// address's record made room.
static __always_inline enum verdict limit(const struct config *cfg, const __u8 *addr, __u64 unix_ns, int *evicted)
{
	const __u32 *words = (const void *)addr;
	__u64 hash = cfg->hash_seed;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		hash ^= words[i];
		hash *= 0x9e3779b97f4a7c15ULL;
		hash ^= hash >> 29;
	}
	// The hash's top bits scaled to the slot count, as clientTable does.
	__u32 index = (__u32)(((hash >> 32) * cfg->slots) >> 32);
	struct slot *slot = bpf_map_lookup_elem(&client_slots, &index);
	if (!slot)
		return LIMIT_PASS;

	// The record's clock: seconds with four fraction bits, from a
	// randomized origin within the second.
	__u64 ns = unix_ns + cfg->timestamp_offset_ns;
	__u64 sec = ns / NSEC_PER_SEC;
	__u32 now = (__u32)(sec << TIMESTAMP_FRACTION) |
		    (__u32)(((ns - sec * NSEC_PER_SEC) << TIMESTAMP_FRACTION) / NSEC_PER_SEC);
	__u32 random = bpf_get_prandom_u32();
	__u32 tokens_per_hit = cfg->tokens_per_hit, max_tokens = cfg->max_tokens;
	__s32 shift = cfg->token_shift;
	__u32 a0 = words[0], a1 = words[1], a2 = words[2], a3 = words[3];
	enum verdict verdict = LIMIT_PASS;

	bpf_spin_lock(&slot->lock);
	__u32 chosen = 0, oldest = 0, found = 0;
	for (__u32 i = 0; i < SLOT_RECORDS; i++) {
		struct record *r = &slot->records[i];
		const __u32 *w = (const void *)r->addr;
		if (!r->used) {
			chosen = i;
			break;
		}
		if (w[0] == a0 && w[1] == a1 && w[2] == a2 && w[3] == a3) {
			chosen = i;
			found = 1;
			break;
		}
		if (i > 0 && oldest < SLOT_RECORDS && older(r, &slot->records[oldest]))
			oldest = i;
		chosen = oldest;
	}
	if (chosen >= SLOT_RECORDS) {
		bpf_spin_unlock(&slot->lock);
		return LIMIT_PASS;
	}
	struct record *c = &slot->records[chosen];
	if (!found) {
		*evicted = c->used;
		__u32 *w = (void *)c->addr;
		w[0] = a0;
		w[1] = a1;
		w[2] = a2;
		w[3] = a3;
		c->used = 1;
		c->last_hit = 0;
		c->hits = 0;
		c->tokens = max_tokens;
		c->rate = INVALID_RATE;
		c->timeout_rate = INVALID_RATE;
		c->dropped = 0;
	}

	__u32 prev = c->last_hit;
	c->last_hit = now;
	if (c->hits < 0xffff)
		c->hits++;
	__u32 interval = now - prev;
	if (prev != 0 && (__s32)interval >= 0) {
		__u32 tokens;
		if (shift >= 0)
			tokens = (now >> (shift & 31)) - (prev >> (shift & 31));
		else if (interval > max_tokens)
			tokens = max_tokens;
		else
			tokens = interval << (-shift & 31);
		tokens += c->tokens;
		c->tokens = tokens < max_tokens ? tokens : max_tokens;

		// The interval as a scaled, rounded log2.
		__s32 interval2 = -RATE_SCALE * (TIMESTAMP_FRACTION + 1);
		if (interval != 0) {
			interval += interval >> 1;
			interval2 = -RATE_SCALE * TIMESTAMP_FRACTION;
			for (int i = 0; i < (-MIN_RATE + RATE_SCALE * TIMESTAMP_FRACTION) / RATE_SCALE; i++) {
				if (interval <= 1)
					break;
				interval >>= 1;
				interval2 += RATE_SCALE;
			}
		}
		__s32 rate = c->dropped ? c->timeout_rate : c->rate;
		if (rate == INVALID_RATE)
			rate = -interval2;
		else if (rate < -interval2)
			rate++;
		else if (rate > -interval2) {
			if (rate > RATE_SCALE * 5 / 2 - interval2)
				rate = RATE_SCALE * 5 / 2 - interval2;
			else {
				// Halved toward zero, as Go's division does; BPF
				// has no signed division.
				__s32 v = rate - interval2 - 1;
				rate = v >= 0 ? v >> 1 : -(-v >> 1);
			}
		}
		if (c->dropped)
			c->timeout_rate = rate;
		else
			c->rate = rate;
	}

	c->dropped = 0;
	if (c->tokens >= tokens_per_hit) {
		c->tokens -= tokens_per_hit;
	} else {
		// Answered anyway with probability 1/2^leak; a client that
		// sends faster when unanswered gets that inverted.
		int drop = (random & ((1u << (cfg->leak & 7)) - 1)) != 0;
		if (c->timeout_rate != INVALID_RATE && c->timeout_rate > c->rate + RATE_SCALE)
			drop = !drop;
		if (!drop) {
			c->tokens = 0;
		} else if (cfg->kod && ((random >> 8) & ((1u << (cfg->kod & 7)) - 1)) == 0) {
			verdict = LIMIT_KOD;
		} else {
			c->dropped = 1;
			verdict = LIMIT_DROP;
		}
	}
	bpf_spin_unlock(&slot->lock);
	return verdict;
}

// checksum_words sums the 16-bit words of the UDP header and the NTP
// message that follows it.
static __always_inline __u64 udp_sum(const struct udphdr *udp)
{
	const __u32 *words = (const void *)udp;
	__u64 sum = 0;
#pragma unroll
	for (int i = 0; i < UDP_SIZE / 4; i++)
		sum += words[i];
	return sum;
}

// answer builds the reply in the 48 bytes at ntp, after the request was
// checked: responder's replyTemplate.build and stamp, with the same fields
// from the same state. It returns the count to add, or -1 to drop.
static __always_inline int answer(const struct config *cfg, __u8 *ntp, __u64 received_unix, __u64 mono,
				  const __u8 *client, int family)
{
	__u8 version = ntp[0] >> 3 & 7;
	__u8 request_mode = ntp[0] & 7;
	__u8 mode = request_mode == NTP_MODE_ACTIVE ? NTP_MODE_PASSIVE : NTP_MODE_SERVER;
	__s8 poll = (__s8)ntp[2];

	enum verdict verdict = LIMIT_PASS;
	if (cfg->ratelimit) {
		int evicted = 0;
		verdict = limit(cfg, client, received_unix, &evicted);
		if (evicted)
			add_count(family * COUNTS_PER_FAMILY + COUNT_EVICTED);
		if (verdict == LIMIT_DROP)
			return -1;
	}

	__u8 leap = NTP_LEAP_UNSYNCHRONIZED, stratum = 0;
	__u32 root_delay = 1 << 16, dispersion = 1 << 16, reference_id = 0;
	__u64 reference_time = 0;
	if (mono < cfg->expires_mono_ns) {
		leap = cfg->leap;
		if (cfg->leap_start_mono_ns && mono >= cfg->leap_start_mono_ns)
			leap = mono < cfg->leap_end_mono_ns ? NTP_LEAP_UNSYNCHRONIZED : 0;
		stratum = cfg->stratum;
		root_delay = cfg->root_delay;
		reference_id = cfg->reference_id;
		reference_time = cfg->reference_time;
		// 15 ppm of the age, rounded up, in units of 2^-16 s.
		dispersion = cfg->root_dispersion;
		if (mono > cfg->taken_mono_ns) {
			__u64 age_us = (mono - cfg->taken_mono_ns) / 1000;
			__u64 grown = (age_us * 983040 + 999999999999ULL) / 1000000000000ULL;
			__u64 sum = (__u64)dispersion + grown;
			dispersion = sum > 0xffffffff ? 0xffffffff : (__u32)sum;
		}
	}
	__s8 min_poll = cfg->min_poll;

	__u64 *stamps = (void *)(ntp + 16);
	stamps[1] = stamps[3]; // the request's transmit stamp is the origin
	ntp[1] = stratum;
	ntp[2] = (__u8)(poll > min_poll ? poll : min_poll);
	ntp[3] = (__u8)cfg->precision;
	__u32 *words = (void *)ntp;
	words[1] = bpf_htonl(root_delay);
	words[3] = bpf_htonl(reference_id);
	stamps[0] = bpf_cpu_to_be64(reference_time);
	stamps[2] = bpf_cpu_to_be64(ntp_time(received_unix));
	if (verdict == LIMIT_KOD) {
		// chronyd's RATE kiss-o'-death.
		leap = NTP_LEAP_UNSYNCHRONIZED;
		ntp[1] = 0;
		words[3] = bpf_htonl(0x52415445);
	}
	ntp[0] = leap << 6 | version << 3 | mode;
	words[2] = bpf_htonl(dispersion);
	// The transmit stamp, read last. The program's relation to the
	// system clock was checked with the receive stamp; the TAI offset
	// cannot have changed since without a leap second, whose window
	// serves leap 3.
	stamps[3] = bpf_cpu_to_be64(ntp_time(bpf_ktime_get_tai_ns() - cfg->clock.tai_offset_ns));
	return verdict == LIMIT_KOD ? COUNT_KOD : COUNT_REPLIED;
}

// allowed applies the access rules to a client, by the longest prefix
// that holds its address.
static __always_inline int allowed(const struct config *cfg, void *trie, void *key)
{
	if (!cfg->access)
		return 1;
	__u8 *allow = bpf_map_lookup_elem(trie, key);
	if (allow)
		return *allow;
	return cfg->default_allow;
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b && *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

// request_ok says whether the 48 bytes at ntp are a request that the
// socket path answers with the plain reply, from source_port.
static __always_inline int request_ok(const __u8 *ntp, __be16 source_port)
{
	__u8 version = ntp[0] >> 3 & 7, mode = ntp[0] & 7;
	if (version < 1 || version > 4 || source_port == 0)
		return 0;
	if (mode == NTP_MODE_CLIENT || mode == NTP_MODE_ACTIVE)
		return 1;
	return mode == NTP_MODE_RESERVED && version == 1 && source_port != bpf_htons(NTP_PORT);
}

SEC("xdp")
int fastntp_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return pass(PASS_OTHER);
	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;
	__u32 l3_offset = sizeof(*eth);
	__u32 frame_length = ctx->data_end - ctx->data;
	if (proto == bpf_htons(ETH_P_8021Q_)) {
		struct vlan_tag *tag = l3;
		if ((void *)(tag + 1) > end)
			return pass(PASS_OTHER);
		proto = tag->proto;
		l3 = tag + 1;
		l3_offset += sizeof(*tag);
	}
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return pass(proto == bpf_htons(ETH_P_8021Q_) ? PASS_FORM : PASS_OTHER);

	struct served key = {};
	struct udphdr *udp;
	__u64 sum;
	int family;
	union {
		struct prefix4 v4;
		struct prefix6 v6;
	} prefix = {};
	void *trie;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return pass(PASS_OTHER);
		if (ip->protocol != IPPROTO_UDP)
			return pass(PASS_OTHER);
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return pass(PASS_OTHER);
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &ip->daddr, 4);
		key.port = udp->dest;
		if (!bpf_map_lookup_elem(&served_addresses, &key))
			return pass(PASS_OTHER);
		__u32 source = bpf_ntohl(ip->saddr), dest = bpf_ntohl(ip->daddr);
		// A datagram that does not end where the frame does (padding,
		// or a truncated frame) is the stack's to trim or drop.
		if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) ||
		    frame_length != l3_offset + bpf_ntohs(ip->tot_len) ||
		    source >> 24 == 0 || source >> 24 == 127 || source >> 28 >= 14 || dest >> 28 >= 14)
			return pass(PASS_FORM);
		if (ip->tot_len != bpf_htons(IPV4_UDP_SIZE) || udp->len != bpf_htons(UDP_SIZE))
			return pass(PASS_REQUEST);
		// The stack drops a header whose checksum fails; so must the
		// program, which passes it on for the stack to count.
		const __u16 *half = (const void *)ip;
		__u64 header = 0;
#pragma unroll
		for (int i = 0; i < sizeof(*ip) / 2; i++)
			header += half[i];
		if (fold_checksum(header) != 0xffff)
			return pass(PASS_CHECKSUM);
		sum = (__u64)ip->saddr + ip->daddr + bpf_htons(IPPROTO_UDP) + udp->len;
		family = 0;
		__builtin_memset(key.addr, 0, sizeof(key.addr));
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &ip->saddr, 4);
		prefix.v4.length = 32;
		__builtin_memcpy(prefix.v4.addr, &ip->saddr, 4);
		trie = &access4;
	} else {
		struct ipv6hdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return pass(PASS_OTHER);
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return pass(PASS_OTHER);
		if (ip->nexthdr != IPPROTO_UDP) {
			// Extension headers, or not UDP: which, only the
			// stack can tell.
			return pass(PASS_OTHER);
		}
		__builtin_memcpy(key.addr, &ip->daddr, 16);
		key.port = udp->dest;
		if (!bpf_map_lookup_elem(&served_addresses, &key))
			return pass(PASS_OTHER);
		__u8 *source = ip->saddr.in6_u.u6_addr8;
		__u32 *source32 = ip->saddr.in6_u.u6_addr32;
		// Multicast, unspecified, loopback and IPv4-mapped sources are
		// the stack's to judge.
		if (ip->version != 6 || frame_length != l3_offset + sizeof(*ip) + bpf_ntohs(ip->payload_len) ||
		    source[0] == 0xff || ip->daddr.in6_u.u6_addr8[0] == 0xff ||
		    (source32[0] == 0 && source32[1] == 0 &&
		     (source32[2] == bpf_htonl(0xffff) || (source32[2] == 0 && bpf_ntohl(source32[3]) <= 1))))
			return pass(PASS_FORM);
		if (ip->payload_len != bpf_htons(UDP_SIZE) || udp->len != bpf_htons(UDP_SIZE))
			return pass(PASS_REQUEST);
		if (udp->check == 0) // required over IPv6: the stack drops it
			return pass(PASS_CHECKSUM);
		sum = bpf_htons(IPPROTO_UDP) + (__u64)udp->len;
		const __u32 *addrs = (const void *)&ip->saddr;
#pragma unroll
		for (int i = 0; i < 8; i++)
			sum += addrs[i];
		family = 1;
		__builtin_memcpy(key.addr, source, 16);
		prefix.v6.length = 128;
		__builtin_memcpy(prefix.v6.addr, source, 16);
		trie = &access6;
	}
	// The receive stamp: the clock as soon as the frame is known to be
	// for a served address and port, a few header checks after the
	// program's start. Reading it at the start cost every other frame on
	// the device two clock readings, about half of its time in the
	// program.
	__u64 tai = bpf_ktime_get_tai_ns();
	__u64 mono = bpf_ktime_get_ns();
	__u8 *ntp = (void *)(udp + 1);
	if ((void *)(ntp + NTP_HEADER_SIZE) > end)
		return pass(PASS_REQUEST);
	if (!request_ok(ntp, udp->source))
		return pass(PASS_REQUEST);
	// Frames for another host or a group, as the IP layer would judge
	// them, and from a group.
	__u32 ifindex = ctx->ingress_ifindex;
	struct device *dev = bpf_map_lookup_elem(&device_addresses, &ifindex);
	if (!dev || !same_mac(eth->h_dest, dev->mac) || (eth->h_source[0] & 1))
		return pass(PASS_FORM);
	if (udp->check != 0 && fold_checksum(sum + udp_sum(udp)) != 0xffff)
		return pass(PASS_CHECKSUM);
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&configuration, &zero);
	if (!cfg)
		return pass(PASS_CLOCK);
	__u64 received = clock_unix_ns(&cfg->clock, tai, mono, clock_guard_ns);
	if (!received)
		return pass(PASS_CLOCK);

	add_count(family * COUNTS_PER_FAMILY + COUNT_RECEIVED);
	if (!allowed(cfg, trie, &prefix)) {
		add_count(family * COUNTS_PER_FAMILY + COUNT_DENIED);
		return XDP_DROP;
	}
	int outcome = answer(cfg, ntp, received, mono, key.addr, family);
	if (outcome < 0) {
		add_count(family * COUNTS_PER_FAMILY + COUNT_RATE_LIMITED);
		return XDP_DROP;
	}

	// Turn the frame around. Swapping the addresses and ports changes
	// no checksum; the TTL does the IPv4 header's, the NTP fields the
	// UDP one's.
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__be16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	if (family == 0) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return XDP_DROP;
		__be32 addr = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = addr;
		ip->ttl = 64;
		ip->id = 0;
		ip->check = 0;
		const __u16 *half = (const void *)ip;
		__u64 header = 0;
#pragma unroll
		for (int i = 0; i < sizeof(*ip) / 2; i++)
			header += half[i];
		ip->check = ~fold_checksum(header);
	} else {
		struct ipv6hdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return XDP_DROP;
		struct in6_addr addr = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = addr;
		ip->hop_limit = 64;
	}
	udp->check = 0;
	__u16 check = ~fold_checksum(sum + udp_sum(udp));
	udp->check = check ? check : 0xffff;
	add_count(family * COUNTS_PER_FAMILY + outcome);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/responder"
	"github.com/fastntp/fastntp/responder/xdp"
	"github.com/fastntp/fastntp/upstream"
)

// options are the parsed command line.
type options struct {
	help, showVersion         bool
	ipv4Threads, ipv6Threads  int
	ipv4Address, ipv6Address  netip.AddrPort
	explicitIPv6              bool
	server                    netip.AddrPort
	user, root                string
	debug                     bool
	batchSize                 int
	path                      batch.Path
	transmitStamps            responder.Stamping
	pollInterval, maxAge      time.Duration
	maxOffset                 time.Duration
	receiveBuffer, sendBuffer int
	logFormat                 string
	statsInterval             time.Duration
	metricsAddress            netip.AddrPort
	// rateLimit is nil unless --ratelimit or one of its settings is given.
	rateLimit *responder.RateLimit
	access    []responder.AccessRule
	// xdpDevices are the devices of the XDP fast path, none without it.
	xdpDevices []string
	xdpMode    xdp.Mode
}

const usageHeader = `Usage: fastntp [options]

Serve NTP to many clients at once with the synchronization state of a local
chronyd, which fastntp polls over NTP. rsntp's options keep their names,
short forms and meanings.

Options:
`

// rateLimitFlags are the settings of --ratelimit, each of which turns rate
// limiting on.
var rateLimitFlags = []string{"ratelimit-interval", "ratelimit-burst", "ratelimit-leak", "ratelimit-kod", "ratelimit-memory"}

// newFlagSet defines the options into o, with their defaults. The rate
// limit's settings go to limit, which parseFlags hands to o if rate
// limiting is on.
func newFlagSet(o *options, limit *responder.RateLimit) *pflag.FlagSet {
	fs := pflag.NewFlagSet("fastntp", pflag.ContinueOnError)
	fs.SortFlags = false
	// Parse returns errors; run prints them once, with a pointer to --help.
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)

	o.ipv4Address = netip.MustParseAddrPort("0.0.0.0:123")
	o.ipv6Address = netip.MustParseAddrPort("[::]:123")
	o.server = netip.MustParseAddrPort("127.0.0.1:11123")
	o.receiveBuffer = 4 << 20
	*limit = responder.DefaultRateLimit()
	var rateLimit bool

	fs.IntVarP(&o.ipv4Threads, "ipv4-threads", "4", 1, "number `N` of IPv4 threads (0 disables IPv4)")
	fs.IntVarP(&o.ipv6Threads, "ipv6-threads", "6", 1, "number `N` of IPv6 threads (0 disables IPv6)")
	fs.VarP(&addressValue{&o.ipv4Address, "IPv4", "0.0.0.0:123"}, "ipv4-address", "a", "IPv4 `address:port` to serve")
	fs.VarP(&addressValue{&o.ipv6Address, "IPv6", "[::]:123"}, "ipv6-address", "b", "IPv6 `[address]:port` to serve")
	fs.VarP(&addressValue{&o.server, "", "127.0.0.1:11123"}, "server-address", "s", "`address:port` of the backend NTP server (chronyd)")
	fs.StringVarP(&o.user, "user", "u", "", "run as `user` after binding the sockets")
	fs.StringVarP(&o.root, "root", "r", "", "chroot to `directory` after binding the sockets")
	fs.BoolVarP(&o.debug, "debug", "d", false, "log debug messages, including one per request")
	fs.BoolVarP(&o.help, "help", "h", false, "print this help and exit")
	fs.IntVar(&o.batchSize, "batch-size", batch.DefaultBatchSize, "most datagrams moved per system call, `N` (1 disables batching)")
	fs.Var(&pathValue{&o.path}, "io-path", "socket I/O: fast (recvmmsg/sendmmsg, Linux), portable (x/net), or auto")
	fs.Var(&stampingValue{&o.transmitStamps}, "transmit-stamps", "where replies get their transmit timestamps: device (an eBPF program at each network device; needs CAP_BPF and CAP_NET_ADMIN), syscall (before each send), or auto")
	fs.DurationVar(&o.pollInterval, "poll-interval", time.Second, "interval between polls of the backend")
	fs.DurationVar(&o.maxAge, "max-age", 4*time.Second, "serve unsynchronized replies once the last valid backend answer is this old")
	fs.DurationVar(&o.maxOffset, "max-offset", 10*time.Millisecond, "serve unsynchronized replies while the backend's clock differs from the system clock by more")
	fs.Var(&sizeValue{&o.receiveBuffer}, "receive-buffer", "socket receive buffer per thread, in `bytes` (K, M and G suffixes; 0 keeps the kernel default)")
	fs.Var(&sizeValue{&o.sendBuffer}, "send-buffer", "socket send buffer per thread, in `bytes` (0 keeps the kernel default)")
	fs.StringVar(&o.logFormat, "log-format", "console", "log `format`: console or json")
	fs.DurationVar(&o.statsInterval, "stats-interval", time.Minute, "interval between rate summaries in the log (0 disables them)")
	fs.Var(&optionalAddressValue{addressValue{&o.metricsAddress, "", "127.0.0.1:9123"}}, "metrics-address", "serve Prometheus metrics at /metrics and health at /healthz on this `address:port` (off by default)")
	fs.BoolVar(&rateLimit, "ratelimit", false, "limit the responses to each client address as chronyd's ratelimit does (off by default; each setting below turns it on)")
	fs.IntVar(&limit.Interval, "ratelimit-interval", limit.Interval, "least mean interval between responses to one address, as a power of 2 in seconds, `N` (-19..12)")
	fs.IntVar(&limit.Burst, "ratelimit-burst", limit.Burst, "responses one address may get back to back, `N` (1..255)")
	fs.IntVar(&limit.Leak, "ratelimit-leak", limit.Leak, "answer one in 2^`N` limited requests anyway, so that a spoofed client is never cut off (1..4)")
	fs.IntVar(&limit.KoD, "ratelimit-kod", limit.KoD, "answer one in 2^`N` of the other limited requests with a RATE kiss-o'-death (1..4; 0 drops them all)")
	fs.Var(&sizeValue{&limit.Memory}, "ratelimit-memory", "memory for the client records, in `bytes`, shared by the threads (chronyd's clientloglimit)")
	fs.Var(&accessValue{&o.access, true}, "allow", "serve only the clients in `CIDR` and in other --allow networks; repeatable, the most specific rule wins")
	fs.Var(&accessValue{&o.access, false}, "deny", "drop the requests of the clients in `CIDR`; repeatable, the most specific rule wins")
	fs.StringArrayVar(&o.xdpDevices, "xdp", nil, "also answer plain requests at `device`'s driver with an XDP program, ahead of the host's firewall (repeatable; needs CAP_BPF and CAP_NET_ADMIN; the sockets answer the rest)")
	fs.Var(&xdpModeValue{&o.xdpMode}, "xdp-mode", "how --xdp attaches: native (in the driver), generic (any device, slower), or auto (native where the driver has it)")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	return fs
}

// usage returns the help text.
func usage() string {
	return usageHeader + strings.TrimRight(newFlagSet(&options{}, &responder.RateLimit{}).FlagUsagesWrapped(100), "\n") + "\n"
}

// parseFlags parses the command line. Asking for help or the version is not
// an error: the caller checks o.help and o.showVersion first.
func parseFlags(args []string) (*options, error) {
	o := &options{}
	var limit responder.RateLimit
	fs := newFlagSet(o, &limit)
	if err := checkDashes(fs, args); err != nil {
		return nil, err
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.help || o.showVersion {
		return o, nil
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (fastntp takes options only)", fs.Arg(0))
	}
	o.explicitIPv6 = fs.Changed("ipv6-threads") || fs.Changed("ipv6-address")
	switch {
	case o.ipv4Threads < 0 || o.ipv4Threads > 1024:
		return nil, fmt.Errorf("-4/--ipv4-threads: %d is out of range 0..1024", o.ipv4Threads)
	case o.ipv6Threads < 0 || o.ipv6Threads > 1024:
		return nil, fmt.Errorf("-6/--ipv6-threads: %d is out of range 0..1024", o.ipv6Threads)
	case o.ipv4Threads == 0 && o.ipv6Threads == 0:
		return nil, errors.New("both IPv4 and IPv6 are disabled (-4 0 -6 0): nothing to serve")
	case o.batchSize < 1 || o.batchSize > 1024:
		return nil, fmt.Errorf("--batch-size: %d is out of range 1..1024", o.batchSize)
	case o.pollInterval < upstream.MinInterval || o.pollInterval > upstream.MaxInterval:
		return nil, fmt.Errorf("--poll-interval: %v is outside %v..%v (the backend's state changes every few seconds at most; "+
			"faster polling costs it a core and tells nothing more)", o.pollInterval, upstream.MinInterval, upstream.MaxInterval)
	case o.maxAge < o.pollInterval:
		return nil, fmt.Errorf("--max-age: %v is shorter than the poll interval %v", o.maxAge, o.pollInterval)
	case o.maxOffset <= 0:
		return nil, fmt.Errorf("--max-offset: %v is not positive", o.maxOffset)
	case o.logFormat != "console" && o.logFormat != "json":
		return nil, fmt.Errorf("--log-format: %q is neither console nor json", o.logFormat)
	case o.statsInterval < 0:
		return nil, fmt.Errorf("--stats-interval: %v is negative", o.statsInterval)
	case o.receiveBuffer > maxSocketBuffer:
		return nil, fmt.Errorf("--receive-buffer: %s is above the %s ceiling: a longer queue holds requests for "+
			"longer than clients wait for their replies", formatSize(o.receiveBuffer), formatSize(maxSocketBuffer))
	case o.sendBuffer > maxSocketBuffer:
		return nil, fmt.Errorf("--send-buffer: %s is above the %s ceiling", formatSize(o.sendBuffer), formatSize(maxSocketBuffer))
	case o.root != "" && o.user == "":
		return nil, errors.New("-r/--root needs -u/--user: a process that stays root can leave a chroot")
	}
	if fs.Changed("xdp-mode") && len(o.xdpDevices) == 0 {
		return nil, errors.New("--xdp-mode: no --xdp device to attach to")
	}
	for i, d := range o.xdpDevices {
		if d == "" || strings.ContainsAny(d, "/ \t") || len(d) > 15 {
			return nil, fmt.Errorf("--xdp: %q is not a network device name", d)
		}
		if slices.Contains(o.xdpDevices[:i], d) {
			return nil, fmt.Errorf("--xdp: %s is named twice", d)
		}
	}
	if on, _ := fs.GetBool("ratelimit"); on || slices.ContainsFunc(rateLimitFlags, fs.Changed) {
		if err := checkRateLimit(limit); err != nil {
			return nil, err
		}
		o.rateLimit = &limit
	}
	return o, nil
}

// checkRateLimit reports a rate-limit setting out of range, by its flag.
func checkRateLimit(r responder.RateLimit) error {
	for _, f := range []struct {
		flag      string
		v, lo, hi int
	}{
		{"ratelimit-interval", r.Interval, responder.MinRateLimitInterval, responder.MaxRateLimitInterval},
		{"ratelimit-burst", r.Burst, 1, 255},
		{"ratelimit-leak", r.Leak, 1, 4},
		{"ratelimit-kod", r.KoD, 0, 4},
	} {
		if f.v < f.lo || f.v > f.hi {
			return fmt.Errorf("--%s: %d is out of range %d..%d", f.flag, f.v, f.lo, f.hi)
		}
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("--ratelimit-memory: %w", err)
	}
	return nil
}

// checkDashes catches a long option written with one dash, which GNU-style
// parsing would read as a cluster of short options and reject with a
// puzzling message about its second letter.
func checkDashes(fs *pflag.FlagSet, args []string) error {
	for _, arg := range args {
		if arg == "--" {
			return nil
		}
		if len(arg) < 3 || arg[0] != '-' || arg[1] == '-' {
			continue
		}
		name, _, _ := strings.Cut(arg[1:], "=")
		if fs.Lookup(name) != nil {
			return fmt.Errorf("%s: long options take two dashes: -%s", arg, arg)
		}
	}
	return nil
}

// maxSocketBuffer bounds --receive-buffer and --send-buffer. The kernel
// charges each queued request the true size of its buffer, not its 48 bytes
// of NTP: measured on loopback here, a 4 MiB buffer holds about 10,000
// requests, so 64 MiB holds about 160,000, most of a second at 200,000
// requests/s. Requests queued longer than that are answered after their
// clients have stopped waiting, and only delay the replies behind them.
const maxSocketBuffer = 64 << 20

// addressValue is an address and port flag. An empty family accepts both.
type addressValue struct {
	ap      *netip.AddrPort
	family  string
	example string
}

func (v *addressValue) String() string { return v.ap.String() }
func (v *addressValue) Type() string   { return "address:port" }

func (v *addressValue) Set(s string) error {
	family := v.family
	if family == "" {
		family = "IP"
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		// netip's message names its own functions; say what is wanted.
		return fmt.Errorf("want an %s address and a port, such as %s (host names are not looked up)", family, v.example)
	}
	addr := ap.Addr()
	if (v.family == "IPv4" && !addr.Is4()) || (v.family == "IPv6" && (!addr.Is6() || addr.Is4In6())) {
		return fmt.Errorf("not an %s address; want one such as %s", v.family, v.example)
	}
	*v.ap = ap
	return nil
}

// optionalAddressValue is an address flag whose zero value means off.
type optionalAddressValue struct{ addressValue }

func (v *optionalAddressValue) String() string {
	if !v.ap.IsValid() {
		return ""
	}
	return v.ap.String()
}

// pathValue is the --io-path flag.
type pathValue struct{ p *batch.Path }

func (v *pathValue) String() string { return v.p.String() }
func (v *pathValue) Type() string   { return "path" }

func (v *pathValue) Set(s string) error {
	p, err := batch.ParsePath(s)
	if err != nil {
		return errors.New("want auto, fast or portable")
	}
	*v.p = p
	return nil
}

// stampingValue is the --transmit-stamps flag.
type stampingValue struct{ s *responder.Stamping }

func (v *stampingValue) String() string { return v.s.String() }
func (v *stampingValue) Type() string   { return "where" }

func (v *stampingValue) Set(s string) error {
	st, err := responder.ParseStamping(s)
	if err != nil {
		return errors.New("want auto, device or syscall")
	}
	*v.s = st
	return nil
}

// xdpModeValue is the --xdp-mode flag.
type xdpModeValue struct{ m *xdp.Mode }

func (v *xdpModeValue) String() string { return v.m.String() }
func (v *xdpModeValue) Type() string   { return "mode" }

func (v *xdpModeValue) Set(s string) error {
	m, ok := xdp.ParseMode(s)
	if !ok {
		return errors.New("want auto, native or generic")
	}
	*v.m = m
	return nil
}

// sizeValue is a byte count with an optional binary suffix: 4194304, 4096K
// or 4M.
type sizeValue struct{ n *int }

func (v *sizeValue) Type() string { return "bytes" }

func (v *sizeValue) String() string { return formatSize(*v.n) }

// formatSize writes a byte count as sizeValue reads it.
func formatSize(n int) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return strconv.Itoa(n>>30) + "G"
	case n != 0 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "M"
	case n != 0 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "K"
	default:
		return strconv.Itoa(n)
	}
}

func (v *sizeValue) Set(s string) error {
	digits, shift := s, 0
	switch {
	case strings.HasSuffix(s, "K"):
		digits, shift = s[:len(s)-1], 10
	case strings.HasSuffix(s, "M"):
		digits, shift = s[:len(s)-1], 20
	case strings.HasSuffix(s, "G"):
		digits, shift = s[:len(s)-1], 30
	}
	n, err := strconv.ParseUint(digits, 10, 31)
	if err != nil || n<<shift > 1<<31-1 {
		return errors.New("want a size in bytes below 2G, such as 4194304, 4096K or 4M")
	}
	*v.n = int(n << shift)
	return nil
}

// accessValue is --allow or --deny. Both append to one list, so that the
// rules keep their command-line order: a later rule for the same network
// replaces an earlier one.
type accessValue struct {
	rules *[]responder.AccessRule
	allow bool
}

func (v *accessValue) Type() string { return "CIDR" }

func (v *accessValue) String() string { return "" }

func (v *accessValue) Set(s string) error {
	prefixes, err := parseNetwork(s)
	if err != nil {
		return err
	}
	for _, p := range prefixes {
		*v.rules = append(*v.rules, responder.AccessRule{Prefix: p, Allow: v.allow})
	}
	return nil
}

// parseNetwork reads a network as chronyd's allow and deny do: an address
// with a prefix length (192.0.2.0/24, 2001:db8::/32), an address alone for
// that host, or all for every address of both families.
func parseNetwork(s string) ([]netip.Prefix, error) {
	if s == "all" {
		return []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0)}, nil
	}
	if !strings.Contains(s, "/") {
		addr, err := netip.ParseAddr(s)
		if err != nil || addr.Zone() != "" {
			return nil, errors.New("want a network such as 192.0.2.0/24 or 2001:db8::/32, an address, or all")
		}
		return []netip.Prefix{netip.PrefixFrom(addr, addr.BitLen())}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return nil, errors.New("want a network such as 192.0.2.0/24 or 2001:db8::/32, an address, or all")
	}
	return []netip.Prefix{p}, nil
}

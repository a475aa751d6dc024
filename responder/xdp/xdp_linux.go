package xdp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/fastntp/fastntp/responder/kernel"
	"github.com/fastntp/fastntp/upstream"
)

// Available reports whether this build has the fast path.
const Available = true

// Device is a device the program is attached to, and how.
type Device struct {
	Name string
	Mode Mode // ModeNative or ModeGeneric
}

// Path is the program, attached to its devices.
type Path struct {
	objects kernel.XDPObjects
	links   []link.Link
	devices []Device

	mu     sync.Mutex
	config kernel.XDPConfig // as last written
	last   *upstream.Snapshot
	closed bool
	// final holds the counts last read, and after Close, those read as
	// the program was closed.
	final Counts
	// readClock reads the clock's relation; tests replace it.
	readClock func() (kernel.Clock, error)
	// wakes counts Run's looks at the state and the clock.
	wakes atomic.Uint64
}

// Attach loads the program, gives it cfg, and attaches it to each of
// cfg.Devices through a BPF link, which the kernel removes when the
// process exits, however it exits. Until Publish or Run gives it a state,
// the program's replies are unsynchronized. It needs CAP_BPF and
// CAP_NET_ADMIN, and a kernel with bpf_ktime_get_tai_ns (Linux 6.1). A
// device that already has an XDP program is an error that names the
// program: fastntp never replaces another's.
func Attach(cfg Config) (*Path, error) {
	if len(cfg.Devices) == 0 {
		return nil, errors.New("xdp: no device")
	}
	p, err := load(cfg)
	if err != nil {
		return nil, err
	}
	for _, name := range cfg.Devices {
		d, err := p.attach(name, cfg.Mode)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.devices = append(p.devices, d)
	}
	return p, nil
}

// load loads the program and fills its maps for cfg, without attaching it.
func load(cfg Config) (*Path, error) {
	spec, err := kernel.LoadXDP()
	if err != nil {
		return nil, fmt.Errorf("xdp: %w", err)
	}
	var rules4, rules6 int
	for _, r := range cfg.Access {
		if r.Prefix.Addr().Is4() {
			rules4++
		} else {
			rules6++
		}
	}
	// Sized to what they hold: a full map refuses more, and a
	// preallocated one takes its memory up front.
	spec.Maps[kernel.XDPMapAccess4].MaxEntries = uint32(max(1, rules4))
	spec.Maps[kernel.XDPMapAccess6].MaxEntries = uint32(max(1, rules6))
	served, err := expandServed(cfg.Served)
	if err != nil {
		return nil, err
	}
	cfg.Served = served
	spec.Maps[kernel.XDPMapServedAddresses].MaxEntries = uint32(max(1, len(served)))
	if cfg.RateLimit != nil {
		if cfg.RateLimit.Slots < 1 {
			return nil, errors.New("xdp: a rate limit without a slot of records")
		}
		spec.Maps[kernel.XDPMapClientSlots].MaxEntries = uint32(cfg.RateLimit.Slots)
	}
	if err := spec.Variables[kernel.XDPVarClockGuardNs].Set(int64(kernel.ClockGuard)); err != nil {
		return nil, fmt.Errorf("xdp: set the clock guard: %w", err)
	}
	p := &Path{readClock: kernel.ReadClock}
	if err := spec.LoadAndAssign(&p.objects, nil); err != nil {
		var verifierError *ebpf.VerifierError
		if errors.As(err, &verifierError) {
			return nil, fmt.Errorf("xdp: load the program: %+v", verifierError)
		}
		return nil, fmt.Errorf("xdp: load the program: %w", err)
	}
	if err := p.configure(cfg); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// expandServed replaces each unspecified address in served with the
// addresses of its family that the calling thread's network namespace has,
// loopback and IPv4-mapped ones aside, keeping the port.
func expandServed(served []netip.AddrPort) ([]netip.AddrPort, error) {
	var expanded []netip.AddrPort
	var host []netip.Addr
	for _, a := range served {
		if !a.Addr().IsUnspecified() {
			expanded = append(expanded, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()))
			continue
		}
		if host == nil {
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				return nil, fmt.Errorf("xdp: list the host's addresses: %w", err)
			}
			for _, addr := range addrs {
				if prefix, err := netip.ParsePrefix(addr.String()); err == nil && !prefix.Addr().IsLoopback() {
					host = append(host, prefix.Addr())
				}
			}
		}
		for _, h := range host {
			if h.Is4() == a.Addr().Unmap().Is4() && !h.Is4In6() {
				expanded = append(expanded, netip.AddrPortFrom(h.WithZone(""), a.Port()))
			}
		}
	}
	if len(expanded) == 0 {
		return nil, errors.New("xdp: no address to serve")
	}
	return expanded, nil
}

// configure fills the program's maps, before it is attached anywhere.
func (p *Path) configure(cfg Config) error {
	for _, a := range cfg.Served {
		key := kernel.XDPServed{Addr: a.Addr().As16(), Port: htons(a.Port())}
		if err := p.objects.ServedAddresses.Put(key, uint8(1)); err != nil {
			return fmt.Errorf("xdp: serve %s: %w", a, err)
		}
	}
	for _, r := range cfg.Access {
		allow := uint8(0)
		if r.Allow {
			allow = 1
		}
		prefix := r.Prefix.Masked()
		var err error
		if prefix.Addr().Is4() {
			err = p.objects.Access4.Put(kernel.XDPPrefix4{Length: uint32(prefix.Bits()), Addr: prefix.Addr().As4()}, allow)
		} else {
			err = p.objects.Access6.Put(kernel.XDPPrefix6{Length: uint32(prefix.Bits()), Addr: prefix.Addr().As16()}, allow)
		}
		if err != nil {
			return fmt.Errorf("xdp: access rule %s: %w", prefix, err)
		}
	}
	c := &p.config
	c.MinPoll = cfg.MinPoll
	if cfg.Access != nil {
		c.Access = 1
		if cfg.DefaultAllow {
			c.DefaultAllow = 1
		}
	}
	if r := cfg.RateLimit; r != nil {
		c.Ratelimit = 1
		c.TokensPerHit, c.MaxTokens, c.TokenShift = r.TokensPerHit, r.MaxTokens, r.TokenShift
		c.Leak, c.Kod = r.Leak, r.KoD
		c.TimestampOffsetNs = uint32(r.TimestampOffset)
		c.Slots, c.HashSeed = uint32(r.Slots), r.HashSeed
	}
	// Unsynchronized until told otherwise.
	return p.Publish(upstream.Unsynchronized(0, upstream.CauseNoAnswerYet, "no state published yet"))
}

// attach attaches the program to the named device.
func (p *Path) attach(name string, mode Mode) (Device, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return Device{}, fmt.Errorf("xdp: device %s: %w", name, err)
	}
	if len(ifc.HardwareAddr) != 6 {
		return Device{}, fmt.Errorf("xdp: device %s is not an Ethernet device", name)
	}
	if id, err := attachedProgram(ifc.Index); err != nil {
		return Device{}, fmt.Errorf("xdp: device %s: %w", name, err)
	} else if id != 0 {
		return Device{}, fmt.Errorf("xdp: device %s already has an XDP program, %s; fastntp does not replace it", name, describeProgram(id))
	}
	var mac kernel.XDPDevice
	copy(mac.Mac[:], ifc.HardwareAddr)
	if err := p.objects.DeviceAddresses.Put(uint32(ifc.Index), mac); err != nil {
		return Device{}, fmt.Errorf("xdp: device %s: %w", name, err)
	}
	attach := func(flags link.XDPAttachFlags) (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: p.objects.FastntpXdp, Interface: ifc.Index, Flags: flags})
	}
	var l link.Link
	switch mode {
	case ModeNative:
		l, err = attach(link.XDPDriverMode)
	case ModeGeneric:
		l, err = attach(link.XDPGenericMode)
	default:
		mode = ModeNative
		l, err = attach(link.XDPDriverMode)
		if errors.Is(err, unix.EOPNOTSUPP) {
			mode = ModeGeneric
			l, err = attach(link.XDPGenericMode)
		}
	}
	if err != nil {
		return Device{}, fmt.Errorf("xdp: attach to %s in %s mode: %w", name, mode, err)
	}
	p.links = append(p.links, l)
	return Device{Name: name, Mode: mode}, nil
}

// Attached reports whether the program is still attached: Close, or a
// failure of Run, detaches it.
func (p *Path) Attached() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed
}

// Devices returns the devices the program is attached to, in the order of
// Config.Devices.
func (p *Path) Devices() []Device { return p.devices }

// Publish gives the program the state s to serve from now, with the clock's
// present relation. The program serves it as the socket path does: until
// s expires, with its leap-second window, unsynchronized after.
func (p *Path) Publish(s *upstream.Snapshot) error {
	clock, err := p.readClock()
	if err != nil {
		return fmt.Errorf("xdp: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.publish(s, clock)
}

// publish writes the configuration with s and clock. The caller holds p.mu.
func (p *Path) publish(s *upstream.Snapshot, clock kernel.Clock) error {
	if p.closed {
		return errors.New("xdp: the program is closed")
	}
	// The program's clock for expiry, leap window and dispersion is the
	// monotonic one, as the snapshot's times are.
	now, mono := time.Now(), kernel.Monotonic()
	onMonotonic := func(t time.Time) uint64 {
		return uint64(max(1, mono+t.Sub(now)))
	}
	c := p.config
	c.Clock.TaiOffsetNs = int64(clock.TAIOffset)
	c.Clock.TaiMinusMonoNs = int64(clock.TAIMinusMonotonic)
	c.Precision = s.Precision
	c.ExpiresMonoNs, c.LeapStartMonoNs, c.LeapEndMonoNs = 0, 0, 0
	if s.Synchronized {
		c.ExpiresMonoNs = onMonotonic(s.Expires)
		if start, end := s.LeapWindow(); !start.IsZero() {
			c.LeapStartMonoNs, c.LeapEndMonoNs = onMonotonic(start), onMonotonic(end)
		}
	}
	c.TakenMonoNs = onMonotonic(s.Taken)
	c.Leap, c.Stratum = s.Leap, s.Stratum
	c.ReferenceId, c.ReferenceTime = s.ReferenceID, uint64(s.ReferenceTime)
	c.RootDelay, c.RootDispersion = uint32(s.RootDelay), uint32(s.RootDispersion)
	// A hash map's element is replaced whole, so the program reads the
	// old configuration or the new, never a mixture.
	if err := p.objects.Configuration.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("xdp: write the configuration: %w", err)
	}
	p.config, p.last = c, s
	return nil
}

// pollInterval is how often Run looks for a new state when its Source
// cannot tell it of changes. Between two looks the program's own checks
// hold: it stops serving a state as synchronized when it expires, and
// passes every request on to the socket path when the clock was stepped.
const pollInterval = 100 * time.Millisecond

// clockInterval is how often Run reads the clock's relation when nothing
// else wakes it. A step of the clock or a new TAI offset (chronyd's
// leapsectz at its start, an operator's adjtimex) makes the program pass
// every request on to the sockets until Run tells it the new relation.
// Run reads it at every new state, once a poll of the backend (a second,
// by default); this is for longer poll intervals. Waking more often than
// the poller costs an idle server more than the reading itself: each wake
// sets the Go runtime's monitor spinning again for a while.
const clockInterval = 10 * time.Second

// Source provides the state to serve; *upstream.Poller is one.
type Source interface {
	Load() *upstream.Snapshot
}

// changeNotifier is a Source that says when its state changes, as
// *upstream.Poller does: Run then wakes for each change, and otherwise
// once every clockInterval.
type changeNotifier interface {
	Changed() <-chan struct{}
}

// Run keeps the program's state and clock those of source and of the
// kernel until ctx is done, then returns nil. It writes the program's
// configuration on every change of source's state and of the clock's
// relation, and at no other time. If it cannot tell the program, it
// detaches the program, so that the socket path answers everything, and
// returns why.
func (p *Path) Run(ctx context.Context, source Source) error {
	notifier, _ := source.(changeNotifier)
	interval := clockInterval
	if notifier == nil {
		interval = pollInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		var changed <-chan struct{}
		if notifier != nil {
			changed = notifier.Changed() // before Load: no change unseen
		}
		p.wakes.Add(1)
		if err := p.refresh(source.Load()); err != nil {
			p.Close()
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

// refresh writes the configuration again if the state or the clock's
// relation changed.
func (p *Path) refresh(s *upstream.Snapshot) error {
	clock, err := p.readClock()
	if err != nil {
		return fmt.Errorf("xdp: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	moved := clock.TAIMinusMonotonic - time.Duration(p.config.Clock.TaiMinusMonoNs)
	if s == p.last && clock.TAIOffset == time.Duration(p.config.Clock.TaiOffsetNs) && moved.Abs() < kernel.ClockGuard/4 {
		return nil
	}
	return p.publish(s, clock)
}

// Counts sums the program's counts over the CPUs. After Close, it returns
// them as they were then; if they cannot be read, those last read, with
// the error.
func (p *Path) Counts() (Counts, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return p.final, nil
	}
	c, err := p.counts()
	if err != nil {
		return p.final, err
	}
	p.final = c
	return c, nil
}

// counts reads the counts. The caller holds p.mu.
func (p *Path) counts() (Counts, error) {
	read := func(index kernel.XDPCounter) (uint64, error) {
		var perCPU []uint64
		if err := p.objects.Counts.Lookup(uint32(index), &perCPU); err != nil {
			return 0, fmt.Errorf("xdp: read counts: %w", err)
		}
		var sum uint64
		for _, n := range perCPU {
			sum += n
		}
		return sum, nil
	}
	var c Counts
	var errs []error
	for family, f := range []*FamilyCounts{&c.IPv4, &c.IPv6} {
		base := kernel.XDPCounter(family) * kernel.XDPCounterCOUNTS_PER_FAMILY
		for i, field := range []*uint64{&f.Received, &f.Replied, &f.KoDSent, &f.Denied, &f.RateLimited, &f.Evicted} {
			n, err := read(base + kernel.XDPCounter(i))
			errs = append(errs, err)
			*field = n
		}
	}
	for reason := range NumPassReasons {
		n, err := read(kernel.XDPCounterPASS_OTHER + kernel.XDPCounter(reason))
		errs = append(errs, err)
		c.Passed[reason] = n
	}
	return c, errors.Join(errs...)
}

// Close detaches the program from every device and releases it.
func (p *Path) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	var errs []error
	if p.objects.Counts != nil {
		if final, err := p.counts(); err == nil {
			p.final = final
		}
	}
	p.closed = true
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	errs = append(errs, p.objects.Close())
	return errors.Join(errs...)
}

func htons(v uint16) uint16 { return v>>8 | v<<8&0xff00 }

// attachedProgram returns the ID of the XDP program on the device with the
// given index, or 0, as the kernel's link table says (IFLA_XDP).
func attachedProgram(index int) (uint32, error) {
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETLINK, syscall.AF_UNSPEC)
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	messages, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return 0, fmt.Errorf("parse links: %w", err)
	}
	for _, m := range messages {
		if m.Header.Type != syscall.RTM_NEWLINK || len(m.Data) < syscall.SizeofIfInfomsg {
			continue
		}
		// struct ifinfomsg: family, padding, type, then the index.
		if int(int32(binary.NativeEndian.Uint32(m.Data[4:]))) != index {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			return 0, fmt.Errorf("parse link %d: %w", index, err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED == unix.IFLA_XDP {
				return nestedU32(a.Value, unix.IFLA_XDP_PROG_ID), nil
			}
		}
		return 0, nil
	}
	return 0, fmt.Errorf("no link with index %d", index)
}

// nestedU32 returns the 32-bit attribute of the given type among the
// netlink attributes in b, or 0.
func nestedU32(b []byte, attrType uint16) uint32 {
	for len(b) >= 4 {
		length := int(binary.NativeEndian.Uint16(b))
		if length < 4 || length > len(b) {
			return 0
		}
		if binary.NativeEndian.Uint16(b[2:])&^unix.NLA_F_NESTED == attrType && length >= 8 {
			return binary.NativeEndian.Uint32(b[4:])
		}
		b = b[min(len(b), (length+3)&^3):]
	}
	return 0
}

// describeProgram names the program with the given ID for an error.
func describeProgram(id uint32) string {
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return fmt.Sprintf("ID %d", id)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil || info.Name == "" {
		return fmt.Sprintf("ID %d", id)
	}
	return fmt.Sprintf("%q (ID %d)", info.Name, id)
}

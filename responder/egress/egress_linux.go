package egress

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/fastntp/fastntp/responder/kernel"
)

// Available reports whether this build can stamp at the device.
const Available = true

// Stamper is an eBPF program attached to the egress of network devices that
// rewrites the transmit timestamp of replies sent from its sockets.
type Stamper struct {
	program *ebpf.Program
	sockets *ebpf.Map // socket cookies; the value is unused
	offset  *ebpf.Map // one entry: TAI minus UTC, in nanoseconds
	counts  *ebpf.Map // per CPU: the fields of Counts, in order
	// netns identifies the network namespace Attach ran in, whose devices
	// the program serves.
	netns uint64

	// readOffset returns the kernel's TAI offset in nanoseconds; tests
	// replace it.
	readOffset func() (int64, error)

	mu sync.Mutex
	// linkEvents is a netlink socket of the server's namespace on which
	// the kernel announces devices that come and go, until Run takes it;
	// nil, with linkErr saying why, if it could not be opened.
	linkEvents *os.File
	linkErr    error
	devices    map[int]*device // by interface index
	refused    map[int]string  // devices that refused the program, by index, with their names
	// unreported holds the refusals of Attach, for Run to report.
	unreported []refusal
	lastOffset int64
	closed     bool
}

// refusal is a device's refusal of the program.
type refusal struct {
	name string
	err  error
}

func (r refusal) Error() string { return r.name + ": " + r.err.Error() }
func (r refusal) Unwrap() error { return r.err }

// device is one network device the program is attached to.
type device struct {
	name string
	link link.Link
}

// subscribe opens the socket on which the kernel announces device changes;
// tests replace it to make it fail.
var subscribe = subscribeLinks

// watchRetry is how long Run waits before it subscribes to the kernel's
// device announcements again after a failure.
var watchRetry = 5 * time.Second

// Attach loads the program and attaches it, ahead of any other program, to
// the egress of every network device of the calling thread's network
// namespace; Run attaches it to the devices that appear later. It needs
// CAP_BPF and CAP_NET_ADMIN, and Linux 6.6 or later (TCX). A device that
// refuses the program is left out, and Run reports it; Attach fails only
// if none accepts it.
func Attach() (*Stamper, error) {
	s := &Stamper{
		lastOffset: unsetOffset,
		readOffset: kernelOffset,
		devices:    make(map[int]*device),
		refused:    make(map[int]string),
	}
	spec, err := kernel.LoadEgress()
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	// The guard and the correction's bounds, in the units the program
	// compares: NTP timestamp units (2^-32 s) and seconds.
	for name, v := range map[string]int64{
		kernel.EgressVarGuardUnits:    int64(Guard) << 32 / int64(time.Second),
		kernel.EgressVarMaxCorrection: MaxCorrection,
		kernel.EgressVarSlackUnits:    int64(CorrectionSlack) << 32 / int64(time.Second),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("egress: set %s: %w", name, err)
		}
	}
	var objects kernel.EgressObjects
	if err := spec.LoadAndAssign(&objects, nil); err != nil {
		var verifierError *ebpf.VerifierError
		if errors.As(err, &verifierError) {
			return nil, fmt.Errorf("egress: load program: %+v", verifierError)
		}
		return nil, fmt.Errorf("egress: load program: %w", err)
	}
	s.program, s.sockets, s.offset, s.counts = objects.FastntpStamp, objects.Sockets, objects.TaiOffset, objects.StampCounts
	// The offset goes in before the program is attached anywhere, so that
	// no reply is stamped on the TAI scale.
	if err := s.refreshOffset(); err != nil {
		s.Close()
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if s.netns, err = currentNetns(); err != nil {
		s.Close()
		return nil, err
	}
	// Subscribed before the devices are listed, so that none that appears
	// in between goes unnoticed. Without the subscription, the devices of
	// now are served all the same, and Run reports it and tries again.
	s.linkEvents, s.linkErr = subscribe()
	s.mu.Lock()
	_, refused, err := s.attachNew()
	attached := len(s.devices)
	s.unreported = refused
	s.mu.Unlock()
	if err != nil {
		s.Close()
		return nil, err
	}
	if attached == 0 {
		s.Close()
		errs := make([]error, len(refused))
		for i, r := range refused {
			errs[i] = r
		}
		return nil, fmt.Errorf("egress: attach to any device: %w", errors.Join(errs...))
	}
	return s, nil
}

// attachNew attaches the program to every device of the calling thread's
// network namespace that it is not yet attached to and that has not refused
// it, and lets go of the devices that are gone. It returns the devices it
// attached the program to and those that refused it. The caller holds
// s.mu, and its thread is locked.
func (s *Stamper) attachNew() (attached []string, refused []refusal, err error) {
	interfaces, err := net.Interfaces()
	if err != nil {
		return nil, nil, fmt.Errorf("egress: list interfaces: %w", err)
	}
	present := make(map[int]string, len(interfaces))
	for _, ifc := range interfaces {
		present[ifc.Index] = ifc.Name
	}
	// The kernel detaches the program from a device that goes away; what
	// is left to do is close the link. An index taken by a new device is
	// attached anew.
	for index, d := range s.devices {
		if present[index] != d.name {
			d.link.Close()
			delete(s.devices, index)
		}
	}
	for index, name := range s.refused {
		if present[index] != name {
			delete(s.refused, index)
		}
	}
	for _, ifc := range interfaces {
		if _, ok := s.devices[ifc.Index]; ok {
			continue
		}
		if _, ok := s.refused[ifc.Index]; ok {
			continue
		}
		// At the head: a program ahead of this one that returns "pass"
		// ends the chain and would leave replies unstamped, and agents
		// such as Cilium's append their programs at the tail.
		l, err := link.AttachTCX(link.TCXOptions{
			Interface: ifc.Index,
			Program:   s.program,
			Attach:    ebpf.AttachTCXEgress,
			Anchor:    link.Head(),
		})
		if err != nil {
			s.refused[ifc.Index] = ifc.Name
			refused = append(refused, refusal{ifc.Name, err})
			continue
		}
		s.devices[ifc.Index] = &device{name: ifc.Name, link: l}
		attached = append(attached, ifc.Name)
	}
	return attached, refused, nil
}

// Devices returns the names of the devices the program is attached to, in
// the order of their interface indexes.
func (s *Stamper) Devices() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	indexes := slices.Sorted(maps.Keys(s.devices))
	names := make([]string, len(indexes))
	for i, index := range indexes {
		names[i] = s.devices[index].name
	}
	return names
}

// Refused returns the names of the devices that refused the program, in
// the order of their interface indexes.
func (s *Stamper) Refused() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	indexes := slices.Sorted(maps.Keys(s.refused))
	names := make([]string, len(indexes))
	for i, index := range indexes {
		names[i] = s.refused[index]
	}
	return names
}

// Add makes the program stamp the replies that the socket with the given
// cookie (SO_COOKIE) sends. The socket is known by its cookie alone, not its
// port, so that replies whose source port NAT rewrote (a redirect from port
// 123) are stamped too.
func (s *Stamper) Add(cookie uint64) error {
	if err := s.sockets.Put(cookie, uint8(0)); err != nil {
		return fmt.Errorf("egress: add socket %d: %w", cookie, err)
	}
	return nil
}

// Counts sums the program's counts over every CPU.
func (s *Stamper) Counts() (Counts, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Counts{}, errors.New("egress: read counts: the stamper is closed")
	}
	var c Counts
	for i, total := range []*uint64{&c.Stamped, &c.Corrected, &c.Unsure, &c.ChecksumFailed} {
		// The fields of Counts are in the order of the program's
		// counters, enum stamp_counter.
		var perCPU []uint64
		if err := s.counts.Lookup(uint32(i), &perCPU); err != nil {
			return Counts{}, fmt.Errorf("egress: read counts: %w", err)
		}
		for _, n := range perCPU {
			*total += n
		}
	}
	return c, nil
}

// refreshInterval is how often Run reads the kernel's TAI offset. It only
// changes at a leap second, when chronyd (leapsectz) or an operator sets
// it; until the next reading the guard keeps replies from a stale offset.
const refreshInterval = 250 * time.Millisecond

// Run keeps the program's TAI offset equal to the kernel's, and attaches
// the program to devices that appear after Attach (a VPN's tunnel, a
// bridge, a NIC brought up late) as the kernel announces them, until ctx is
// done. If the offset changes and the program cannot be told, Run detaches
// the program, so that the replies keep their user-space stamps rather
// than carry a wrong one, and returns the error. Unless report is nil, Run
// reports the devices that refused the program at Attach, then each device
// it attaches the program to or that refuses it, and the loss and recovery
// of the kernel's announcements, which it subscribes to again every few
// seconds until it succeeds. A Stamper runs once.
func (s *Stamper) Run(ctx context.Context, report func(Event)) error {
	if report == nil {
		report = func(Event) {}
	}
	events, subscribeErr := s.takeLinkEvents()
	for _, r := range s.takeUnreported() {
		report(Event{Kind: Refused, Device: r.name, Err: r.err})
	}
	offset := time.NewTicker(refreshInterval)
	defer offset.Stop()
	// Polling the device list instead cost a busy server measurably: a
	// listing takes up to 0.7 ms here, and wakes the runtime's monitor.
	changed := make(chan struct{}, 1)
	watchEnded := make(chan error, 1)
	var watcher sync.WaitGroup
	watch := func(f *os.File) {
		events = f
		watcher.Go(func() { watchEnded <- watchLinks(f, changed) })
	}
	defer func() {
		if events != nil {
			events.Close() // ends watchLinks's read
		}
		watcher.Wait()
	}()
	var retry <-chan time.Time
	if subscribeErr != nil {
		report(Event{Kind: WatchFailed, Err: subscribeErr})
		retry = time.After(watchRetry)
	} else {
		watch(events)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-offset.C:
			if err := s.refreshOffset(); err != nil {
				s.Close()
				return err
			}
		case err := <-watchEnded:
			events.Close()
			events = nil
			report(Event{Kind: WatchFailed, Err: err})
			retry = time.After(watchRetry)
		case <-retry:
			f, err := s.resubscribe()
			if err != nil {
				retry = time.After(watchRetry)
				continue
			}
			retry = nil
			watch(f)
			report(Event{Kind: WatchResumed})
			// Devices may have come while nobody listened.
			select {
			case changed <- struct{}{}:
			default:
			}
		case <-changed:
			attached, refused := s.rescan()
			for _, name := range attached {
				report(Event{Kind: Attached, Device: name})
			}
			for _, r := range refused {
				report(Event{Kind: Refused, Device: r.name, Err: r.err})
			}
		}
	}
}

// rescan attaches the program to new devices, from a thread in the network
// namespace that Attach ran in; from any other it does nothing, rather than
// reach into a namespace that is not the server's. Failing to list the
// devices is not worth stopping for: the next change tries again.
func (s *Stamper) rescan() (attached []string, refused []refusal) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if ns, err := currentNetns(); err != nil || ns != s.netns {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil
	}
	attached, refused, _ = s.attachNew()
	return attached, refused
}

// resubscribe subscribes to the kernel's device announcements again, from
// a thread in the server's network namespace.
func (s *Stamper) resubscribe() (*os.File, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := currentNetns()
	if err != nil {
		return nil, err
	}
	if ns != s.netns {
		return nil, errors.New("egress: Run's thread is not in the server's network namespace")
	}
	return subscribe()
}

// subscribeLinks opens a netlink socket on which the kernel announces the
// devices of the calling thread's network namespace that come, go or
// change. The socket stays in that namespace whichever thread reads it.
func subscribeLinks() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("egress: netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("egress: subscribe to device changes: %w", err)
	}
	return os.NewFile(uintptr(fd), "netlink-links"), nil
}

// watchLinks signals changed whenever the kernel announces a change of
// devices, until a read fails, and returns why. An overrun (ENOBUFS) lost
// some announcements, which a signal covers too: the receiver lists the
// devices afresh.
func watchLinks(events *os.File, changed chan<- struct{}) error {
	buf := make([]byte, 16<<10)
	for {
		n, err := events.Read(buf)
		if err != nil && !errors.Is(err, unix.ENOBUFS) {
			return fmt.Errorf("egress: read device announcements: %w", err)
		}
		if err == nil && n == 0 {
			return errors.New("egress: device announcements ended")
		}
		select {
		case changed <- struct{}{}:
		default: // a signal is pending already
		}
	}
}

// takeLinkEvents hands the device announcements to their one reader, or
// says why there are none.
func (s *Stamper) takeLinkEvents() (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	events, err := s.linkEvents, s.linkErr
	s.linkEvents, s.linkErr = nil, nil
	if events == nil && err == nil {
		err = errors.New("egress: the device announcements were taken already")
	}
	return events, err
}

// takeUnreported hands the refusals of Attach to Run.
func (s *Stamper) takeUnreported() []refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.unreported
	s.unreported = nil
	return r
}

// currentNetns identifies the calling thread's network namespace by the
// inode of its namespace file.
func currentNetns() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("egress: network namespace: %w", err)
	}
	return st.Ino, nil
}

// refreshOffset copies the kernel's TAI offset into the program's map when
// it has changed.
func (s *Stamper) refreshOffset() error {
	offset, err := s.readOffset()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || offset == s.lastOffset {
		return nil
	}
	if err := s.offset.Put(uint32(0), uint64(offset)); err != nil {
		return fmt.Errorf("egress: set TAI offset to %v: %w", time.Duration(offset), err)
	}
	s.lastOffset = offset
	return nil
}

// kernelOffset reads the kernel's TAI offset, which adjtimex reports
// without privileges.
func kernelOffset() (int64, error) {
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		return 0, fmt.Errorf("egress: read TAI offset: %w", err)
	}
	return int64(tx.Tai) * int64(time.Second), nil
}

// unsetOffset marks a map not yet written: no kernel's TAI offset is this.
const unsetOffset = -1 << 63

// Close detaches the program from every device and releases it. The
// kernel detaches it as well when the process exits, however it exits.
func (s *Stamper) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.linkEvents != nil { // never taken by Run
		errs = append(errs, s.linkEvents.Close())
	}
	for _, d := range s.devices {
		errs = append(errs, d.link.Close())
	}
	if s.program != nil {
		errs = append(errs, s.program.Close())
	}
	for _, m := range []*ebpf.Map{s.sockets, s.offset, s.counts} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

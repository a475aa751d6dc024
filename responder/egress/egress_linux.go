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
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Available reports whether this build can stamp at the device.
const Available = true

// maxSockets bounds the sockets one Stamper serves: far more than any host
// has cores to run workers on.
const maxSockets = 4096

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
	var err error
	s.sockets, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "fastntp_socks",
		Type:       ebpf.Hash,
		KeySize:    8,
		ValueSize:  1,
		MaxEntries: maxSockets,
	})
	if err != nil {
		return nil, fmt.Errorf("egress: create socket map: %w", err)
	}
	s.offset, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "fastntp_tai",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: 1,
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("egress: create offset map: %w", err)
	}
	s.counts, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "fastntp_counts",
		Type:       ebpf.PerCPUArray,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: numCounts,
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("egress: create count map: %w", err)
	}
	// The offset goes in before the program can run, so that no reply is
	// stamped on the TAI scale.
	if err := s.refreshOffset(); err != nil {
		s.Close()
		return nil, err
	}
	s.program, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "fastntp_stamp",
		Type:         ebpf.SchedCLS,
		AttachType:   ebpf.AttachTCXEgress,
		Instructions: program(s.sockets.FD(), s.offset.FD(), s.counts.FD()),
		License:      "Dual MIT/GPL",
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("egress: load program: %w", err)
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

// Offsets from the end of the packet. The program finds the reply from its
// end because the headers in front of it vary: an Ethernet header or none,
// a VLAN tag, IPv4 or IPv6 with or without options.
const (
	replySize       = 48
	udpHeaderSize   = 8
	udpLength       = udpHeaderSize + replySize // the UDP header's length field
	udpFromEnd      = replySize + udpHeaderSize // start of the UDP header
	checksumFromEnd = udpFromEnd - 6            // UDP checksum field
	transmitFromEnd = 8                         // transmit timestamp, the last field

	// minPacket and maxPacket bound the length of a packet that can hold
	// a reply: at least an IPv4 header on a device without a link-layer
	// header, and at most room for link-layer headers with VLAN tags, an
	// IPv6 header with extension headers, or a tunnel's outer headers.
	// Checked first, they let most other traffic pass at the cost of one
	// load and two comparisons.
	minPacket = 20 + udpLength
	maxPacket = 256

	// ntpEpochOffset is the number of seconds from 1900 to 1970.
	ntpEpochOffset = 2208988800
	// ntpModeServer and ntpModePassive are the modes of fastntp's replies,
	// to clients and to symmetric active peers.
	ntpModeServer  = 4
	ntpModePassive = 2
	// guardUnits and slackUnits are Guard and CorrectionSlack in the
	// units of an NTP timestamp, 2^-32 s.
	guardUnits = int64(Guard) << 32 / int64(time.Second)
	slackUnits = int64(CorrectionSlack) << 32 / int64(time.Second)

	// tcxNext lets the packet go on to the next program, or out.
	tcxNext = -1
	// markMangled0 (BPF_F_MARK_MANGLED_0) leaves an IPv4 checksum of 0,
	// which means none, alone, and writes a computed 0 as 0xffff.
	markMangled0 = 1 << 5
)

// The program's counts, the keys of its count map, in the order of the
// fields of Counts.
const (
	countStamped = iota
	countCorrected
	countUnsure
	countChecksumFailed
	numCounts
)

// Stack slots of the program, below the frame pointer R10.
const (
	slotKey       = -8  // map keys
	slotHeader    = -24 // UDP header and the first 8 bytes of the reply
	slotOld       = -32 // the transmit timestamp user space wrote
	slotNew       = -40 // the transmit timestamp the program writes
	slotCorrected = -48 // 1 if the program corrected its reading
)

// program returns the classifier. In outline:
//
//	if packet length not in [minPacket, maxPacket]: pass
//	if socket cookie not in sockets: pass
//	if UDP length != 56 or NTP mode is not 4 (server) or 2 (passive): pass
//	old := the transmit timestamp at len-8
//	now := ktime_get_tai_ns() - offset
//	new := (now/1e9 + 2208988800) << 32 | (now%1e9 << 32) / 1e9
//	if |new - old| > Guard:
//		k := new - old, rounded to whole seconds
//		if |k| > MaxCorrection or |new - old - k| > CorrectionSlack: count unsure; pass
//		new -= k; count corrected
//	store new at len-8, adjust the UDP checksum by the difference
//	if the checksum could not be adjusted: put old back; count failed; pass
//	count stamped; pass
//
// Whatever it finds, it returns "next", so that programs attached after it
// still run and the packet is never dropped by it.
func program(sockets, offset, counts int) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // R6: the skb

		// R7: the packet's length, L2 header included.
		asm.LoadMem(asm.R7, asm.R6, 0, asm.Word),
		asm.JLT.Imm(asm.R7, minPacket, "pass"),
		asm.JGT.Imm(asm.R7, maxPacket, "pass"),

		// Only replies from fastntp's own sockets.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, slotKey, asm.R0, asm.DWord),
	}
	insns = append(insns, mapLookup(sockets)...)
	// The UDP header and the reply's first bytes.
	insns = append(insns, packetBytes(asm.FnSkbLoadBytes, udpFromEnd, slotHeader, 16, "pass")...)
	insns = append(insns,
		asm.LoadMem(asm.R1, asm.RFP, slotHeader+4, asm.Half),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.JNE.Imm(asm.R1, udpLength, "pass"),
		asm.LoadMem(asm.R1, asm.RFP, slotHeader+udpHeaderSize, asm.Byte),
		asm.And.Imm(asm.R1, 7),
		asm.JEq.Imm(asm.R1, ntpModeServer, "reply"),
		asm.JNE.Imm(asm.R1, ntpModePassive, "pass"),
	)
	// The stamp user space wrote, for the guard and the checksum.
	old := packetBytes(asm.FnSkbLoadBytes, transmitFromEnd, slotOld, 8, "pass")
	old[0] = old[0].WithSymbol("reply")
	insns = append(insns, old...)
	insns = append(insns,
		asm.StoreImm(asm.RFP, slotKey, 0, asm.Word),
	)
	insns = append(insns, mapLookup(offset)...)
	insns = append(insns,
		// R8: UTC in nanoseconds since 1970.
		asm.LoadMem(asm.R9, asm.R0, 0, asm.DWord),
		asm.FnKtimeGetTaiNs.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.Sub.Reg(asm.R8, asm.R9),

		// R9: seconds since 1900; R8: nanoseconds within the second.
		asm.Mov.Reg(asm.R9, asm.R8),
		asm.Div.Imm(asm.R9, 1e9),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.Mul.Imm(asm.R1, 1e9),
		asm.Sub.Reg(asm.R8, asm.R1),
		asm.LoadImm(asm.R1, ntpEpochOffset, asm.DWord),
		asm.Add.Reg(asm.R9, asm.R1),
		// R9: the new stamp, 32.32 fixed point.
		asm.LSh.Imm(asm.R8, 32),
		asm.Div.Imm(asm.R8, 1e9),
		asm.LSh.Imm(asm.R9, 32),
		asm.Or.Reg(asm.R9, asm.R8),

		// The guard. R2: new - old.
		asm.StoreImm(asm.RFP, slotCorrected, 0, asm.Word),
		asm.LoadMem(asm.R1, asm.RFP, slotOld, asm.DWord),
		asm.HostTo(asm.BE, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R2, asm.R9),
		asm.Sub.Reg(asm.R2, asm.R1),
		asm.Mov.Reg(asm.R3, asm.R2),
	)
	insns = append(insns, jumpOnRange(asm.R3, guardUnits, asm.JLE, "write")...)
	insns = append(insns,
		// Beyond it: R3, the difference rounded to whole seconds, must
		// be at most MaxCorrection away, and R2, what is left, within
		// CorrectionSlack.
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.LoadImm(asm.R4, 1<<31, asm.DWord),
		asm.Add.Reg(asm.R3, asm.R4),
		asm.ArSh.Imm(asm.R3, 32),
		asm.Mov.Reg(asm.R5, asm.R3),
	)
	insns = append(insns, jumpOnRange(asm.R5, MaxCorrection, asm.JGT, "unsure")...)
	insns = append(insns,
		asm.LSh.Imm(asm.R3, 32),
		asm.Sub.Reg(asm.R2, asm.R3),
	)
	insns = append(insns, jumpOnRange(asm.R2, slackUnits, asm.JGT, "unsure")...)
	insns = append(insns,
		// The program's clock is that many whole seconds off: its TAI
		// offset is stale. Taken away, the reading is right.
		asm.Sub.Reg(asm.R9, asm.R3),
		asm.StoreImm(asm.RFP, slotCorrected, 1, asm.Word),

		// The new stamp, big-endian.
		asm.HostTo(asm.BE, asm.R9, asm.DWord).WithSymbol("write"),
		asm.StoreMem(asm.RFP, slotNew, asm.R9, asm.DWord),

		// R8: the checksum difference.
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, slotOld),
		asm.Mov.Imm(asm.R2, 8),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, slotNew),
		asm.Mov.Imm(asm.R4, 8),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnCsumDiff.Call(),
		asm.JSLT.Imm(asm.R0, 0, "failed"),
		asm.Mov.Reg(asm.R8, asm.R0),
	)
	insns = append(insns, packetBytes(asm.FnSkbStoreBytes, transmitFromEnd, slotNew, 8, "failed")...)
	insns = append(insns,
		// The UDP checksum, adjusted by the difference.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Sub.Imm(asm.R2, checksumFromEnd),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Reg(asm.R4, asm.R8),
		asm.Mov.Imm(asm.R5, markMangled0),
		asm.FnL4CsumReplace.Call(),
		asm.JNE.Imm(asm.R0, 0, "restore"),
	)
	// A corrected stamp is counted as such, and as stamped.
	insns = append(insns,
		asm.LoadMem(asm.R1, asm.RFP, slotCorrected, asm.Word),
		asm.JEq.Imm(asm.R1, 0, "stamped"),
	)
	insns = append(insns, count(counts, countCorrected, "corrected", "stamped")...)
	insns = append(insns, count(counts, countStamped, "stamped", "pass")...)
	// A new stamp under the old checksum would make the client drop the
	// reply: the old stamp goes back.
	restore := packetBytes(asm.FnSkbStoreBytes, transmitFromEnd, slotOld, 8, "failed")
	restore[0] = restore[0].WithSymbol("restore")
	insns = append(insns, restore...)
	insns = append(insns, count(counts, countChecksumFailed, "failed", "pass")...)
	insns = append(insns, count(counts, countUnsure, "unsure", "pass")...)
	insns = append(insns,
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("pass"),
		asm.Return(),
	)
	return insns
}

// count adds one to the count at index, in the CPU's slot of the count
// map, and goes on at next. Its first instruction is labelled symbol.
func count(counts int, index int32, symbol, next string) asm.Instructions {
	insns := asm.Instructions{asm.StoreImm(asm.RFP, slotKey, int64(index), asm.Word).WithSymbol(symbol)}
	insns = append(insns, mapLookup(counts)...)
	return append(insns,
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 0),
		asm.Ja.Label(next),
	)
}

// jumpOnRange compares the signed value in reg with the range -bound to
// bound, and jumps to label if op says so of the comparison: JLE when the
// value is within the range, JGT when it is beyond. One unsigned
// comparison does: reg + bound is at most 2·bound exactly when reg is in
// the range. It changes reg, and R4.
func jumpOnRange(reg asm.Register, bound int64, op asm.JumpOp, label string) asm.Instructions {
	return asm.Instructions{
		asm.LoadImm(asm.R4, bound, asm.DWord),
		asm.Add.Reg(reg, asm.R4),
		asm.LoadImm(asm.R4, 2*bound, asm.DWord),
		op.Reg(reg, asm.R4, label),
	}
}

// mapLookup looks the key in the slotKey stack slot up in the map, leaves
// the program if it is absent, and leaves a pointer to its value in R0.
func mapLookup(m int) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, slotKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
	}
}

// packetBytes calls bpf_skb_load_bytes or bpf_skb_store_bytes for the n
// bytes that start fromEnd bytes before the end of the packet (its length
// in R7) and the stack slot at slot, and jumps to onError if it fails.
func packetBytes(fn asm.BuiltinFunc, fromEnd, slot, n int32, onError string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Sub.Imm(asm.R2, fromEnd),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, slot),
		asm.Mov.Imm(asm.R4, n),
		asm.Mov.Imm(asm.R5, 0), // store's flags; load has no fifth argument
		fn.Call(),
		asm.JNE.Imm(asm.R0, 0, onError),
	}
}

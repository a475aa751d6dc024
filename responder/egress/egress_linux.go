package egress

import (
	"context"
	"encoding/binary"
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
	sockets *ebpf.Map // socket cookie -> its port, big-endian
	offset  *ebpf.Map // one entry: TAI minus UTC, in nanoseconds
	// netns identifies the network namespace Attach ran in, whose devices
	// the program serves.
	netns uint64
	// linkEvents is a netlink socket of that namespace on which the kernel
	// announces devices that come and go, or nil if it could not be opened.
	linkEvents *os.File

	// readOffset returns the kernel's TAI offset in nanoseconds; tests
	// replace it.
	readOffset func() (int64, error)

	mu         sync.Mutex
	devices    map[int]*device // by interface index
	refused    map[int]string  // devices that refused the program, by index, with their names
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

// Attach loads the program and attaches it to the egress of every network
// device of the calling thread's network namespace; Run attaches it to the
// devices that appear later. It needs CAP_BPF and CAP_NET_ADMIN, and Linux
// 6.6 or later (TCX). A device that refuses the program is left out; Attach
// fails only if none accepts it.
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
		ValueSize:  2,
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
		Instructions: program(s.sockets.FD(), s.offset.FD()),
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
	// now are served all the same.
	s.linkEvents, _ = subscribeLinks()
	s.mu.Lock()
	_, refused, err := s.attachNew()
	attached := len(s.devices)
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
		l, err := link.AttachTCX(link.TCXOptions{
			Interface: ifc.Index,
			Program:   s.program,
			Attach:    ebpf.AttachTCXEgress,
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

// Add makes the program stamp the replies that the socket with the given
// cookie (SO_COOKIE), bound to port, sends.
func (s *Stamper) Add(cookie uint64, port uint16) error {
	var value [2]byte
	binary.BigEndian.PutUint16(value[:], port)
	if err := s.sockets.Put(cookie, value); err != nil {
		return fmt.Errorf("egress: add socket %d: %w", cookie, err)
	}
	return nil
}

// refreshInterval is how often Run reads the kernel's TAI offset. It only
// changes at a leap second, when chronyd (leapsectz) or an operator sets
// it; replies of the second after a leap are served as unsynchronized in
// any case.
const refreshInterval = 250 * time.Millisecond

// Run keeps the program's TAI offset equal to the kernel's, and attaches
// the program to devices that appear after Attach (a VPN's tunnel, a
// bridge, a NIC brought up late) as the kernel announces them, until ctx is
// done. If the offset changes and the program cannot be told, Run detaches
// the program, so that the replies fall back to their user-space stamps
// rather than carry a wrong one, and returns the error. A device that
// refuses the program keeps the user-space stamps. Unless it is nil, Run
// calls onDevice with the name of each device it attaches the program to,
// and of each that refuses it with the reason. A Stamper runs once.
func (s *Stamper) Run(ctx context.Context, onDevice func(name string, err error)) error {
	offset := time.NewTicker(refreshInterval)
	defer offset.Stop()
	// Polling the device list instead cost a busy server measurably: a
	// listing takes up to 0.7 ms here, and wakes the runtime's monitor.
	changed := make(chan struct{}, 1)
	if events := s.takeLinkEvents(); events != nil {
		var watcher sync.WaitGroup
		watcher.Go(func() { watchLinks(events, changed) })
		defer func() {
			events.Close() // ends watchLinks's read
			watcher.Wait()
		}()
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
		case <-changed:
			attached, refused := s.rescan()
			if onDevice == nil {
				continue
			}
			for _, name := range attached {
				onDevice(name, nil)
			}
			for _, r := range refused {
				onDevice(r.name, r.err)
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
// devices, until events is closed. An overrun (ENOBUFS) lost some
// announcements, which a signal covers too: the receiver lists the devices
// afresh.
func watchLinks(events *os.File, changed chan<- struct{}) {
	buf := make([]byte, 16<<10)
	for {
		if _, err := events.Read(buf); err != nil && !errors.Is(err, unix.ENOBUFS) {
			return
		}
		select {
		case changed <- struct{}{}:
		default: // a signal is pending already
		}
	}
}

// takeLinkEvents hands the device announcements to their one reader.
func (s *Stamper) takeLinkEvents() *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	events := s.linkEvents
	s.linkEvents = nil
	return events
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
	for _, m := range []*ebpf.Map{s.sockets, s.offset} {
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
	modeFromEnd     = replySize                 // first byte of the NTP header
	transmitFromEnd = 8                         // transmit timestamp, the last field

	// ntpEpochOffset is the number of seconds from 1900 to 1970.
	ntpEpochOffset = 2208988800
	// ntpModeServer and ntpModePassive are the modes of fastntp's replies,
	// to clients and to symmetric active peers.
	ntpModeServer  = 4
	ntpModePassive = 2

	// tcxNext lets the packet go on to the next program, or out.
	tcxNext = -1
	// markMangled0 (BPF_F_MARK_MANGLED_0) leaves an IPv4 checksum of 0,
	// which means none, alone, and writes a computed 0 as 0xffff.
	markMangled0 = 1 << 5
)

// Stack slots of the program, below the frame pointer R10.
const (
	slotKey    = -8  // map keys
	slotHeader = -24 // UDP header and the first 8 bytes of the reply
	slotOld    = -32 // the transmit timestamp user space wrote
	slotNew    = -40 // the transmit timestamp the program writes
)

// program returns the classifier. In outline:
//
//	if socket cookie not in sockets: pass
//	if UDP source port is not the socket's: pass
//	if UDP length != 56 or NTP mode is not 4 (server) or 2 (passive): pass
//	now := ktime_get_tai_ns() - offset
//	transmit := (now/1e9 + 2208988800) << 32 | (now%1e9 << 32) / 1e9
//	store transmit at len-8, adjust the UDP checksum by the difference
//	pass
//
// Whatever it finds, it returns "next", so that programs attached after it
// still run and the packet is never dropped by it.
func program(sockets, offset int) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // R6: the skb

		// Only replies from fastntp's own sockets.
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, slotKey, asm.R0, asm.DWord),
	}
	insns = append(insns, mapLookup(sockets)...)
	insns = append(insns,
		// R8: the socket's port, as the UDP header has it.
		asm.LoadMem(asm.R8, asm.R0, 0, asm.Half),

		// R7: the packet's length, L2 header included.
		asm.LoadMem(asm.R7, asm.R6, 0, asm.Word),
		asm.JLT.Imm(asm.R7, udpFromEnd, "pass"),
	)
	// The UDP header and the reply's first bytes.
	insns = append(insns, packetBytes(asm.FnSkbLoadBytes, udpFromEnd, slotHeader, 16)...)
	insns = append(insns,
		// From the socket's port, in a UDP header 8 bytes before a reply.
		asm.LoadMem(asm.R1, asm.RFP, slotHeader, asm.Half),
		asm.JNE.Reg(asm.R1, asm.R8, "pass"),
		asm.LoadMem(asm.R1, asm.RFP, slotHeader+4, asm.Half),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.JNE.Imm(asm.R1, udpLength, "pass"),
		asm.LoadMem(asm.R1, asm.RFP, slotHeader+udpHeaderSize, asm.Byte),
		asm.And.Imm(asm.R1, 7),
		asm.JEq.Imm(asm.R1, ntpModeServer, "reply"),
		asm.JNE.Imm(asm.R1, ntpModePassive, "pass"),
	)
	// The stamp user space wrote, for the checksum difference.
	old := packetBytes(asm.FnSkbLoadBytes, transmitFromEnd, slotOld, 8)
	old[0] = old[0].WithSymbol("reply")
	insns = append(insns, old...)
	insns = append(insns,
		// R8: UTC in nanoseconds since 1970.
		asm.StoreImm(asm.RFP, slotKey, 0, asm.Word),
	)
	insns = append(insns, mapLookup(offset)...)
	insns = append(insns,
		asm.LoadMem(asm.R9, asm.R0, 0, asm.DWord),
		asm.FnKtimeGetTaiNs.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.Sub.Reg(asm.R8, asm.R9),

		// R9: seconds; R8: nanoseconds within the second.
		asm.Mov.Reg(asm.R9, asm.R8),
		asm.Div.Imm(asm.R9, 1e9),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.Mul.Imm(asm.R1, 1e9),
		asm.Sub.Reg(asm.R8, asm.R1),
		// NTP seconds and fraction, big-endian.
		asm.LoadImm(asm.R1, ntpEpochOffset, asm.DWord),
		asm.Add.Reg(asm.R9, asm.R1),
		asm.HostTo(asm.BE, asm.R9, asm.Word),
		asm.StoreMem(asm.RFP, slotNew, asm.R9, asm.Word),
		asm.LSh.Imm(asm.R8, 32),
		asm.Div.Imm(asm.R8, 1e9),
		asm.HostTo(asm.BE, asm.R8, asm.Word),
		asm.StoreMem(asm.RFP, slotNew+4, asm.R8, asm.Word),

		// R8: the checksum difference.
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, slotOld),
		asm.Mov.Imm(asm.R2, 8),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, slotNew),
		asm.Mov.Imm(asm.R4, 8),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnCsumDiff.Call(),
		asm.JSLT.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R8, asm.R0),
	)
	insns = append(insns, packetBytes(asm.FnSkbStoreBytes, transmitFromEnd, slotNew, 8)...)
	insns = append(insns,
		// The UDP checksum, adjusted by the difference.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Sub.Imm(asm.R2, checksumFromEnd),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Reg(asm.R4, asm.R8),
		asm.Mov.Imm(asm.R5, markMangled0),
		asm.FnL4CsumReplace.Call(),

		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("pass"),
		asm.Return(),
	)
	return insns
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
// in R7) and the stack slot at slot, and leaves the program if it fails.
func packetBytes(fn asm.BuiltinFunc, fromEnd, slot, n int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Sub.Imm(asm.R2, fromEnd),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, slot),
		asm.Mov.Imm(asm.R4, n),
		asm.Mov.Imm(asm.R5, 0), // store's flags; load has no fifth argument
		fn.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"),
	}
}

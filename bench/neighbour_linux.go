package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fastntp/fastntp/internal/netns"
	"golang.org/x/sys/unix"
)

// resolveNeighbour returns the Ethernet address of target on device from
// the kernel's neighbour table. If the table has none, it sends target one
// datagram through the kernel, to the discard port, which makes the kernel
// resolve it, and waits up to a second for the entry.
func resolveNeighbour(device *net.Interface, target netip.AddrPort) (net.HardwareAddr, error) {
	if mac, err := lookupNeighbour(device.Index, target.Addr()); err != nil || mac != nil {
		return mac, err
	}
	network := "udp4"
	if target.Addr().Is6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var bindErr error
	raw.Control(func(fd uintptr) { bindErr = unix.BindToDevice(int(fd), device.Name) })
	if bindErr != nil {
		return nil, fmt.Errorf("bind to %s: %w", device.Name, bindErr)
	}
	conn.WriteToUDPAddrPort([]byte{0}, netip.AddrPortFrom(target.Addr(), 9))
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if mac, err := lookupNeighbour(device.Index, target.Addr()); err != nil || mac != nil {
			return mac, err
		}
	}
	return nil, fmt.Errorf("no neighbour entry for %s on %s: is it on that link? (or give the next hop's Ethernet address)", target.Addr(), device.Name)
}

// lookupNeighbour returns the Ethernet address of addr in the neighbour
// table of device ifindex, or nil if the table has no usable entry.
func lookupNeighbour(ifindex int, addr netip.Addr) (net.HardwareAddr, error) {
	family := syscall.AF_INET
	if addr.Is6() {
		family = syscall.AF_INET6
	}
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETNEIGH, family)
	if err != nil {
		return nil, fmt.Errorf("read the neighbour table: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return nil, fmt.Errorf("read the neighbour table: %w", err)
	}
	const usable = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT
	for _, m := range msgs {
		if m.Header.Type != syscall.RTM_NEWNEIGH || len(m.Data) < unix.SizeofNdMsg {
			continue
		}
		// struct ndmsg: family, padding, ifindex (4 bytes), state (2).
		index := int(int32(binary.NativeEndian.Uint32(m.Data[4:])))
		state := binary.NativeEndian.Uint16(m.Data[8:])
		if index != ifindex || state&usable == 0 {
			continue
		}
		var dst netip.Addr
		var mac net.HardwareAddr
		for attrs := m.Data[unix.SizeofNdMsg:]; len(attrs) >= unix.SizeofRtAttr; {
			length := int(binary.NativeEndian.Uint16(attrs))
			kind := binary.NativeEndian.Uint16(attrs[2:])
			if length < unix.SizeofRtAttr || length > len(attrs) {
				break
			}
			value := attrs[unix.SizeofRtAttr:length]
			switch kind {
			case unix.NDA_DST:
				dst, _ = netip.AddrFromSlice(value)
			case unix.NDA_LLADDR:
				mac = net.HardwareAddr(value)
			}
			attrs = attrs[min(len(attrs), (length+3)&^3):]
		}
		if dst == addr && len(mac) == 6 {
			return mac, nil
		}
	}
	return nil, nil
}

// namespaceAddresses returns the addresses of the interfaces of every
// network namespace named in /run/netns (as ip netns names them).
func namespaceAddresses() ([]netip.Addr, error) {
	names, err := filepath.Glob("/run/netns/*")
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for _, name := range names {
		err := netns.Do(name, func() error {
			ifaceAddrs, err := net.InterfaceAddrs()
			if err != nil {
				return fmt.Errorf("addresses in %s: %w", name, err)
			}
			for _, ia := range ifaceAddrs {
				if p, err := netip.ParsePrefix(ia.String()); err == nil {
					addrs = append(addrs, p.Addr().Unmap())
				}
			}
			return nil
		})
		// A namespace deleted since the listing is no error.
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	return addrs, nil
}

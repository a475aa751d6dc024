package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/fastntp/fastntp/internal/ntp"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The raw generator sends through an AF_PACKET socket with a TPACKET_V2
// transmit ring, which the kernel hands straight to the device's driver
// (PACKET_QDISC_BYPASS): filling a frame is a few stores into shared
// memory, and one sendto hands over a whole batch, with no socket, route
// or neighbour lookup per request. AF_XDP would also be a ring, but needs
// an XDP program of the generator's own on the device to capture the
// replies, and gains nothing on a veth, which has no zero-copy mode: its
// frames are copied into an skb on their way as AF_PACKET's are.
//
// Replies come back through a second AF_PACKET socket with a TPACKET_V3
// receive ring, filtered in the kernel to the target's UDP datagrams, each
// frame stamped by the kernel as it arrived.
const (
	// A transmit frame holds the TPACKET_V2 header, padded to 32 bytes, a
	// virtio-net header, then the request frame (at most 110 bytes).
	txFrameSize    = 256
	txDataOffset   = 32
	vnetHeaderSize = 10
	txRingFrames   = 1 << 16 // 16 MiB of ring
	txBlockFrames  = 4096 / txFrameSize * 16

	rxBlockSize = 1 << 20
	rxBlocks    = 32
	// rxBlockTimeout is how long the kernel fills a block before handing
	// it over part full, in ms; reply timestamps do not depend on it.
	rxBlockTimeout = 8

	// rawBatchSize is how many requests one flush of the ring carries by
	// default.
	rawBatchSize = 256
)

// rawEngine is the raw-frame generator.
type rawEngine struct {
	template  *frameTemplate
	addresses uint64 // clients in the source network
	target    netip.AddrPort
	link      *unix.SockaddrLinklayer // where flushes send, kept to allocate it once
	peer      *xdpPeer                // the XDP program of RawConfig.XDPPeer, or nil

	tx     int
	txRing []byte
	txHead int

	rx     int
	rxRing []byte

	sent     atomic.Uint64 // requests of the current step in the ring
	mu       sync.Mutex    // guards acc
	acc      accumulator
	stopping atomic.Bool
	done     chan struct{} // closed when the receive loop has ended; nil before it starts
}

// clientFor returns the client index and source port of request seq: the
// requests walk the source network address by address, and each pass
// over it uses the next port, so that every address keeps a fixed port
// within a pass and the server sees a new flow per pass.
func (e *rawEngine) clientFor(seq uint64) (index uint32, port uint16) {
	return uint32(seq % e.addresses), uint16(1024 + seq/e.addresses%64512)
}

func newRawEngine(cfg FloodConfig) (*rawEngine, error) {
	rc := cfg.Raw
	target := netip.AddrPortFrom(cfg.Target.Addr().Unmap(), cfg.Target.Port())
	if !rc.SourceNetwork.IsValid() {
		rc.SourceNetwork = netip.MustParsePrefix("198.18.0.0/16")
		if target.Addr().Is6() {
			rc.SourceNetwork = netip.MustParsePrefix("2001:2::/112")
		}
	}
	addresses, err := CheckSourceNetwork(rc.SourceNetwork, target.Addr())
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	device, err := net.InterfaceByName(rc.Interface)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if len(device.HardwareAddr) != 6 {
		return nil, fmt.Errorf("bench: %s has no Ethernet address", rc.Interface)
	}
	nextHop := rc.NextHop
	if nextHop == nil {
		if nextHop, err = resolveNeighbour(device, target); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
	}
	source := device.HardwareAddr
	if rc.SourceMAC != nil {
		source = rc.SourceMAC
	}
	template, err := newFrameTemplate(source, nextHop, rc.SourceNetwork, target)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	etherType := uint16(etherTypeIPv4)
	if template.ipv6 {
		etherType = etherTypeIPv6
	}
	e := &rawEngine{template: template, addresses: uint64(addresses), target: target,
		link: &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: device.Index},
		tx:   -1, rx: -1}
	if rc.XDPPeer {
		if e.peer, err = attachXDPPass(device.Index); err != nil {
			return nil, fmt.Errorf("bench: XDP program on %s: %w", rc.Interface, err)
		}
	}
	if err := e.openTransmit(); err != nil {
		e.close()
		return nil, fmt.Errorf("bench: transmit ring on %s: %w", rc.Interface, err)
	}
	if err := e.openReceive(device.Index); err != nil {
		e.close()
		return nil, fmt.Errorf("bench: receive ring on %s: %w", rc.Interface, err)
	}
	e.done = make(chan struct{})
	go e.receive()
	return e, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openTransmit opens the transmit socket and its ring, and writes the
// template into every frame of it once.
func (e *rawEngine) openTransmit() error {
	// Protocol 0: the socket receives nothing.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	e.tx = fd
	err = setOptions(fd,
		socketOption{"TPACKET_V2", unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2},
		socketOption{"qdisc bypass", unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1},
		// Without a virtio-net header the kernel copies only the Ethernet
		// header into the skb and attaches the rest as a fragment of the
		// ring's page; a veth then copies that fragment into a page of its
		// own for the peer namespace, which costs a page allocation per
		// request. The header's hdr_len makes the kernel copy the whole
		// frame, small as it is, into the skb at once.
		socketOption{"virtio-net header", unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1},
		// The socket's send buffer bounds the frames in flight at once.
		socketOption{"send buffer", unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 64 << 20})
	if err != nil {
		return err
	}
	req := unix.TpacketReq{Block_size: txBlockFrames * txFrameSize, Block_nr: txRingFrames / txBlockFrames,
		Frame_size: txFrameSize, Frame_nr: txRingFrames}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_TX_RING, &req); err != nil {
		return fmt.Errorf("PACKET_TX_RING: %w", err)
	}
	ring, err := mapRing(fd, txRingFrames*txFrameSize)
	if err != nil {
		return err
	}
	e.txRing = ring
	for i := range txRingFrames {
		frame := ring[i*txFrameSize+txDataOffset:]
		// struct virtio_net_hdr: flags, gso_type (none), hdr_len, ...
		binary.NativeEndian.PutUint16(frame[2:], uint16(e.template.size()))
		copy(frame[vnetHeaderSize:], e.template.frame)
	}
	return unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: e.link.Ifindex})
}

// openReceive opens the capture socket: the target's UDP datagrams that
// arrive on the device, into a ring, with the kernel's receive timestamps.
func (e *rawEngine) openReceive(ifindex int) error {
	// No protocol until the filter is on, so that nothing unfiltered is
	// queued in between.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	e.rx = fd
	filter, err := replyFilter(e.target)
	if err != nil {
		return err
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: (*unix.SockFilter)(unsafe.Pointer(&filter[0]))}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		return fmt.Errorf("filter: %w", err)
	}
	err = setOptions(fd,
		// Stamps taken as each frame entered the stack (netif_rx), not as
		// the capture ran, which may be on another CPU later.
		socketOption{"timestamps", unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1},
		socketOption{"TPACKET_V3", unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3},
		// The requests this host sends out are not replies.
		socketOption{"ignore outgoing", unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1})
	if err != nil {
		return err
	}
	req := unix.TpacketReq3{Block_size: rxBlockSize, Block_nr: rxBlocks, Frame_size: 2048,
		Frame_nr: rxBlockSize / 2048 * rxBlocks, Retire_blk_tov: rxBlockTimeout}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("PACKET_RX_RING: %w", err)
	}
	ring, err := mapRing(fd, rxBlockSize*rxBlocks)
	if err != nil {
		return err
	}
	e.rxRing = ring
	return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
}

// socketOption is an integer socket option, named for the error of a
// kernel that refuses it.
type socketOption struct {
	name                 string
	level, option, value int
}

func setOptions(fd int, options ...socketOption) error {
	for _, o := range options {
		if err := unix.SetsockoptInt(fd, o.level, o.option, o.value); err != nil {
			return fmt.Errorf("%s: %w", o.name, err)
		}
	}
	return nil
}

// mapRing maps the ring of packet socket fd, of size bytes, with its pages
// in place.
func mapRing(fd, size int) ([]byte, error) {
	ring, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map: %w", err)
	}
	return ring, nil
}

// replyFilter returns a classic BPF program that keeps the UDP datagrams
// from target, untagged, over IPv4 or IPv6 as target is, and drops the
// rest before it reaches the ring.
func replyFilter(target netip.AddrPort) ([]unix.SockFilter, error) {
	var prog []bpf.Instruction
	const drop, keep = 0, 0xffff
	if a := target.Addr(); a.Is4() {
		addr := a.As4()
		prog = []bpf.Instruction{
			bpf.LoadAbsolute{Off: 12, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: etherTypeIPv4, SkipTrue: 8},
			bpf.LoadAbsolute{Off: 23, Size: 1},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: protocolUDP, SkipTrue: 6},
			bpf.LoadAbsolute{Off: 26, Size: 4},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: binary.BigEndian.Uint32(addr[:]), SkipTrue: 4},
			bpf.LoadMemShift{Off: ethernetHeaderSize},
			bpf.LoadIndirect{Off: ethernetHeaderSize, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(target.Port()), SkipTrue: 1},
			bpf.RetConstant{Val: keep},
			bpf.RetConstant{Val: drop},
		}
	} else {
		addr := a.As16()
		prog = []bpf.Instruction{
			bpf.LoadAbsolute{Off: 12, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: etherTypeIPv6, SkipTrue: 13},
			bpf.LoadAbsolute{Off: 20, Size: 1},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: protocolUDP, SkipTrue: 11},
		}
		for i := range 4 {
			prog = append(prog,
				bpf.LoadAbsolute{Off: uint32(22 + 4*i), Size: 4},
				bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: binary.BigEndian.Uint32(addr[4*i:]), SkipTrue: uint8(9 - 2*i)})
		}
		prog = append(prog,
			bpf.LoadAbsolute{Off: 54, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(target.Port()), SkipTrue: 1},
			bpf.RetConstant{Val: keep},
			bpf.RetConstant{Val: drop})
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return filter, nil
}

func (e *rawEngine) clients() int { return int(e.addresses) }

func (e *rawEngine) begin(step uint32, n int) {
	e.mu.Lock()
	e.acc = newAccumulator(step, n+rawBatchSize)
	e.sent.Store(0)
	e.mu.Unlock()
}

// txStatus returns the status word of transmit frame i, which the kernel
// writes as it takes and releases the frame.
func (e *rawEngine) txStatus(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&e.txRing[i*txFrameSize]))
}

func (e *rawEngine) send(step uint32, k int) (sent, refused int, err error) {
	base := e.sent.Load()
	size := uint32(vnetHeaderSize + e.template.size())
	n := 0
	for ; n < k; n++ {
		status := e.txStatus(e.txHead)
		if s := atomic.LoadUint32(status); s == unix.TP_STATUS_WRONG_FORMAT {
			return n, 0, errors.New("bench: the kernel refused a request frame as malformed")
		} else if s != unix.TP_STATUS_AVAILABLE {
			// The kernel has not sent this frame yet, or still holds it:
			// the ring is full, and the rest waits for the next call.
			break
		}
		frame := e.txRing[e.txHead*txFrameSize : (e.txHead+1)*txFrameSize]
		index, port := e.clientFor(base + uint64(n))
		e.template.fill(frame[txDataOffset+vnetHeaderSize:], index, port, rawRequestID(step, base+uint64(n)))
		binary.NativeEndian.PutUint32(frame[4:], size) // tp_len
		atomic.StoreUint32(status, unix.TP_STATUS_SEND_REQUEST)
		e.txHead = (e.txHead + 1) % txRingFrames
	}
	// Count before sending: a reply can arrive before sendto returns.
	e.sent.Add(uint64(n))
	return n, 0, e.flush()
}

// flush asks the kernel to send the frames waiting in the ring. Those it
// cannot take now (its send buffer is full) it takes at the next flush.
func (e *rawEngine) flush() error {
	err := unix.Sendto(e.tx, nil, unix.MSG_DONTWAIT, e.link)
	if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.ENOBUFS) {
		return fmt.Errorf("bench: send: %w", err)
	}
	return nil
}

// drain flushes the ring until the kernel has taken every frame, or for at
// most a second.
func (e *rawEngine) drain() {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if e.flush() != nil {
			return
		}
		pending := false
		for i := range txRingFrames {
			pending = pending || atomic.LoadUint32(e.txStatus(i)) == unix.TP_STATUS_SEND_REQUEST
		}
		if !pending {
			return
		}
	}
}

func (e *rawEngine) finish() { e.drain() }

func (e *rawEngine) end(step uint32) (accumulator, uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.acc
	e.acc = accumulator{step: step, done: true}
	// Reading the statistics resets them.
	stats, err := unix.GetsockoptTpacketStatsV3(e.rx, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return a, 0
	}
	return a, uint64(stats.Drops)
}

// receive reads the capture ring block by block until the engine closes.
func (e *rawEngine) receive() {
	defer close(e.done)
	poll := []unix.PollFd{{Fd: int32(e.rx), Events: unix.POLLIN | unix.POLLERR}}
	for block := 0; !e.stopping.Load(); {
		desc := e.rxRing[block*rxBlockSize : (block+1)*rxBlockSize]
		// struct tpacket_block_desc: version, offset_to_priv, then
		// tpacket_hdr_v1: block_status, num_pkts, offset_to_first_pkt.
		status := (*uint32)(unsafe.Pointer(&desc[8]))
		if atomic.LoadUint32(status)&unix.TP_STATUS_USER == 0 {
			unix.Poll(poll, 100)
			continue
		}
		packets := binary.NativeEndian.Uint32(desc[12:])
		offset := binary.NativeEndian.Uint32(desc[16:])
		e.mu.Lock()
		for range packets {
			if int(offset)+int(unsafe.Sizeof(unix.Tpacket3Hdr{})) > len(desc) {
				break
			}
			h := (*unix.Tpacket3Hdr)(unsafe.Pointer(&desc[offset]))
			start, end := int(offset)+int(h.Mac), int(offset)+int(h.Mac)+int(h.Snaplen)
			if end <= len(desc) {
				e.add(desc[start:end], time.Unix(int64(h.Sec), int64(h.Nsec)))
			}
			if h.Next_offset == 0 {
				break
			}
			offset += h.Next_offset
		}
		e.mu.Unlock()
		atomic.StoreUint32(status, unix.TP_STATUS_KERNEL)
		block = (block + 1) % rxBlocks
	}
}

// add accounts for one captured frame, received at the given time.
func (e *rawEngine) add(frame []byte, received time.Time) {
	a := &e.acc
	r, err := parseReplyFrame(frame)
	var h ntp.Header
	if err != nil || r.source != e.target || len(r.payload) < ntp.HeaderSize ||
		h.Parse(r.payload) != nil || h.Mode != ntp.ModeServer {
		a.invalid++
		return
	}
	step, seq := splitRawID(uint64(h.OriginTime))
	index, port := e.clientFor(seq)
	ours := seq < e.sent.Load() &&
		r.destination == netip.AddrPortFrom(e.template.sourceFor(index), port)
	a.count(&h, step, seq, ours, received)
}

func (e *rawEngine) close() {
	if e.done != nil {
		e.stopping.Store(true)
		<-e.done
	}
	if e.txRing != nil {
		e.drain()
		unix.Munmap(e.txRing)
	}
	if e.rxRing != nil {
		unix.Munmap(e.rxRing)
	}
	for _, fd := range []int{e.tx, e.rx} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if e.peer != nil {
		e.peer.Close()
	}
}

// xdpPeer is an XDP program that passes every frame, attached to a device.
type xdpPeer struct {
	program *ebpf.Program
	link    link.Link
}

// attachXDPPass attaches a program that passes every frame to the device
// with the given index, in the driver.
func attachXDPPass(index int) (*xdpPeer, error) {
	const xdpPass = 2
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "bench_xdp_pass",
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		return nil, err
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: index, Flags: link.XDPDriverMode})
	if err != nil {
		prog.Close()
		return nil, err
	}
	return &xdpPeer{prog, l}, nil
}

func (p *xdpPeer) Close() {
	p.link.Close()
	p.program.Close()
}

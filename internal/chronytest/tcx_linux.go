package chronytest

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// TCX return codes of the programs OtherProgram attaches.
const (
	TCXPass = 0  // ends the chain: programs after it do not run
	TCXNext = -1 // lets the next program run
)

// OtherProgram attaches a program of someone else's to the egress (TCX) of
// device in namespace ns, one that returns code for every packet: at the
// head of the device's chain if head, else at its tail, as agents that
// append theirs do. It returns a function that detaches the program, which
// is detached when the test ends in any case, or the error of a device that
// refuses it.
func OtherProgram(t testing.TB, ns, device string, code int32, head bool) (detach func(), err error) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		AttachType:   ebpf.AttachTCXEgress,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, code), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	var anchor link.Anchor
	if head {
		anchor = link.Head()
	}
	l, err := attachTCX(ns, device, prog, ebpf.AttachTCXEgress, anchor)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { l.Close() })
	return func() { l.Close() }, nil
}

// attachTCX attaches prog to device in namespace ns, at attach, placed by
// anchor (nil: at the tail of the device's chain).
func attachTCX(ns, device string, prog *ebpf.Program, attach ebpf.AttachType, anchor link.Anchor) (link.Link, error) {
	var l link.Link
	err := InNamespace(ns, func() error {
		ifc, err := net.InterfaceByName(device)
		if err != nil {
			return err
		}
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: prog, Attach: attach, Anchor: anchor})
		return err
	})
	return l, err
}

// FillEgress attaches programs that let every packet on (TCXNext) to the
// egress of device in namespace ns until the device takes no more.
func FillEgress(t testing.TB, ns, device string) {
	t.Helper()
	for range 100 {
		if _, err := OtherProgram(t, ns, device, TCXNext, false); err != nil {
			return
		}
	}
	t.Fatalf("%s took 100 programs", device)
}

// DropIngress attaches to the ingress (TCX) of device in namespace ns a
// program that drops every packet but ARP's, so that a generator aimed at
// the device measures itself alone: the drop costs the receiving CPU, not
// the sender's. It is detached when the test ends.
func DropIngress(t testing.TB, ns, device string) {
	t.Helper()
	const (
		tcxDrop        = 2
		skbProtocol    = 16     // offset of __sk_buff.protocol
		arpNetworkByte = 0x0608 // htons(ETH_P_ARP), as a little-endian load sees it
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.SchedCLS,
		AttachType: ebpf.AttachTCXIngress,
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, skbProtocol, asm.Word),
			asm.Mov.Imm(asm.R0, TCXPass),
			asm.JEq.Imm(asm.R2, arpNetworkByte, "out"),
			asm.Mov.Imm(asm.R0, tcxDrop),
			asm.Return().WithSymbol("out"),
		},
		License: "MIT",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	l, err := attachTCX(ns, device, prog, ebpf.AttachTCXIngress, nil)
	if err != nil {
		t.Fatalf("drop on %s: %v", device, err)
	}
	t.Cleanup(func() { l.Close() })
}

// XDPPeer readies device in namespace ns, one end of a veth pair, to carry
// requests to an XDP program on the other end and its replies back: a
// program that passes every frame, without which the other end's XDP_TX
// has nowhere to go (veth schedules the receiving end's NAPI only for a
// device with an XDP program), and transmit checksums computed in full,
// without which requests reach the program with a partial checksum that it
// rightly passes on. If name is not empty, the program is called so, for
// a test of what fastntp says of a device that has one. It is detached
// when the test ends.
func XDPPeer(t testing.TB, ns, device, name string) {
	t.Helper()
	const xdpPass = 2
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	var l link.Link
	err = InNamespace(ns, func() error {
		ifc, err := net.InterfaceByName(device)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index})
		return err
	})
	if err != nil {
		t.Fatalf("XDP program on %s: %v", device, err)
	}
	t.Cleanup(func() { l.Close() })
	ethtool := Require(t, "ethtool")
	if out, err := Command(ns, ethtool, "-K", device, "tx", "off").CombinedOutput(); err != nil {
		t.Fatalf("ethtool -K %s tx off: %v: %s", device, err, out)
	}
}

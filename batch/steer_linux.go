package batch

import (
	"fmt"
	"os"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// steerProgram returns the classic BPF program that picks a socket of a
// group of n by the source address alone, computing SteerIndex. A reuseport
// program sees the datagram from its UDP payload on, so it reaches the IP
// header through the kernel's negative network-header offset.
func steerProgram(ipv6 bool, n int) ([]bpf.RawInstruction, error) {
	const networkHeader = 0xFFF00000 // SKF_NET_OFF, as an unsigned offset
	var prog []bpf.Instruction
	if ipv6 {
		// The source address is bytes 8 to 23 of the IPv6 header.
		prog = []bpf.Instruction{
			bpf.LoadAbsolute{Off: networkHeader + 8, Size: 4},
			bpf.TAX{},
			bpf.LoadAbsolute{Off: networkHeader + 12, Size: 4},
			bpf.ALUOpX{Op: bpf.ALUOpXor},
			bpf.TAX{},
			bpf.LoadAbsolute{Off: networkHeader + 16, Size: 4},
			bpf.ALUOpX{Op: bpf.ALUOpXor},
			bpf.TAX{},
			bpf.LoadAbsolute{Off: networkHeader + 20, Size: 4},
			bpf.ALUOpX{Op: bpf.ALUOpXor},
		}
	} else {
		// The source address is bytes 12 to 15 of the IPv4 header.
		prog = []bpf.Instruction{bpf.LoadAbsolute{Off: networkHeader + 12, Size: 4}}
	}
	prog = append(prog,
		bpf.ALUOpConstant{Op: bpf.ALUOpMul, Val: steerMultiplier},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 16},
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)},
		bpf.RetA{},
	)
	return bpf.Assemble(prog)
}

// steer attaches the steering program to the reuseport group of the bound
// socket fd. The program belongs to the group, so the sockets bound later
// follow it too; a datagram that arrives before all n are bound falls back
// to the kernel's flow hash.
func steer(fd int, cfg Config) error {
	raw, err := steerProgram(cfg.Address.Addr().Is6(), cfg.SteerGroup)
	if err != nil {
		return fmt.Errorf("assemble steering program: %w", err)
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &prog); err != nil {
		return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", err)
	}
	return nil
}

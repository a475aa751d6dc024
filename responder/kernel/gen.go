// Package kernel holds fastntp's eBPF programs: their C source, what the
// programs share (fastntp.h), and the objects built from the source, with
// the Go bindings bpf2go generates for them.
//
// The objects are committed, so that building fastntp needs no C compiler.
// make generate rebuilds them with the clang that CI installs, and CI fails
// when the committed objects differ from what their source builds to.
//
//   - egress.c writes the transmit timestamps of replies as they reach a
//     network device (see responder/egress).
//   - xdp.c answers NTP requests at the network driver (see
//     responder/xdp).
package kernel

//go:generate go tool bpf2go -tags linux -target bpfel -output-stem xdp -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -type config -type served -type device -type prefix4 -type prefix6 -type record -type slot -type counter XDP xdp.c
//go:generate go tool bpf2go -tags linux -target bpfel -output-stem egress -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -type stamp_counter Egress egress.c

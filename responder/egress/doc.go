// Package egress stamps NTP replies as they enter the network device.
//
// A transmit timestamp should say when a reply left the server. Read in
// user space before sendmmsg, it is stale by the time the kernel has sent
// the messages ahead of the reply in the same call, and by any interrupt or
// preemption that stalls the call in between. An eBPF program attached to
// the egress hook (TCX) of every device instead reads the clock as each
// reply reaches the device's queue, after the whole socket and IP path, and
// writes the reply's transmit timestamp and UDP checksum there.
//
// The program only touches packets that a registered socket sent and that
// look like a 48-byte NTP reply; it lets every packet through. Its clock is
// the kernel's TAI clock less the TAI offset that Run keeps current, which
// is the system's UTC clock, steps included, read without a system call.
//
// The offset it holds can lag the kernel's for up to a quarter of a
// second after chronyd or an operator changes it, and a change is a whole
// number of seconds. So that such a lag never reaches a reply, the program
// compares its reading with the stamp user space wrote before the send:
// further apart than Guard, by a whole number of seconds, it takes them
// away (see MaxCorrection); by anything else, it leaves the reply alone,
// with user space's stamp, read microseconds earlier. Counts tells how many
// replies it stamped, corrected and left alone.
//
// The program is written in C, in responder/kernel/egress.c, beside
// fastntp's other kernel program and what the two share.
package egress

package batch

import (
	"syscall"
	"time"
)

// TimestampControlSize is the control buffer a read needs for ReceiveTime to
// find the kernel's timestamp in it.
var TimestampControlSize = controlSize

// EnableTimestamps asks the kernel to stamp every datagram that raw, a
// socket not opened by Listen, receives, and reports whether it will. The
// stamp is taken when the datagram arrives, so it is free of whatever delays
// the reader before it reads: read it with ReceiveTime.
func EnableTimestamps(raw syscall.RawConn) bool {
	ok := false
	err := raw.Control(func(fd uintptr) { ok = enableTimestamps(int(fd)) })
	return err == nil && ok
}

// ReceiveTime returns the kernel's receive timestamp in the control data of
// one datagram, or the zero Time if there is none.
func ReceiveTime(control []byte) time.Time {
	var m Message
	parseControl(control, &m)
	return m.Received
}

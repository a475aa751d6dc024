package main

import (
	"fmt"

	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// shedCapabilities empties the inheritable and ambient capability sets of
// every thread, and the effective and permitted sets but for what the
// coming switch of root directory or user needs: that switch takes the
// rest (setuid to a user other than root empties both sets). Once the
// sockets are bound and the device stamper attached, fastntp needs no
// capability: the stamper attaches to devices that appear later through
// the program it already holds, and a compromised fastntp keeps no power
// over the firewall, the routes or the other programs on the devices.
//
// libcap's package changes the sets of every thread of the process, which
// capset(2) does for the calling thread alone. Built with cgo, it lists
// the threads in /proc, so it runs before the chroot.
func shedCapabilities(forChroot, forUserSwitch bool) error {
	if err := cap.ResetAmbient(); err != nil {
		return fmt.Errorf("clear the ambient capabilities: %w", err)
	}
	keep := cap.NewSet()
	var needed []cap.Value
	if forChroot {
		needed = append(needed, cap.SYS_CHROOT)
	}
	if forUserSwitch {
		needed = append(needed, cap.SETUID, cap.SETGID)
	}
	if len(needed) > 0 {
		if err := keep.SetFlag(cap.Permitted, true, needed...); err != nil {
			return err
		}
		if err := keep.SetFlag(cap.Effective, true, needed...); err != nil {
			return err
		}
	}
	if err := keep.SetProc(); err != nil {
		return fmt.Errorf("clear the capabilities: %w", err)
	}
	return nil
}

//go:build !linux

package main

// shedCapabilities has nothing to shed outside Linux.
func shedCapabilities(forChroot, forUserSwitch bool) error { return nil }

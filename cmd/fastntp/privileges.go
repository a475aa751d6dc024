package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"
)

// dropPrivileges sheds every capability, chroots to root and switches to
// userName, as rsntp's -r and -u do. Empty arguments skip those steps. Go
// applies setuid and setgid to every thread of the process, so no thread
// keeps root.
func dropPrivileges(userName, root string) error {
	if (userName != "" || root != "") && os.Geteuid() != 0 {
		return errors.New("-u and -r need fastntp to start as root")
	}
	var uid, gid int
	if userName != "" {
		u, err := user.Lookup(userName)
		if err != nil {
			return err
		}
		if uid, err = strconv.Atoi(u.Uid); err != nil {
			return fmt.Errorf("user %s: uid %q: %w", userName, u.Uid, err)
		}
		if gid, err = strconv.Atoi(u.Gid); err != nil {
			return fmt.Errorf("user %s: gid %q: %w", userName, u.Gid, err)
		}
		if uid == 0 {
			return fmt.Errorf("-u %s: a user other than root, or none", userName)
		}
	}
	if err := shedCapabilities(root != "", userName != ""); err != nil {
		return err
	}
	if root != "" {
		// The local time zone cannot be loaded once /etc is out of reach.
		_ = time.Now().Local().String()
		if err := syscall.Chroot(root); err != nil {
			return fmt.Errorf("chroot %s: %w", root, err)
		}
		if err := os.Chdir("/"); err != nil {
			return fmt.Errorf("chdir / in %s: %w", root, err)
		}
	}
	if userName == "" {
		return nil
	}
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("setgroups %d: %w", gid, err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("setgid %d: %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	if os.Getuid() != uid || os.Geteuid() != uid || os.Getgid() != gid {
		return fmt.Errorf("still uid %d gid %d after switching to %s", os.Geteuid(), os.Getgid(), userName)
	}
	return nil
}

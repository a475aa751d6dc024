//go:build !linux

package main

import "errors"

func pinSelf(string) error {
	return errors.New("--bench-cpus is only supported on Linux")
}

//go:build !linux

// Package netns runs code inside a network namespace of this host.
package netns

import "errors"

// Do needs Linux's network namespaces.
func Do(path string, f func() error) error {
	return errors.New("network namespaces need Linux")
}

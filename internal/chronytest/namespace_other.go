//go:build !linux

package chronytest

import "errors"

// InNamespace needs Linux's network namespaces.
func InNamespace(ns string, f func() error) error {
	return errors.New("network namespaces need Linux")
}

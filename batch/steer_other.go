//go:build unix && !linux

package batch

import "errors"

func steer(int, Config) error {
	return errors.New("steering datagrams by source address needs Linux")
}

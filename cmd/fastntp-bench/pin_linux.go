package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// pinSelf binds every thread of this process to cpus. Threads the runtime
// starts later inherit the mask from the thread that creates them.
func pinSelf(cpus string) error {
	var set unix.CPUSet
	for _, part := range strings.Split(cpus, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil {
			return fmt.Errorf("--bench-cpus %q: %w", cpus, err)
		}
		last := first
		if isRange {
			if last, err = strconv.Atoi(hi); err != nil {
				return fmt.Errorf("--bench-cpus %q: %w", cpus, err)
			}
		}
		for c := first; c <= last; c++ {
			set.Set(c)
		}
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return fmt.Errorf("pin thread %d to CPUs %s: %w", tid, cpus, err)
		}
	}
	return nil
}

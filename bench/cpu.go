package bench

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc's CPU times. Linux fixes it at 100
// on every architecture it exports to user space.
const clockTicks = 100

// ProcessCPU returns the user plus system CPU time that process pid and all
// its threads have used, from /proc/PID/stat.
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStat(b)
}

// parseStat reads utime and stime, fields 14 and 15 of a stat line. The
// command name (field 2) may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat line")
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state), so utime is fields[11].
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc stat line: %d fields", len(fields)+2)
	}
	var ticks uint64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseUint(string(f), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat CPU field %q: %w", f, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// CPUTimes are the times some CPUs spent in each state, summed over them,
// as /proc/stat counts them, and when they were read.
type CPUTimes struct {
	User, Nice, System, Idle, IOWait, IRQ, Softirq, Steal time.Duration
	// CPUs is how many CPUs were read, and At when.
	CPUs int
	At   time.Time
}

// Busy is all the time from earlier to c that the CPUs ran something: user,
// system, irq and softirq time, whoever ran it. The kernel samples those
// at each timer tick, which a tickless idle CPU skips, so that short bursts
// of work between idle periods go uncounted; it measures idle time itself
// on idle entry and exit. Busy is therefore what the CPUs did not spend
// idle, waiting for I/O or stolen by a hypervisor, out of the time that
// passed.
func (c CPUTimes) Busy(earlier CPUTimes) time.Duration {
	elapsed := time.Duration(c.CPUs) * c.At.Sub(earlier.At)
	return max(0, elapsed-(c.Idle-earlier.Idle)-(c.IOWait-earlier.IOWait)-(c.Steal-earlier.Steal))
}

// SoftirqPart is the part of Busy(earlier) spent in softirqs: the sampled
// softirq share of the sampled busy time, applied to Busy.
func (c CPUTimes) SoftirqPart(earlier CPUTimes) time.Duration {
	sampled := c.User + c.Nice + c.System + c.IRQ + c.Softirq -
		(earlier.User + earlier.Nice + earlier.System + earlier.IRQ + earlier.Softirq)
	if sampled <= 0 {
		return 0
	}
	return time.Duration(float64(c.Busy(earlier)) * float64(c.Softirq-earlier.Softirq) / float64(sampled))
}

// ReadCPUTimes returns the times spent so far by the given CPUs, from
// /proc/stat. It returns zero times for no CPUs.
func ReadCPUTimes(cpus []int) (CPUTimes, error) {
	if len(cpus) == 0 {
		return CPUTimes{}, nil
	}
	at := time.Now()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, err
	}
	c, err := parseCPUTimes(b, cpus)
	c.At = at
	return c, err
}

// parseCPUTimes sums the "cpuN" lines of /proc/stat text b for the CPUs
// listed, and fails if one is missing (offline, or not there at all).
func parseCPUTimes(b []byte, cpus []int) (CPUTimes, error) {
	var sum CPUTimes
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		fields := bytes.Fields(line)
		if len(fields) < 9 || !bytes.HasPrefix(fields[0], []byte("cpu")) {
			continue
		}
		n, err := strconv.Atoi(string(fields[0][3:]))
		if err != nil || !slices.Contains(cpus, n) {
			continue // the "cpu" total line, or a CPU not asked for
		}
		var ticks [8]time.Duration
		for i := range ticks {
			v, err := strconv.ParseUint(string(fields[1+i]), 10, 40)
			if err != nil {
				return CPUTimes{}, fmt.Errorf("/proc/stat %s: %w", fields[0], err)
			}
			ticks[i] = time.Duration(v) * time.Second / clockTicks
		}
		sum.User += ticks[0]
		sum.Nice += ticks[1]
		sum.System += ticks[2]
		sum.Idle += ticks[3]
		sum.IOWait += ticks[4]
		sum.IRQ += ticks[5]
		sum.Softirq += ticks[6]
		sum.Steal += ticks[7]
		sum.CPUs++
	}
	if want := len(slices.Compact(slices.Sorted(slices.Values(cpus)))); sum.CPUs != want {
		return CPUTimes{}, fmt.Errorf("/proc/stat lists %d of CPUs %v", sum.CPUs, cpus)
	}
	return sum, nil
}

// ParseCPUList parses a CPU list in taskset's and sysfs's syntax, such as
// "1" or "0,2-3", into the CPUs it names, in increasing order.
func ParseCPUList(s string) ([]int, error) {
	var cpus []int
	for part := range strings.SplitSeq(s, ",") {
		first, last, isRange := strings.Cut(part, "-")
		lo, err := strconv.Atoi(first)
		hi := lo
		if err == nil && isRange {
			hi, err = strconv.Atoi(last)
		}
		if err != nil || lo < 0 || hi < lo || hi >= 1<<16 {
			return nil, fmt.Errorf("CPU list %q: want CPUs and ranges such as 1 or 0,2-3", s)
		}
		for cpu := lo; cpu <= hi; cpu++ {
			cpus = append(cpus, cpu)
		}
	}
	slices.Sort(cpus)
	return slices.Compact(cpus), nil
}

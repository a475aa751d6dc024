package main

import (
	byteorder "encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fastntp/fastntp/batch"
	"github.com/fastntp/fastntp/internal/chronytest"
	"github.com/fastntp/fastntp/internal/ntp"
)

// inNamespace runs a command in ns and fails the test if it fails.
func inNamespace(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := chronytest.Command(ns, args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// memoryKiB reads a field of /proc/PID/status, such as VmRSS or VmHWM.
func memoryKiB(t *testing.T, pid int, field string) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kib, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				t.Fatalf("%s: %q", field, line)
			}
			return kib
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// finalCounters reads the counters fastntp logs as JSON when it stops.
func finalCounters(t *testing.T, log string) map[string]float64 {
	t.Helper()
	for line := range strings.Lines(log) {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) != nil || entry["msg"] != "stopped" {
			continue
		}
		counters := map[string]float64{}
		for k, v := range entry {
			if f, ok := v.(float64); ok {
				counters[k] = f
			}
		}
		return counters
	}
	t.Fatalf("no final counters in the log:\n%s", log)
	return nil
}

// A flood from more distinct source addresses than the client records can
// hold evicts records but grows nothing: fastntp's memory stays within its
// limit plus a fixed overhead, and a client polling under the limit all
// along is answered every time. The sources are spoofed from the IPv6
// benchmarking network 2001:2::/48 inside a namespace of the test's own,
// where the replies to them leave through a veth pair that drops them.
func TestSpoofedFlood(t *testing.T) {
	ns := chronytest.Namespace(t)
	// The replies go to a neighbor that does not exist, whose address is
	// known, so that no neighbor discovery runs: the other end of the pair
	// drops them as meant for another host.
	inNamespace(t, ns, "ip", "link", "add", "flood0", "type", "veth", "peer", "name", "flood1")
	inNamespace(t, ns, "ip", "link", "set", "flood0", "up")
	inNamespace(t, ns, "ip", "link", "set", "flood1", "up")
	inNamespace(t, ns, "ip", "-6", "neigh", "replace", "fe80::2", "lladdr", "02:00:00:00:00:02", "dev", "flood0", "nud", "permanent")
	inNamespace(t, ns, "ip", "-6", "route", "add", "2001:2::/48", "via", "fe80::2", "dev", "flood0")
	// Lets a socket send from an address the namespace does not have.
	inNamespace(t, ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/ip_nonlocal_bind")
	chronyd := chronytest.StartChronyd(t, chronytest.Options{Namespace: ns})
	server := netip.MustParseAddrPort("[::1]:1123")
	const memory = 4 << 20
	p := startFastntp(t, ns, "-4", "0", "-6", "1", "-b", server.String(), "-s", chronyd.Addr.String(),
		"--ratelimit-interval", "-2", "--ratelimit-memory", strconv.Itoa(memory),
		"--receive-buffer", "16M", "--log-format", "json", "--stats-interval", "1s")
	p.waitLog("synchronized to backend", 5*time.Second)
	pid := p.cmd.Process.Pid
	before := memoryKiB(t, pid, "VmRSS")

	var flood batch.Conn
	var legit *net.UDPConn
	err := chronytest.InNamespace(ns, func() error {
		var err error
		if flood, err = batch.Listen(batch.Config{Address: netip.MustParseAddrPort("[::]:0"), Path: batch.PathFast}); err != nil {
			return err
		}
		legit, err = net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(server))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	defer legit.Close()

	// The legitimate client polls twice a second, half the limit of
	// --ratelimit-interval -2, for as long as the flood lasts.
	legitDone := make(chan [2]int)
	stop := make(chan struct{})
	go func() {
		asked, answered := 0, 0
		buf := make([]byte, 128)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				legitDone <- [2]int{asked, answered}
				return
			case <-tick.C:
			}
			asked++
			req := make([]byte, ntp.HeaderSize)
			req[0] = 4<<3 | ntp.ModeClient
			byteorder.BigEndian.PutUint64(req[40:], uint64(asked))
			legit.Write(req)
			// A reply to an earlier poll that came late is read and
			// passed over.
			legit.SetReadDeadline(time.Now().Add(450 * time.Millisecond))
			for {
				n, err := legit.Read(buf)
				if err != nil {
					break
				}
				if n == ntp.HeaderSize && byteorder.BigEndian.Uint64(buf[24:]) == uint64(asked) {
					answered++
					break
				}
			}
		}
	}()

	// 1.2 million sources, each sending once, paced at 150,000 a second:
	// within what one thread serves here, so that the kernel drops little.
	// Among them an abusive client sends 40 requests a second, ten times
	// the limit: its record, always recent, is never the one evicted, so
	// the flood does not free it from its limit.
	const sources, rate, batchSize = 1_200_000, 150_000, 64
	const abuseEvery = 58 // batches, one every 25 ms
	abuser := netip.MustParseAddr("2001:2:0:ffff::1")
	abuses := 0
	msgs := batch.NewMessages(batchSize, ntp.HeaderSize)
	for i := range msgs {
		msgs[i].Buffer[0] = 4<<3 | ntp.ModeClient
		msgs[i].N = ntp.HeaderSize
		msgs[i].Peer = server
	}
	peak := before
	start := time.Now()
	for sent := 0; sent < sources; sent += batchSize {
		for i := range msgs {
			var a [16]byte
			copy(a[:], netip.MustParseAddr("2001:2::").AsSlice())
			byteorder.BigEndian.PutUint64(a[8:], uint64(sent+i+1))
			msgs[i].Local = netip.AddrFrom16(a)
		}
		if sent/batchSize%abuseEvery == 0 {
			msgs[0].Local = abuser
			abuses++
		}
		if _, err := flood.WriteBatch(msgs); err != nil {
			t.Fatalf("flood: %v", err)
		}
		if sent%(batchSize*1000) == 0 {
			peak = max(peak, memoryKiB(t, pid, "VmRSS"))
		}
		time.Sleep(time.Until(start.Add(time.Duration(sent+batchSize) * time.Second / rate)))
	}
	elapsed := time.Since(start)
	time.Sleep(time.Second) // the legitimate client polls after the flood too
	close(stop)
	legitResult := <-legitDone
	peak = max(peak, memoryKiB(t, pid, "VmHWM"))
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	c := finalCounters(t, p.Log())
	t.Logf("abusive client: %d requests", abuses)
	t.Logf("flood of %d sources in %v; fastntp received %v, replied %v, rate-limited %v, evicted %v records; RSS %d KiB before, peak %d KiB; legitimate client: %d of %d answered",
		sources, elapsed.Round(time.Millisecond), c["received"], c["replied"], c["dropped_rate_limited"], c["client_records_evicted"],
		before, peak, legitResult[1], legitResult[0])

	if c["received"] < 1_000_000 {
		t.Errorf("fastntp received %v requests of %d: the flood did not reach it", c["received"], sources)
	}
	// Leaked or not, the abuser gets about a third of its requests
	// answered; everyone else is under the limit.
	if c["dropped_rate_limited"] < float64(abuses)/2 || c["dropped_rate_limited"] > float64(abuses) {
		t.Errorf("%v requests rate-limited of the abusive client's %d", c["dropped_rate_limited"], abuses)
	}
	// Every new address past the table's capacity evicts one.
	// The rate summary shows the flood and the limit at work.
	var limitedRate, evictedSummary float64
	for line := range strings.Lines(p.Log()) {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) == nil && entry["msg"] == "rates" {
			limited, _ := entry["rate_limited_per_s"].(float64)
			evicted, _ := entry["client_records_evicted"].(float64)
			limitedRate += limited
			evictedSummary += evicted
		}
	}
	if limitedRate == 0 || evictedSummary == 0 {
		t.Errorf("rate summaries: %v rate-limited/s and %v evictions in all", limitedRate, evictedSummary)
	}
	if c["client_records_evicted"] < c["received"]-float64(memory/28)-float64(abuses+legitResult[0]) {
		t.Errorf("%v records evicted for %v requests from distinct sources into %d bytes", c["client_records_evicted"], c["received"], memory)
	}
	// Unbounded records would take 28 bytes for each of the sources,
	// 32 MiB: far beyond the limit and the allowance together.
	const overheadKiB = 12 << 10
	if peak > before+memory>>10+overheadKiB {
		t.Errorf("peak RSS %d KiB, above %d KiB before the flood plus the %d KiB limit plus %d KiB", peak, before, memory>>10, overheadKiB)
	}
	// Rate limiting never turns the legitimate client away. On a machine
	// too busy to keep up with the flood, the kernel may drop one of its
	// polls with the flood's: the counter says so.
	asked, missed := legitResult[0], legitResult[0]-legitResult[1]
	if asked < 4 || missed*4 > asked || (missed > 0 && c["kernel_drops"] == 0) {
		t.Errorf("legitimate client: %d of %d polls answered, with %v requests dropped by the kernel", legitResult[1], asked, c["kernel_drops"])
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	"github.com/fastntp/fastntp/responder"
	"github.com/fastntp/fastntp/responder/egress"
	"github.com/fastntp/fastntp/responder/xdp"
	"github.com/fastntp/fastntp/upstream"
)

// The monitoring listener serves /metrics (Prometheus) and /healthz. It
// reads the workers' counters and the poller's snapshot when scraped, so
// the reply path does nothing for it. Its limits keep a slow or hostile
// client from holding more than a few goroutines and descriptors: NTP is
// served by other threads and never waits for it.
const (
	monitorConnections   = 8 // open connections at most; more wait in the kernel's backlog
	monitorHeaderTimeout = 2 * time.Second
	monitorReadTimeout   = 5 * time.Second
	monitorWriteTimeout  = 10 * time.Second
	monitorIdleTimeout   = 30 * time.Second
	monitorScrapeTimeout = 5 * time.Second
)

// listenMonitor binds the monitoring address, before privileges are dropped.
func listenMonitor(addr netip.AddrPort) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("--metrics-address %s: %w", addr, err)
	}
	return netutil.LimitListener(ln, monitorConnections), nil
}

// serveMonitor serves the monitoring endpoints on ln until ctx is done.
func serveMonitor(ctx context.Context, ln net.Listener, srv *responder.Server, poller *upstream.Poller) error {
	registry := prometheus.NewRegistry()
	registry.MustRegister(
		newCollector(srv, poller),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "fastntp_build_info",
			Help:        "Always 1; the version label says which fastntp runs.",
			ConstLabels: prometheus.Labels{"version": buildVersion()},
		}, func() float64 { return 1 }),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{
		Timeout:             monitorScrapeTimeout,
		MaxRequestsInFlight: monitorConnections / 2,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		synchronized, cause, reason := poller.Load().Status(time.Now())
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !synchronized {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "unsynchronized (%s): %s\n", cause, reason)
			return
		}
		io.WriteString(w, "synchronized\n")
	})
	server := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: monitorHeaderTimeout,
		ReadTimeout:       monitorReadTimeout,
		WriteTimeout:      monitorWriteTimeout,
		IdleTimeout:       monitorIdleTimeout,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          nil,
	}
	stop := context.AfterFunc(ctx, func() {
		shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if server.Shutdown(shutdown) != nil {
			server.Close()
		}
	})
	defer stop()
	if err := server.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics listener: %w", err)
	}
	return nil
}

// collector exports the workers' counters and the synchronization state
// served, read at scrape time.
type collector struct {
	srv      *responder.Server
	poller   *upstream.Poller
	counters [responder.NumCounters]*prometheus.Desc
	dropped  *prometheus.Desc
	synced   *prometheus.Desc
	leap     *prometheus.Desc
	stratum  *prometheus.Desc
	offset   *prometheus.Desc
	delay    *prometheus.Desc
	age      *prometheus.Desc
	readLag  *prometheus.Desc
	rootDel  *prometheus.Desc
	rootDisp *prometheus.Desc
	device   *prometheus.Desc
	// The device stamper's counts.
	deviceStamped   *prometheus.Desc
	deviceCorrected *prometheus.Desc
	deviceUnstamped *prometheus.Desc
	// The XDP fast path's.
	xdpAttached *prometheus.Desc
	xdpPassed   *prometheus.Desc
}

// workerLabels keep the cardinality at one series per worker and counter:
// the family, the worker's number among its address's workers, and the
// path: socket for the workers, xdp for the XDP fast path, whose one
// series per family has an empty worker.
var workerLabels = []string{"family", "worker", "path"}

func newCollector(srv *responder.Server, poller *upstream.Poller) *collector {
	c := &collector{srv: srv, poller: poller}
	for k := range responder.NumCounters {
		if k.IsDrop() {
			continue
		}
		c.counters[k] = prometheus.NewDesc("fastntp_"+k.String()+"_total", capitalize(k.Help())+".", workerLabels, nil)
	}
	c.dropped = prometheus.NewDesc("fastntp_dropped_total",
		"Requests that got no reply, by reason: "+dropReasons()+".", append(workerLabels, "reason"), nil)
	gauge := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	c.synced = gauge("fastntp_synchronized", "1 while fastntp serves the backend's state as synchronized, else 0 (replies carry leap 3).")
	c.leap = gauge("fastntp_leap_indicator", "The leap indicator served now: 0 none, 1 insert, 2 delete, 3 unsynchronized.")
	c.stratum = gauge("fastntp_stratum", "The stratum served now; 0 while unsynchronized.")
	c.offset = gauge("fastntp_backend_offset_seconds", "The backend's clock minus the system clock, as last measured.")
	c.delay = gauge("fastntp_backend_delay_seconds", "The round trip of that measurement; half of it bounds the offset's error.")
	c.age = gauge("fastntp_backend_answer_age_seconds", "Time since the backend's last valid answer.")
	c.readLag = gauge("fastntp_backend_read_lag_seconds", "How long the backend's last answer waited in the socket before fastntp read it: the scheduler's delay on a busy machine, kept out of the offset by the kernel's receive timestamp.")
	c.rootDel = gauge("fastntp_root_delay_seconds", "The root delay served now.")
	c.rootDisp = gauge("fastntp_root_dispersion_seconds", "The root dispersion served now.")
	c.device = gauge("fastntp_transmit_stamps_at_device", "1 while an eBPF program stamps replies at the network devices, 0 while they are stamped before each send.")
	c.deviceStamped = prometheus.NewDesc("fastntp_device_stamped_total",
		"Replies the eBPF program stamped as they reached a network device (once per device a reply passes).", nil, nil)
	c.deviceCorrected = prometheus.NewDesc("fastntp_device_corrected_total",
		"Replies the eBPF program stamped with its reading less the whole seconds by which the kernel's TAI offset had changed since it was told (also in fastntp_device_stamped_total).", nil, nil)
	c.deviceUnstamped = prometheus.NewDesc("fastntp_device_unstamped_total",
		"Replies that reached the eBPF program and kept the stamp read before the send, by reason: clock (its clock disagreed with that stamp by more than "+
			egress.Guard.String()+", and not by whole seconds), checksum (the UDP checksum could not be adjusted).", []string{"reason"}, nil)
	c.xdpAttached = gauge("fastntp_xdp_attached", "1 while the XDP fast path answers at the devices of --xdp, 0 once it was detached after a failure (the sockets then answer everything); absent without --xdp.")
	c.xdpPassed = prometheus.NewDesc("fastntp_xdp_passed_total",
		"Frames the XDP program passed on to the kernel's stack, by reason: other (not NTP to a served address and port), form (IP options, extension headers, fragments, padding, another host's or a special address), request (not a plain 48-byte request), checksum (a bad checksum), clock (the system clock stepped or the TAI offset changed since fastntp last told the program).", []string{"reason"}, nil)
	return c
}

func dropReasons() string {
	s := ""
	for k := range responder.NumCounters {
		if k.IsDrop() {
			if s != "" {
				s += "; "
			}
			s += dropReason(k) + ": " + k.Help()
		}
	}
	return s
}

// dropReason is a drop counter's reason label: its name without "dropped_".
func dropReason(k responder.Counter) string {
	name := k.String()
	const prefix = "dropped_"
	if len(name) > len(prefix) && name[:len(prefix)] == prefix {
		return name[len(prefix):]
	}
	return name
}

func capitalize(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counters {
		if d != nil {
			ch <- d
		}
	}
	for _, d := range []*prometheus.Desc{c.dropped, c.synced, c.leap, c.stratum, c.offset, c.delay, c.age, c.readLag, c.rootDel, c.rootDisp, c.device,
		c.deviceStamped, c.deviceCorrected, c.deviceUnstamped, c.xdpAttached, c.xdpPassed} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counters := func(counts *responder.Counters, family, worker, path string) {
		for k := range responder.NumCounters {
			v := float64(counts[k])
			if k.IsDrop() {
				ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, v, family, worker, path, dropReason(k))
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.counters[k], prometheus.CounterValue, v, family, worker, path)
		}
	}
	for _, w := range c.srv.Workers() {
		family := "ipv4"
		if w.Address.Addr().Is6() {
			family = "ipv6"
		}
		counters(&w.Counters, family, strconv.Itoa(w.Index), "socket")
	}
	if fast, ok := c.srv.FastPathStats(); ok {
		counters(&fast.IPv4, "ipv4", "", "xdp")
		counters(&fast.IPv6, "ipv6", "", "xdp")
		attached := 0.0
		if fast.Attached {
			attached = 1
		}
		ch <- prometheus.MustNewConstMetric(c.xdpAttached, prometheus.GaugeValue, attached)
		for reason, n := range fast.Passed {
			ch <- prometheus.MustNewConstMetric(c.xdpPassed, prometheus.CounterValue, float64(n), xdp.PassReason(reason).String())
		}
	}

	now := time.Now()
	snap := c.poller.Load()
	synchronized, _, _ := snap.Status(now)
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	if synchronized {
		gauge(c.synced, 1)
		gauge(c.leap, float64(snap.LeapAt(now)))
		gauge(c.stratum, float64(snap.Stratum))
		gauge(c.rootDel, snap.RootDelay.Seconds())
		gauge(c.rootDisp, snap.DispersionAt(now).Seconds())
	} else {
		// What the replies carry: chronyd's unsynchronized form.
		gauge(c.synced, 0)
		gauge(c.leap, 3)
		gauge(c.stratum, 0)
		gauge(c.rootDel, 1)
		gauge(c.rootDisp, 1)
	}
	if snap.Delay != 0 { // a measurement exists
		gauge(c.offset, snap.Offset.Seconds())
		gauge(c.delay, snap.Delay.Seconds())
	}
	if last := c.poller.LastAnswer(); !last.IsZero() {
		gauge(c.age, now.Sub(last).Seconds())
		gauge(c.readLag, c.poller.ReadLag().Seconds())
	}
	if stamps, atDevice := c.srv.DeviceStamps(); atDevice {
		gauge(c.device, 1)
		ch <- prometheus.MustNewConstMetric(c.deviceStamped, prometheus.CounterValue, float64(stamps.Stamped))
		ch <- prometheus.MustNewConstMetric(c.deviceCorrected, prometheus.CounterValue, float64(stamps.Corrected))
		ch <- prometheus.MustNewConstMetric(c.deviceUnstamped, prometheus.CounterValue, float64(stamps.Unsure), "clock")
		ch <- prometheus.MustNewConstMetric(c.deviceUnstamped, prometheus.CounterValue, float64(stamps.ChecksumFailed), "checksum")
	} else {
		gauge(c.device, 0)
	}
}

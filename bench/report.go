package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"
)

// Format selects how steps are written.
type Format int

const (
	// Table is an aligned text table, one row per step, with ntpperf's
	// columns.
	Table Format = iota
	// JSON is one JSON object per line.
	JSON
	// CSV has a header row.
	CSV
)

// StepWriter writes steps as they complete.
type StepWriter struct {
	format Format
	w      io.Writer
	cw     *csv.Writer
	header bool
}

// NewStepWriter returns a writer of steps in format f to w.
func NewStepWriter(w io.Writer, f Format) *StepWriter {
	sw := &StepWriter{format: f, w: w}
	if f == CSV {
		sw.cw = csv.NewWriter(w)
	}
	return sw
}

var csvHeader = []string{"target", "round", "rate", "request_rate", "clients", "sent", "lost_percent",
	"invalid_percent", "kod_percent", "response_rate", "response_min_ns", "response_median_ns",
	"response_p99_ns", "response_max_ns", "tx_error_p50_ns", "tx_error_p99_ns", "tx_error_max_ns", "tx_error_mean_ns",
	"cpu_per_response_ns", "serving_cpu_per_response_ns", "serving_softirq_per_response_ns", "capture_missed", "shortfall"}

// Write writes one step.
func (sw *StepWriter) Write(s Step) error {
	switch sw.format {
	case JSON:
		b, err := json.Marshal(s)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(sw.w, "%s\n", b)
		return err
	case CSV:
		if !sw.header {
			sw.cw.Write(csvHeader)
			sw.header = true
		}
		f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
		d := func(v time.Duration) string { return strconv.FormatInt(int64(v), 10) }
		sw.cw.Write([]string{s.Target, strconv.Itoa(s.Round), f(s.Rate), f(s.RequestRate), strconv.Itoa(s.Clients),
			strconv.FormatUint(s.Sent, 10), f(s.LostPercent), f(s.InvalidPercent), f(s.KoDPercent), f(s.ResponseRate),
			d(s.ResponseTime.Min), d(s.ResponseTime.Median), d(s.ResponseTime.P99), d(s.ResponseTime.Max),
			d(s.TransmitError.P50), d(s.TransmitError.P99), d(s.TransmitError.Max), d(s.TransmitError.Mean),
			d(s.CPUPerResponse), d(s.ServingCPUPerResponse), d(s.ServingSoftirqPerResponse),
			strconv.FormatUint(s.CaptureMissed, 10), strconv.FormatBool(s.Shortfall)})
		sw.cw.Flush()
		return sw.cw.Error()
	}
	if !sw.header {
		fmt.Fprintf(sw.w, "%-10s %3s %9s %8s | %7s %7s %6s | %11s | %-30s | %-22s | %s\n", "", "", "", "", "",
			"", "", "", "  response time (µs)", " |transmit error| (µs)", "CPU µs/response")
		fmt.Fprintf(sw.w, "%-10s %3s %9s %8s | %7s %7s %6s | %11s | %7s %7s %7s %7s | %6s %6s %7s | %7s %7s\n", "target", "", "rate",
			"clients", "lost", "invalid", "kod", "responses/s", "min", "median", "p99", "max", "p50", "p99", "max", "task", "serving")
		sw.header = true
	}
	cpu, serving := "-", "-"
	if s.CPUPerResponse > 0 {
		cpu = micro(s.CPUPerResponse)
	}
	if s.ServingCPUPerResponse > 0 {
		serving = micro(s.ServingCPUPerResponse)
	}
	note := ""
	switch {
	case s.CaptureMissed > 0:
		note = fmt.Sprintf("  The capture ring missed %d replies", s.CaptureMissed)
	case s.Shortfall:
		note = fmt.Sprintf("  Could not send requests at rate %.0f", s.Rate)
	}
	_, err := fmt.Fprintf(sw.w, "%-10s %3s %9.0f %8d | %6.2f%% %6.2f%% %5.2f%% | %11.0f | %7s %7s %7s %7s | %6s %6s %7s | %7s %7s%s\n",
		s.Target, roundLabel(s.Round), s.Rate, s.Clients, s.LostPercent, s.InvalidPercent, s.KoDPercent, s.ResponseRate,
		micro(s.ResponseTime.Min), micro(s.ResponseTime.Median), micro(s.ResponseTime.P99), micro(s.ResponseTime.Max),
		micro(s.TransmitError.P50), micro(s.TransmitError.P99), micro(s.TransmitError.Max), cpu, serving, note)
	return err
}

func roundLabel(r int) string {
	if r == 0 {
		return ""
	}
	return "#" + strconv.Itoa(r)
}

func micro(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/1e3) }

// WriteSummaries writes a comparison's summary tables: peaks, then the
// fixed points.
func WriteSummaries(w io.Writer, summaries []Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "target\tmax rate <1%% loss\tpeak responses/s\tratio\tresponse µs median\tp99\tpeak per round\t\n")
	for _, s := range summaries {
		rounds := ""
		for i, p := range s.PeakPerRound {
			if i > 0 {
				rounds += " "
			}
			rounds += strconv.FormatFloat(p, 'f', 0, 64)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.2fx\t%s\t%s\t%s\t\n", s.Target, s.MaxRate, s.PeakResponse, s.Ratio,
			micro(s.ResponseTime.Median), micro(s.ResponseTime.P99), rounds)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(summaries) == 0 || len(summaries[0].Points) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "target\tpoint\trate\tlost\ttask CPU µs/response\tserving CPUs µs/response\tof it softirq\t|tx error| µs p50\tp90\tp99\tp99.9\tmean\t\n")
	for j := range summaries[0].Points {
		for _, s := range summaries {
			if j >= len(s.Points) {
				continue
			}
			p := s.Points[j]
			cpu, serving, softirq := "-", "-", "-"
			if p.CPUPerResponse > 0 {
				cpu = micro(p.CPUPerResponse)
			}
			if p.ServingCPUPerResponse > 0 {
				serving, softirq = micro(p.ServingCPUPerResponse), micro(p.ServingSoftirqPerResponse)
			}
			e := p.TransmitError
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.2f%%\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Target, p.Point, p.Rate, p.LostPercent, cpu, serving, softirq,
				micro(e.P50), micro(e.P90), micro(e.P99), micro(e.P999), micro(e.Mean))
		}
	}
	return tw.Flush()
}

// Curve is one target's response rate against request rate: at each asked
// rate, the median response rate over the rounds that ran it.
type Curve struct {
	Target string
	Points []CurvePoint
}

// CurvePoint is one rate of a Curve.
type CurvePoint struct {
	Rate, ResponseRate float64
}

// Curves groups ramp steps by target, in the order targets first appear,
// with points by increasing rate. Steps the generator could not send at are
// left out (they measure the generator, not the server), and so are a
// compare's fixed points.
func Curves(steps []Step) []Curve {
	var curves []Curve
	index := map[string]int{}
	byRate := []map[float64][]float64{}
	for _, s := range steps {
		if s.Shortfall || s.Point != "" {
			continue
		}
		i, ok := index[s.Target]
		if !ok {
			i = len(curves)
			index[s.Target] = i
			curves = append(curves, Curve{Target: s.Target})
			byRate = append(byRate, map[float64][]float64{})
		}
		byRate[i][s.Rate] = append(byRate[i][s.Rate], s.ResponseRate)
	}
	for i := range curves {
		for _, rate := range slices.Sorted(maps.Keys(byRate[i])) {
			curves[i].Points = append(curves[i].Points, CurvePoint{Rate: rate, ResponseRate: median(byRate[i][rate])})
		}
	}
	return curves
}

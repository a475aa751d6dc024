package bench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// CompareConfig configures Compare.
type CompareConfig struct {
	// Rounds is how many times every target is measured, interleaved
	// (A B A B ...), so that drift of a shared machine falls on all alike.
	Rounds int
	// Ramp is the schedule each target runs per round.
	Ramp RampConfig
	// Points are fixed-rate steps every target runs after its ramp in each
	// round: CPU time per reply and transmit-timestamp error are compared
	// there, at the same rate for all.
	Points []Point
	// FixedDuration is how long each point is held.
	FixedDuration time.Duration
	// Flood configures the generator; its Target and TargetPID are set per
	// target.
	Flood FloodConfig
	// OnStep, if set, sees every step as it completes.
	OnStep func(Step)
}

// Point is a fixed rate to measure every target at: an absolute rate, or a
// share of the first target's peak response rate in the same round.
type Point struct {
	Rate  float64 // requests per second, if Share is zero
	Share float64 // of the first target's peak, in (0, 1]
}

// String names the point as ParsePoint reads it: "20000" or "50%".
func (p Point) String() string {
	if p.Share > 0 {
		return strconv.FormatFloat(100*p.Share, 'f', -1, 64) + "%"
	}
	return strconv.FormatFloat(p.Rate, 'f', -1, 64)
}

// ParsePoint parses a rate in requests per second ("20000") or a
// percentage of the first target's peak ("90%").
func ParsePoint(s string) (Point, error) {
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(pct, 64)
		if err != nil || !(v > 0 && v <= 100) {
			return Point{}, fmt.Errorf("point %q: want a percentage above 0 and at most 100", s)
		}
		return Point{Share: v / 100}, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !(v > 0 && v < 1e8) {
		return Point{}, fmt.Errorf("point %q: want a rate in requests per second, or a percentage such as 90%%", s)
	}
	return Point{Rate: v}, nil
}

// Summary is one target's result over all rounds: each figure is the median
// of its per-round values.
type Summary struct {
	Target string `json:"target"`
	// MaxRate is the highest asked rate answered with under 1% loss.
	MaxRate float64 `json:"max_rate_under_1pct_loss"`
	// PeakResponse is the highest response rate of the ramp.
	PeakResponse float64 `json:"peak_response_rate"`
	// Ratio is PeakResponse over the first target's.
	Ratio float64 `json:"ratio_to_first"`
	// PeakPerRound lists PeakResponse for every round, in order, and
	// StopPerRound why each round's ramp stopped.
	PeakPerRound []float64    `json:"peak_response_per_round"`
	StopPerRound []StopReason `json:"stop_per_round"`
	// ResponseTime is the ramp's last step's response time.
	ResponseTime Quantiles `json:"response_time"`
	// Points holds the fixed-rate measurements, in the order configured.
	Points []PointSummary `json:"points,omitempty"`
}

// PointSummary is one target's figures at one fixed point.
type PointSummary struct {
	Point string  `json:"point"`
	Rate  float64 `json:"rate"` // requests per second asked for
	// CPUPerResponse is the target's CPU time per reply, if known, and
	// ServingCPUPerResponse everything its CPUs did per reply, of which
	// ServingSoftirqPerResponse in softirq (see Step).
	CPUPerResponse            time.Duration `json:"cpu_per_response_ns,omitempty"`
	ServingCPUPerResponse     time.Duration `json:"serving_cpu_per_response_ns,omitempty"`
	ServingSoftirqPerResponse time.Duration `json:"serving_softirq_per_response_ns,omitempty"`
	TransmitError             ErrorStats    `json:"transmit_error"`
	LostPercent               float64       `json:"lost_percent"`
}

// Compare measures every target in turn, Rounds times, and summarizes them.
// It returns every step it ran alongside the summaries.
func Compare(ctx context.Context, targets []*Target, cfg CompareConfig) ([]Summary, []Step, error) {
	if cfg.Rounds < 1 {
		return nil, nil, fmt.Errorf("bench: %d rounds", cfg.Rounds)
	}
	if len(cfg.Points) > 0 && cfg.FixedDuration <= 0 {
		return nil, nil, fmt.Errorf("bench: fixed points need a duration")
	}
	type perRound struct {
		maxRate, peak []float64
		stops         []StopReason
		rt            []Quantiles
		points        [][]Step // [point][round]
	}
	results := make([]perRound, len(targets))
	for i := range results {
		results[i].points = make([][]Step, len(cfg.Points))
	}
	var all []Step
	for round := 1; round <= cfg.Rounds; round++ {
		firstPeak := 0.0
		for i, t := range targets {
			fc := cfg.Flood
			fc.Target, fc.TargetPID, fc.ScrapeURL = t.Addr, t.PID, t.MetricsURL
			f, err := NewFlooder(fc)
			if err != nil {
				return nil, all, err
			}
			label := func(s *Step) {
				s.Target, s.Round = t.Name, round
				all = append(all, *s)
				if cfg.OnStep != nil {
					cfg.OnStep(*s)
				}
			}
			ramp := cfg.Ramp
			ramp.OnStep = func(s Step) { label(&s) }
			result, err := f.Ramp(ctx, ramp)
			if err != nil {
				f.Close()
				return nil, all, fmt.Errorf("%s, round %d: %w", t.Name, round, err)
			}
			if i == 0 {
				firstPeak = result.PeakResponse
			}
			r := &results[i]
			r.maxRate = append(r.maxRate, result.MaxRate)
			r.peak = append(r.peak, result.PeakResponse)
			r.stops = append(r.stops, result.Stop)
			r.rt = append(r.rt, result.Steps[len(result.Steps)-1].ResponseTime) // Ramp runs at least one step or fails
			for j, p := range cfg.Points {
				rate := p.Rate
				if p.Share > 0 {
					rate = p.Share * firstPeak
				}
				if rate <= 0 {
					continue // the first target answered nothing to take a share of
				}
				s, err := f.Run(ctx, rate, cfg.FixedDuration)
				if err != nil {
					f.Close()
					return nil, all, fmt.Errorf("%s, round %d, point %v: %w", t.Name, round, p, err)
				}
				s.Point = p.String()
				label(&s)
				r.points[j] = append(r.points[j], s)
			}
			f.Close()
		}
	}
	summaries := make([]Summary, len(targets))
	for i, t := range targets {
		r := results[i]
		s := Summary{Target: t.Name, MaxRate: median(r.maxRate), PeakResponse: median(r.peak), PeakPerRound: r.peak,
			StopPerRound: r.stops, ResponseTime: medianQuantiles(r.rt)}
		for j, p := range cfg.Points {
			s.Points = append(s.Points, summarizePoint(p, r.points[j]))
		}
		if summaries[0].PeakResponse > 0 {
			s.Ratio = s.PeakResponse / summaries[0].PeakResponse
		}
		if i == 0 {
			s.Ratio = 1
		}
		summaries[i] = s
	}
	return summaries, all, nil
}

// summarizePoint takes the median of each figure over the rounds.
func summarizePoint(p Point, steps []Step) PointSummary {
	ps := PointSummary{Point: p.String()}
	pick := func(f func(Step) float64) float64 {
		v := make([]float64, len(steps))
		for i, s := range steps {
			v[i] = f(s)
		}
		return median(v)
	}
	ps.Rate = pick(func(s Step) float64 { return s.Rate })
	ps.CPUPerResponse = time.Duration(pick(func(s Step) float64 { return float64(s.CPUPerResponse) }))
	ps.ServingCPUPerResponse = time.Duration(pick(func(s Step) float64 { return float64(s.ServingCPUPerResponse) }))
	ps.ServingSoftirqPerResponse = time.Duration(pick(func(s Step) float64 { return float64(s.ServingSoftirqPerResponse) }))
	ps.LostPercent = pick(func(s Step) float64 { return s.LostPercent })
	d := func(f func(e ErrorStats) time.Duration) time.Duration {
		return time.Duration(pick(func(s Step) float64 { return float64(f(s.TransmitError)) }))
	}
	ps.TransmitError = ErrorStats{
		P50:  d(func(e ErrorStats) time.Duration { return e.P50 }),
		P90:  d(func(e ErrorStats) time.Duration { return e.P90 }),
		P99:  d(func(e ErrorStats) time.Duration { return e.P99 }),
		P999: d(func(e ErrorStats) time.Duration { return e.P999 }),
		Max:  d(func(e ErrorStats) time.Duration { return e.Max }),
		Mean: d(func(e ErrorStats) time.Duration { return e.Mean }),
	}
	return ps
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianQuantiles(qs []Quantiles) Quantiles {
	pick := func(f func(Quantiles) time.Duration) time.Duration {
		v := make([]float64, len(qs))
		for i, q := range qs {
			v[i] = float64(f(q))
		}
		return time.Duration(median(v))
	}
	return Quantiles{
		Min:    pick(func(q Quantiles) time.Duration { return q.Min }),
		Median: pick(func(q Quantiles) time.Duration { return q.Median }),
		P99:    pick(func(q Quantiles) time.Duration { return q.P99 }),
		Max:    pick(func(q Quantiles) time.Duration { return q.Max }),
	}
}

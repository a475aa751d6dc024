package bench

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// CompareConfig configures Compare.
type CompareConfig struct {
	// Rounds is how many times every target is measured, interleaved
	// (A B A B ...), so that drift of a shared machine falls on all alike.
	Rounds int
	// Ramp is the schedule each target runs per round.
	Ramp RampConfig
	// FixedRate and FixedDuration, if set, add a step per round at one
	// rate common to all targets, which measures CPU time per response.
	FixedRate     float64
	FixedDuration time.Duration
	// Flood configures the generator; its Target and TargetPID are set per
	// target.
	Flood FloodConfig
	// OnStep, if set, sees every step as it completes.
	OnStep func(Step)
}

// Summary is one target's result over all rounds: each figure is the median
// of its per-round values.
type Summary struct {
	Target string `json:"target"`
	// MaxRate is the highest asked rate answered with under 1% loss.
	MaxRate float64 `json:"max_rate_under_1pct_loss"`
	// PeakResponse is the highest response rate of the ramp.
	PeakResponse float64 `json:"peak_response_rate"`
	// CPUPerResponse is the target's CPU time per reply at the fixed rate.
	CPUPerResponse time.Duration `json:"cpu_per_response_ns,omitempty"`
	// ResponseTime is the fixed step's, or the ramp's last, response time.
	ResponseTime Quantiles `json:"response_time"`
	// Ratio is PeakResponse over the first target's.
	Ratio float64 `json:"ratio_to_first"`
	// PeakPerRound lists PeakResponse for every round, in order.
	PeakPerRound []float64 `json:"peak_response_per_round"`
}

// Compare measures every target in turn, Rounds times, and summarizes them.
// It returns every step it ran alongside the summaries.
func Compare(ctx context.Context, targets []*Target, cfg CompareConfig) ([]Summary, []Step, error) {
	if cfg.Rounds < 1 {
		return nil, nil, fmt.Errorf("bench: %d rounds", cfg.Rounds)
	}
	type perRound struct {
		maxRate, peak []float64
		cpu           []time.Duration
		rt            []Quantiles
	}
	results := make([]perRound, len(targets))
	var all []Step
	for round := 1; round <= cfg.Rounds; round++ {
		for i, t := range targets {
			fc := cfg.Flood
			fc.Target, fc.TargetPID = t.Addr, t.PID
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
			steps, err := f.Ramp(ctx, ramp)
			if err != nil {
				f.Close()
				return nil, all, fmt.Errorf("%s, round %d: %w", t.Name, round, err)
			}
			maxRate, peak := Saturation(steps, 1)
			r := &results[i]
			r.maxRate = append(r.maxRate, maxRate)
			r.peak = append(r.peak, peak)
			responseTime := steps[len(steps)-1].ResponseTime // Ramp runs at least one step or fails
			if cfg.FixedRate > 0 {
				s, err := f.Run(ctx, cfg.FixedRate, cfg.FixedDuration)
				if err != nil {
					f.Close()
					return nil, all, fmt.Errorf("%s, round %d, fixed rate: %w", t.Name, round, err)
				}
				label(&s)
				r.cpu = append(r.cpu, s.CPUPerResponse)
				responseTime = s.ResponseTime
			}
			r.rt = append(r.rt, responseTime)
			f.Close()
		}
	}
	summaries := make([]Summary, len(targets))
	for i, t := range targets {
		r := results[i]
		s := Summary{Target: t.Name, MaxRate: median(r.maxRate), PeakResponse: median(r.peak), PeakPerRound: r.peak}
		if len(r.cpu) > 0 {
			s.CPUPerResponse = time.Duration(median(durationsToFloats(r.cpu)))
		}
		if len(r.rt) > 0 {
			s.ResponseTime = medianQuantiles(r.rt)
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

func durationsToFloats(d []time.Duration) []float64 {
	f := make([]float64, len(d))
	for i, x := range d {
		f[i] = float64(x)
	}
	return f
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

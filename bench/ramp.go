package bench

import (
	"context"
	"fmt"
	"time"
)

// RampConfig configures Ramp, which works like ntpperf's rate ramp.
type RampConfig struct {
	// Start is the first step's rate in requests per second.
	Start float64
	// Multiplier scales the rate from one step to the next; above 1.
	Multiplier float64
	// Max is the highest rate to try.
	Max float64
	// StepDuration is how long each rate is held.
	StepDuration time.Duration
	// MaxLossPercent ends the ramp after a step that lost more. If zero,
	// 20 (%).
	MaxLossPercent float64
	// OnStep, if set, sees every step as it completes.
	OnStep func(Step)
}

func (c RampConfig) validate() error {
	switch {
	case c.Start <= 0 || c.Max < c.Start:
		return fmt.Errorf("bench: ramp from %v to %v requests/s", c.Start, c.Max)
	case c.Multiplier <= 1:
		return fmt.Errorf("bench: ramp multiplier %v must exceed 1", c.Multiplier)
	case c.StepDuration <= 0:
		return fmt.Errorf("bench: step duration %v", c.StepDuration)
	case c.MaxLossPercent < 0 || c.MaxLossPercent > 100:
		return fmt.Errorf("bench: loss limit %v%%", c.MaxLossPercent)
	}
	return nil
}

// RampResult is what a ramp measured, and why it stopped.
type RampResult struct {
	Steps []Step
	// MaxRate is the highest asked rate answered with under 1% loss (0 if
	// none was), and PeakResponse the highest response rate; steps the
	// generator could not send at are left out of both.
	MaxRate, PeakResponse float64
	// Stop says why the ramp ended.
	Stop StopReason
}

// StopReason says why a ramp ended.
type StopReason string

// Why a ramp ends.
const (
	// StopSaturated: a step lost more than the loss limit.
	StopSaturated StopReason = "the server saturated"
	// StopGenerator: the generator could not send at a step's rate, so the
	// step measured the generator, not the server.
	StopGenerator StopReason = "the generator fell behind"
	// StopMax: the step at the highest rate asked for was run.
	StopMax StopReason = "it reached --max"
)

// String describes the ramp in one line.
func (r RampResult) String() string {
	last := Step{}
	if len(r.Steps) > 0 {
		last = r.Steps[len(r.Steps)-1]
	}
	return fmt.Sprintf("peak %.0f responses/s, highest rate with under 1%% loss %.0f/s; stopped at %.0f/s (%.1f%% lost) because %s",
		r.PeakResponse, r.MaxRate, last.Rate, last.LostPercent, r.Stop)
}

// Ramp runs steps of increasing rate until a step with heavy loss, a step
// the generator could not send at, or a step at Max, which is always the
// last rate tried even where the multiplier steps over it.
func (f *Flooder) Ramp(ctx context.Context, cfg RampConfig) (RampResult, error) {
	if cfg.MaxLossPercent == 0 {
		cfg.MaxLossPercent = 20
	}
	if err := cfg.validate(); err != nil {
		return RampResult{}, err
	}
	var r RampResult
	for rate := cfg.Start; ; rate *= cfg.Multiplier {
		if rate > cfg.Max {
			rate = cfg.Max
		}
		s, err := f.Run(ctx, rate, cfg.StepDuration)
		if err != nil {
			return r, err
		}
		r.Steps = append(r.Steps, s)
		if cfg.OnStep != nil {
			cfg.OnStep(s)
		}
		switch {
		case s.Shortfall:
			r.Stop = StopGenerator
		case s.LostPercent > cfg.MaxLossPercent:
			r.Stop = StopSaturated
		case rate >= cfg.Max:
			r.Stop = StopMax
		}
		if r.Stop != "" {
			break
		}
	}
	r.MaxRate, r.PeakResponse = Saturation(r.Steps, 1)
	return r, nil
}

// Saturation summarizes a ramp: the highest asked rate answered with less
// than lossLimit percent lost (0 if none was) and the highest response rate
// seen. Steps the generator could not send at are left out.
func Saturation(steps []Step, lossLimit float64) (maxRate, peakResponse float64) {
	for _, s := range steps {
		if s.Shortfall {
			continue
		}
		if s.LostPercent < lossLimit && s.InvalidPercent == 0 {
			maxRate = max(maxRate, s.Rate)
		}
		peakResponse = max(peakResponse, s.ResponseRate)
	}
	return maxRate, peakResponse
}

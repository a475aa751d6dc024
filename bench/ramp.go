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

// Ramp runs steps of increasing rate until Max, a step with heavy loss, or
// a step the generator could not send at.
func (f *Flooder) Ramp(ctx context.Context, cfg RampConfig) ([]Step, error) {
	if cfg.MaxLossPercent == 0 {
		cfg.MaxLossPercent = 20
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var steps []Step
	for rate := cfg.Start; rate <= cfg.Max*1.0001; rate *= cfg.Multiplier {
		s, err := f.Run(ctx, rate, cfg.StepDuration)
		if err != nil {
			return steps, err
		}
		steps = append(steps, s)
		if cfg.OnStep != nil {
			cfg.OnStep(s)
		}
		if s.Shortfall || s.LostPercent > cfg.MaxLossPercent {
			break
		}
	}
	return steps, nil
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

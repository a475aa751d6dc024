package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/fastntp/fastntp/bench"
)

// drawPlot draws response rate against request rate, one line per target,
// and saves it to path. The extension chooses the format: .png or .svg.
// Plotting lives here rather than in package bench so that only this command
// links the plotting library.
func drawPlot(path, title string, steps []bench.Step) error {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".png", ".svg":
	default:
		return fmt.Errorf("plot %s: want a .png or .svg file", path)
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "requests per second"
	p.Y.Label.Text = "responses per second"
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())

	var lines []any
	for _, c := range bench.Curves(steps) {
		pts := make(plotter.XYs, len(c.Points))
		for i, pt := range c.Points {
			pts[i] = plotter.XY{X: pt.Rate, Y: pt.ResponseRate}
		}
		label := c.Target
		if label == "" {
			label = "server"
		}
		lines = append(lines, label, pts)
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

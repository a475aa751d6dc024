package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/fastntp/fastntp/bench"
)

// drawPlot draws response rate against request rate, one line per target,
// and saves it to path. The extension chooses the format: .png or .svg.
// stops says, per target, why its ramp stopped; the legend shows it, and a
// cross marks each ramp's last step.
// Plotting lives here rather than in package bench so that only this command
// links the plotting library.
func drawPlot(path, title string, steps []bench.Step, stops map[string]string) error {
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
	var last plotter.XYs
	for _, c := range bench.Curves(steps) {
		pts := make(plotter.XYs, len(c.Points))
		for i, pt := range c.Points {
			pts[i] = plotter.XY{X: pt.Rate, Y: pt.ResponseRate}
		}
		label := c.Target
		if label == "" {
			label = "server"
		}
		if why := stops[c.Target]; why != "" {
			label += " (stopped: " + why + ")"
		}
		lines = append(lines, label, pts)
		if len(pts) > 0 {
			last = append(last, pts[len(pts)-1])
		}
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if len(last) > 0 {
		marks, err := plotter.NewScatter(last)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		marks.GlyphStyle.Shape = draw.CrossGlyph{}
		marks.GlyphStyle.Radius = vg.Points(6)
		p.Add(marks)
		p.Legend.Add("last step of each ramp", marks)
	}
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

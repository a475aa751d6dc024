package bench

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plot draws response rate against request rate, one line per target (the
// median over rounds at each rate), and saves it to path. The extension
// chooses the format: .png or .svg.
func Plot(path, title string, steps []Step) error {
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

	var names []string
	byTarget := map[string]map[float64][]float64{}
	for _, s := range steps {
		if s.Shortfall {
			continue
		}
		if byTarget[s.Target] == nil {
			byTarget[s.Target] = map[float64][]float64{}
			names = append(names, s.Target)
		}
		byTarget[s.Target][s.Rate] = append(byTarget[s.Target][s.Rate], s.ResponseRate)
	}
	var lines []any
	for _, name := range names {
		rates := make([]float64, 0, len(byTarget[name]))
		for r := range byTarget[name] {
			rates = append(rates, r)
		}
		slices.Sort(rates)
		pts := make(plotter.XYs, len(rates))
		for i, r := range rates {
			pts[i] = plotter.XY{X: r, Y: median(byTarget[name][r])}
		}
		label := name
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

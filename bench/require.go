package bench

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Requirement checks a comparison's first target against another target.
// Its text form is METRIC[@POINT]>=RATIO*NAME or METRIC[@POINT]<=RATIO*NAME,
// for instance
//
//	peak>=0.97*c             peak response rate at least 0.97 times c's
//	cpu@20000<=1.3*c         CPU time per reply at 20,000/s at most 1.3 times c's
//	txp99@50%<=8*chronyd     transmit error p99 at half the first target's peak
//
// Metrics: peak (no point), cpu, txp50 and txp99 (at a point; without one,
// at every point).
type Requirement struct {
	Metric  string
	Point   string
	AtLeast bool // >=; else <=
	Ratio   float64
	Target  string
}

var requirementMetrics = map[string]bool{"peak": false, "cpu": true, "txp50": true, "txp99": true} // true: measured at points

// ParseRequirement parses the text form.
func ParseRequirement(s string) (Requirement, error) {
	bad := func(why string) (Requirement, error) {
		return Requirement{}, fmt.Errorf("requirement %q: %s (want METRIC[@POINT]>=RATIO*NAME or <=, such as peak>=0.97*c)", s, why)
	}
	var r Requirement
	left, right, ok := strings.Cut(s, ">=")
	r.AtLeast = true
	if !ok {
		left, right, ok = strings.Cut(s, "<=")
		r.AtLeast = false
	}
	if !ok {
		return bad("no >= or <=")
	}
	r.Metric, r.Point, _ = strings.Cut(left, "@")
	atPoints, known := requirementMetrics[r.Metric]
	switch {
	case !known:
		return bad("unknown metric " + strconv.Quote(r.Metric))
	case !atPoints && r.Point != "":
		return bad(r.Metric + " has no point")
	case r.Point != "":
		if _, err := ParsePoint(r.Point); err != nil {
			return bad(err.Error())
		}
	}
	ratio, name, ok := strings.Cut(right, "*")
	if !ok || name == "" {
		return bad("no RATIO*NAME")
	}
	v, err := strconv.ParseFloat(ratio, 64)
	if err != nil || !(v > 0 && v < 1e6) {
		return bad("ratio must be a positive number")
	}
	r.Ratio, r.Target = v, name
	return r, nil
}

func (r Requirement) String() string {
	op := "<="
	if r.AtLeast {
		op = ">="
	}
	m := r.Metric
	if r.Point != "" {
		m += "@" + r.Point
	}
	return fmt.Sprintf("%s%s%s*%s", m, op, strconv.FormatFloat(r.Ratio, 'f', -1, 64), r.Target)
}

// CheckRequirements evaluates each requirement on summaries, whose first
// entry is the target compared, writes one line per comparison to w, and
// returns an error naming those that failed. A requirement whose target or
// point is missing from the summaries fails.
func CheckRequirements(w io.Writer, reqs []Requirement, summaries []Summary) error {
	var failed []string
	for _, r := range reqs {
		for _, line := range r.evaluate(summaries) {
			verdict := "ok"
			if !line.ok {
				verdict = "FAIL"
				failed = append(failed, line.text)
			}
			fmt.Fprintf(w, "check: %s: %s\n", line.text, verdict)
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

type checkLine struct {
	text string
	ok   bool
}

func (r Requirement) evaluate(summaries []Summary) []checkLine {
	fail := func(why string) []checkLine { return []checkLine{{fmt.Sprintf("%s: %s", r, why), false}} }
	if len(summaries) == 0 {
		return fail("no summaries")
	}
	first := summaries[0]
	var other *Summary
	for i := range summaries[1:] {
		if summaries[1+i].Target == r.Target {
			other = &summaries[1+i]
		}
	}
	if other == nil {
		return fail("no target after the first is named " + r.Target)
	}
	compare := func(label string, mine, theirs float64, unit func(float64) string) checkLine {
		got := mine / theirs
		ok := theirs > 0 && ((r.AtLeast && got >= r.Ratio) || (!r.AtLeast && got <= r.Ratio))
		return checkLine{fmt.Sprintf("%s: %s %s / %s %s = %.2fx (required %s %.2fx)", label, first.Target, unit(mine),
			r.Target, unit(theirs), got, map[bool]string{true: ">=", false: "<="}[r.AtLeast], r.Ratio), ok}
	}
	if r.Metric == "peak" {
		return []checkLine{compare("peak", first.PeakResponse, other.PeakResponse,
			func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) + "/s" })}
	}
	micro := func(v float64) string { return fmt.Sprintf("%.1fµs", v/1e3) }
	var lines []checkLine
	for j, p := range first.Points {
		if r.Point != "" && p.Point != r.Point {
			continue
		}
		if j >= len(other.Points) {
			return fail("no point " + p.Point + " for " + r.Target)
		}
		q := other.Points[j]
		label := r.Metric + "@" + p.Point
		switch r.Metric {
		case "cpu":
			lines = append(lines, compare(label, float64(p.CPUPerResponse), float64(q.CPUPerResponse), micro))
		case "txp50":
			lines = append(lines, compare(label, float64(p.TransmitError.P50), float64(q.TransmitError.P50), micro))
		case "txp99":
			lines = append(lines, compare(label, float64(p.TransmitError.P99), float64(q.TransmitError.P99), micro))
		}
	}
	if len(lines) == 0 {
		return fail("no such point measured")
	}
	return lines
}

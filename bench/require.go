package bench

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Requirement checks a comparison's first target against others. Its text
// form is METRIC[@POINT]>=RATIO*NAME or METRIC[@POINT]<=RATIO*NAME, for
// instance
//
//	peak>=0.97*c             peak response rate at least 0.97 times c's
//	cpu@20000<=1.3*c         CPU time per reply at 20,000/s at most 1.3 times c's
//	txp99@50%<=8*chronyd     transmit error p99 at half the first target's peak
//
// or compares with a weighted sum of several targets' figures:
//
//	peak>=0.5*c+0.5*unbatched    at least halfway from unbatched's peak to c's
//
// Metrics: peak (no point), cpu (the target's task clock), servingcpu
// (everything its CPUs did: see Step.ServingCPUPerResponse), txp50 and
// txp99 (at a point; without one, at every point).
type Requirement struct {
	Metric  string
	Point   string
	AtLeast bool // >=; else <=
	Terms   []Term
}

// Term is one RATIO*NAME of a Requirement.
type Term struct {
	Ratio  float64
	Target string
}

var requirementMetrics = map[string]bool{"peak": false, "cpu": true, "servingcpu": true, "txp50": true, "txp99": true} // true: measured at points

// ParseRequirement parses the text form.
func ParseRequirement(s string) (Requirement, error) {
	bad := func(why string) (Requirement, error) {
		return Requirement{}, fmt.Errorf("requirement %q: %s (want METRIC[@POINT]>=RATIO*NAME[+RATIO*NAME...] or <=, such as peak>=0.97*c)", s, why)
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
	for term := range strings.SplitSeq(right, "+") {
		ratio, name, ok := strings.Cut(term, "*")
		if !ok || name == "" {
			return bad("no RATIO*NAME")
		}
		v, err := strconv.ParseFloat(ratio, 64)
		if err != nil || !(v > 0 && v < 1e6) {
			return bad("ratio must be a positive number")
		}
		r.Terms = append(r.Terms, Term{v, name})
	}
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
	terms := make([]string, len(r.Terms))
	for i, t := range r.Terms {
		terms[i] = strconv.FormatFloat(t.Ratio, 'f', -1, 64) + "*" + t.Target
	}
	return m + op + strings.Join(terms, "+")
}

// CheckRequirements evaluates each requirement on summaries, whose first
// entry is the target compared, writes one line per comparison to w, and
// returns an error naming those that failed. A requirement whose target or
// point is missing from the summaries fails. A peak that falls short while
// the first target's ramps mostly stopped because the generator fell
// behind is reported as unresolved, not failed: the generator, not the
// target, set that peak, and the machine cannot tell how far the target
// would have gone.
func CheckRequirements(w io.Writer, reqs []Requirement, summaries []Summary) error {
	var failed []string
	for _, r := range reqs {
		for _, line := range r.evaluate(summaries) {
			if line.verdict == verdictFail {
				failed = append(failed, line.text)
			}
			fmt.Fprintf(w, "check: %s: %s\n", line.text, line.verdict)
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

const (
	verdictOK         = "ok"
	verdictFail       = "FAIL"
	verdictUnresolved = "unresolved (the generator fell behind before the target saturated)"
)

type checkLine struct {
	text    string
	verdict string
}

// generatorBound reports whether most of s's ramps stopped because the
// generator fell behind.
func (s Summary) generatorBound() bool {
	n := 0
	for _, stop := range s.StopPerRound {
		if stop == StopGenerator {
			n++
		}
	}
	return 2*n > len(s.StopPerRound)
}

func (r Requirement) evaluate(summaries []Summary) []checkLine {
	fail := func(why string) []checkLine { return []checkLine{{fmt.Sprintf("%s: %s", r, why), verdictFail}} }
	if len(summaries) == 0 {
		return fail("no summaries")
	}
	first := summaries[0]
	others := make([]*Summary, len(r.Terms))
	for i, term := range r.Terms {
		for j := range summaries[1:] {
			if summaries[1+j].Target == term.Target {
				others[i] = &summaries[1+j]
			}
		}
		if others[i] == nil {
			return fail("no target after the first is named " + term.Target)
		}
	}
	// compare checks mine against the weighted sum of theirs, one value per
	// term.
	compare := func(label string, mine float64, theirs []float64, unit func(float64) string) checkLine {
		reference, required := 0.0, 1.0
		var names []string
		for i, term := range r.Terms {
			reference += term.Ratio * theirs[i]
			names = append(names, fmt.Sprintf("%s*%s %s", strconv.FormatFloat(term.Ratio, 'f', -1, 64), term.Target, unit(theirs[i])))
		}
		against := names[0]
		if len(r.Terms) == 1 {
			// One term reads best as a ratio to the other target.
			reference, required = theirs[0], r.Terms[0].Ratio
			against = r.Terms[0].Target + " " + unit(theirs[0])
		} else {
			against = "(" + strings.Join(names, " + ") + " = " + unit(reference) + ")"
		}
		got := mine / reference
		verdict := verdictFail
		if reference > 0 && ((r.AtLeast && got >= required) || (!r.AtLeast && got <= required)) {
			verdict = verdictOK
		} else if r.Metric == "peak" && r.AtLeast && first.generatorBound() {
			verdict = verdictUnresolved
		}
		return checkLine{fmt.Sprintf("%s: %s %s / %s = %.2fx (required %s %.2fx)", label, first.Target, unit(mine),
			against, got, map[bool]string{true: ">=", false: "<="}[r.AtLeast], required), verdict}
	}
	if r.Metric == "peak" {
		theirs := make([]float64, len(others))
		for i, o := range others {
			theirs[i] = o.PeakResponse
		}
		return []checkLine{compare("peak", first.PeakResponse, theirs,
			func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) + "/s" })}
	}
	micro := func(v float64) string { return fmt.Sprintf("%.1fµs", v/1e3) }
	var lines []checkLine
	for j, p := range first.Points {
		if r.Point != "" && p.Point != r.Point {
			continue
		}
		theirs := make([]PointSummary, len(others))
		for i, o := range others {
			if j >= len(o.Points) {
				return fail("no point " + p.Point + " for " + o.Target)
			}
			theirs[i] = o.Points[j]
		}
		value := func(f func(PointSummary) time.Duration) (float64, []float64) {
			v := make([]float64, len(theirs))
			for i, q := range theirs {
				v[i] = float64(f(q))
			}
			return float64(f(p)), v
		}
		label := r.Metric + "@" + p.Point
		var mine float64
		var values []float64
		switch r.Metric {
		case "cpu":
			mine, values = value(func(q PointSummary) time.Duration { return q.CPUPerResponse })
		case "servingcpu":
			mine, values = value(func(q PointSummary) time.Duration { return q.ServingCPUPerResponse })
		case "txp50":
			mine, values = value(func(q PointSummary) time.Duration { return q.TransmitError.P50 })
		case "txp99":
			mine, values = value(func(q PointSummary) time.Duration { return q.TransmitError.P99 })
		}
		lines = append(lines, compare(label, mine, values, micro))
	}
	if len(lines) == 0 {
		return fail("no such point measured")
	}
	return lines
}

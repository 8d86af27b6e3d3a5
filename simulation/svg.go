package simulation

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// WriteSVG draws the run's timeline: over time, how many members each
// group of nodes sees alive (a band from the least to the most, the median
// as a line; every node's own line in small meshes), what the heartbeat
// monitor holds alive, how many distinct views the mesh has, and the faults
// and the heal, labelled where they happen.
func WriteSVG(w io.Writer, r *Report) error {
	const (
		width, height = 1100, 680
		left, right   = 70, 300 // the legend lives on the right
		top           = 92
		mainH         = 380
		gap           = 56
		viewsH        = 90
	)
	plotW := float64(width - left - right)
	length := math.Max(r.LengthS, 1)
	if n := len(r.Timeline); n > 0 {
		length = math.Max(length, r.Timeline[n-1].T)
	}
	x := func(t float64) float64 { return float64(left) + plotW*t/length }
	// The y axis spans what was seen, so that a crash of 3 in 100 is not a
	// hairline at the top.
	lo := r.Nodes
	for _, s := range r.Timeline {
		lo = min(lo, s.Monitor)
		for _, g := range s.Groups {
			if g.Live > 0 {
				lo = min(lo, g.Min)
			}
		}
	}
	yMin := float64(max(0, lo-max(2, (r.Nodes-lo)/2)))
	yMax := float64(r.Nodes) + math.Max(1, (float64(r.Nodes)-yMin)*0.05)
	y := func(v float64) float64 { return float64(top) + mainH*(1-(v-yMin)/(yMax-yMin)) }
	maxViews := 1
	for _, s := range r.Timeline {
		maxViews = max(maxViews, s.Views)
	}
	vTop := float64(top + mainH + gap)
	vy := func(v float64) float64 {
		if maxViews == 1 {
			return vTop + viewsH/2
		}
		return vTop + viewsH*(1-(v-1)/float64(maxViews-1))
	}

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="26" font-size="18" font-weight="bold">%s</text>`+"\n", left,
		esc(fmt.Sprintf("%s: %d nodes, gossip profile %s, seed %d", r.Scenario, r.Nodes, r.Profile, r.Seed)))
	fmt.Fprintf(&b, `<text x="%d" y="46" fill="#333">%s</text>`+"\n", left, esc(ScenarioSummary(r.Scenario)))
	fmt.Fprintf(&b, `<text x="%d" y="66" fill="#333">%s</text>`+"\n", left, esc(headline(r)))

	// Faults: shaded while they stand, a line where they start or end.
	type span struct {
		from, to float64
		label    string
	}
	var spans []span
	var marks []FaultRecord
	open := map[string]int{} // kind that is healed -> index in spans
	for _, f := range r.Faults {
		switch FaultKind(f.Kind) {
		case FaultPartition, FaultCut, FaultPause, FaultLoss:
			spans = append(spans, span{from: f.AtS, to: length, label: f.Label})
			open[f.Kind] = len(spans) - 1
		case FaultHeal:
			for _, k := range []string{string(FaultPartition), string(FaultCut)} {
				if i, ok := open[k]; ok {
					spans[i].to = f.AtS
					delete(open, k)
				}
			}
			marks = append(marks, f)
		case FaultResume:
			if i, ok := open[string(FaultPause)]; ok {
				spans[i].to = f.AtS
				delete(open, string(FaultPause))
			}
			marks = append(marks, f)
		case FaultCrash, FaultBurst:
			marks = append(marks, f)
		}
	}
	for i, s := range spans {
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#f4a582" fill-opacity="0.25"/>`+"\n",
			x(s.from), top, x(s.to)-x(s.from), mainH)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="#f4a582" fill-opacity="0.25"/>`+"\n",
			x(s.from), vTop, x(s.to)-x(s.from), viewsH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#b2182b" font-weight="bold">%s</text>`+"\n",
			x(s.from)+4, top+16+14*i, esc(s.label))
	}
	for i, m := range marks {
		color := "#b2182b"
		switch FaultKind(m.Kind) {
		case FaultHeal, FaultResume:
			color = "#1a9850"
		case FaultBurst:
			color = "#762a83"
		}
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="%s" stroke-width="1.5" stroke-dasharray="5,3"/>`+"\n",
			x(m.AtS), x(m.AtS), top, vTop+viewsH, color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="%s" font-weight="bold">%s</text>`+"\n",
			x(m.AtS)+4, top+mainH-8-14*(i%4), color, esc(fmt.Sprintf("%s at %.0f s", m.Label, m.AtS)))
	}

	// Where the gossip agreed again after the heal.
	if r.HealS != nil {
		for _, m := range marks {
			if m.Kind == string(FaultHeal) || m.Kind == string(FaultResume) {
				at := m.AtS + *r.HealS
				fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#1a9850" stroke-width="2.5"/>`+"\n",
					x(at), x(at), vTop, vTop+viewsH)
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#1a9850" font-weight="bold">one view again, %.1f s after</text>`+"\n",
					x(at)+4, vTop+16, *r.HealS)
			}
		}
	}

	// Axes and grid.
	for _, v := range ticksBetween(yMin, float64(r.Nodes), 5) {
		fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, float64(left)+plotW, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, y(v)+4, v)
	}
	fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#555" stroke-dasharray="2,3"/>`+"\n", left, float64(left)+plotW, y(float64(r.Nodes)), y(float64(r.Nodes)))
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#555">all %d nodes</text>`+"\n", float64(left)+plotW-4, y(float64(r.Nodes))-4, r.Nodes)
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="none" stroke="#333"/>`+"\n", left, top, plotW, mainH)
	fmt.Fprintf(&b, `<text transform="translate(20 %d) rotate(-90)" text-anchor="middle">members a node sees alive</text>`+"\n", top+mainH/2)
	fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#333"/>`+"\n", left, vTop, plotW, viewsH)
	fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-weight="bold">distinct member views across the live nodes (1 = every node agrees)</text>`+"\n", left, vTop-8)
	for _, v := range []int{1, maxViews} {
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%d</text>`+"\n", left-6, vy(float64(v))+4, v)
	}
	for _, t := range ticks(length, 10) {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#333"/>`+"\n", x(t), x(t), vTop+viewsH, vTop+viewsH+5)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%g</text>`+"\n", x(t), vTop+viewsH+18, t)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">seconds since the fault schedule started (the mesh had converged)</text>`+"\n",
		float64(left)+plotW/2, vTop+viewsH+36)

	// Data: per group, every node's line (small meshes) or the min–max band,
	// and the median.
	palette := []string{"#2166ac", "#d6604d", "#1b7837", "#762a83", "#e08214"}
	for g, gr := range r.Groups {
		color := palette[g%len(palette)]
		if r.Nodes <= 30 {
			for _, node := range gr.members {
				fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-opacity="0.45" stroke-width="1" points="%s"/>`+"\n",
					color, polyline(r.Timeline, x, y, func(s Sample) (float64, bool) {
						if node >= len(s.alive) || s.alive[node] < 0 {
							return 0, false
						}
						return float64(s.alive[node]), true
					}))
			}
		} else {
			fmt.Fprintf(&b, `<path fill="%s" fill-opacity="0.22" stroke="none" d="%s"/>`+"\n", color, band(r.Timeline, g, x, y))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2.5" points="%s"/>`+"\n", color,
			polyline(r.Timeline, x, y, func(s Sample) (float64, bool) {
				if g >= len(s.Groups) || s.Groups[g].Live == 0 {
					return 0, false
				}
				return float64(s.Groups[g].Median), true
			}))
	}
	fmt.Fprintf(&b, `<polyline fill="none" stroke="black" stroke-width="2" stroke-dasharray="7,4" points="%s"/>`+"\n",
		polyline(r.Timeline, x, y, func(s Sample) (float64, bool) { return float64(s.Monitor), true }))
	fmt.Fprintf(&b, `<polyline fill="none" stroke="#444" stroke-width="2" points="%s"/>`+"\n",
		polyline(r.Timeline, x, vy, func(s Sample) (float64, bool) { return float64(s.Views), true }))

	// Legend.
	lx := float64(left) + plotW + 20
	ly := float64(top) + 8
	item := func(draw, text string) {
		b.WriteString(draw)
		for _, line := range wrap(text, 34) {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+34, ly+4, esc(line))
			ly += 15
		}
		ly += 8
	}
	for g, gr := range r.Groups {
		color := palette[g%len(palette)]
		item(fmt.Sprintf(`<rect x="%.1f" y="%.1f" width="26" height="10" fill="%s" fill-opacity="0.3"/><line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="2.5"/>`+"\n",
			lx, ly-5, color, lx, lx+26, ly, ly, color), gr.Name)
	}
	item(fmt.Sprintf(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black" stroke-width="2" stroke-dasharray="7,4"/>`+"\n", lx, lx+26, ly, ly),
		"heartbeat monitor (the baseline): nodes it holds alive")
	how := "each colour: what that group's nodes see; thick line the median"
	if r.Nodes <= 30 {
		how += ", thin lines single nodes"
	} else {
		how += ", band from the least to the most"
	}
	item("", how)
	kinds := map[string]bool{}
	for _, f := range r.Faults {
		kinds[f.Kind] = true
	}
	if kinds[string(FaultCrash)] {
		item(fmt.Sprintf(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#b2182b" stroke-width="1.5" stroke-dasharray="5,3"/>`+"\n", lx, lx+26, ly, ly),
			"a node crashes")
	}
	if kinds[string(FaultBurst)] {
		item(fmt.Sprintf(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#762a83" stroke-width="1.5" stroke-dasharray="5,3"/>`+"\n", lx, lx+26, ly, ly),
			"a burst of placements (the text report says who placed)")
	}
	if len(spans) > 0 {
		item(fmt.Sprintf(`<rect x="%.1f" y="%.1f" width="26" height="10" fill="#f4a582" fill-opacity="0.5"/>`+"\n", lx, ly-5),
			"shaded: a fault in force")
	}
	if kinds[string(FaultHeal)] || kinds[string(FaultResume)] {
		text := "the network is whole again (heal, resume)"
		if kinds[string(FaultPartition)] {
			text += "; sides that have failed each other meet again at serf's next reconnect round (every 30 s)"
		}
		item(fmt.Sprintf(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#1a9850" stroke-width="1.5" stroke-dasharray="5,3"/>`+"\n", lx, lx+26, ly, ly),
			text)
	}
	if r.HealS != nil {
		item(fmt.Sprintf(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#1a9850" stroke-width="2.5"/>`+"\n", lx, lx+26, ly, ly),
			"every live node sees every live node alive again")
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// headline is the run's key figures in one line.
func headline(r *Report) string {
	parts := []string{}
	if r.DetectionP99 != nil || r.Baseline.DetectionP99 != nil {
		parts = append(parts, fmt.Sprintf("detection p99: gossip %s, baseline %s", secs(r.DetectionP99), secs(r.Baseline.DetectionP99)))
	}
	if r.HealS != nil || r.Baseline.HealS != nil {
		parts = append(parts, fmt.Sprintf("heal: gossip %s, baseline %s", secs(r.HealS), secs(r.Baseline.HealS)))
	}
	parts = append(parts, fmt.Sprintf("false failures: gossip %d, baseline %d", r.FalseFailures, r.Baseline.FalseFailures))
	return strings.Join(parts, " · ")
}

func polyline(samples []Sample, x, y func(float64) float64, value func(Sample) (float64, bool)) string {
	var b strings.Builder
	for _, s := range samples {
		if v, ok := value(s); ok {
			fmt.Fprintf(&b, "%.1f,%.1f ", x(s.T), y(v))
		}
	}
	return strings.TrimSpace(b.String())
}

// band is the outline from group g's maxima forward to its minima back.
func band(samples []Sample, g int, x, y func(float64) float64) string {
	var upper, lower []string
	for _, s := range samples {
		if g >= len(s.Groups) || s.Groups[g].Live == 0 {
			continue
		}
		upper = append(upper, fmt.Sprintf("%.1f,%.1f", x(s.T), y(float64(s.Groups[g].Max))))
		lower = append(lower, fmt.Sprintf("%.1f,%.1f", x(s.T), y(float64(s.Groups[g].Min))))
	}
	if len(upper) == 0 {
		return ""
	}
	for i, j := 0, len(lower)-1; i < j; i, j = i+1, j-1 {
		lower[i], lower[j] = lower[j], lower[i]
	}
	return "M" + strings.Join(upper, " L") + " L" + strings.Join(lower, " L") + " Z"
}

// ticks are round values from 0 to limit, about n of them.
func ticks(limit float64, n int) []float64 { return ticksBetween(0, limit, n) }

// ticksBetween are round values from lo to hi, about n of them.
func ticksBetween(lo, hi float64, n int) []float64 {
	if hi <= lo {
		return []float64{lo}
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for v := math.Ceil(lo/step) * step; v <= hi+step/1000; v += step {
		out = append(out, v)
	}
	return out
}

func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = w
			continue
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}

func esc(s string) string { return html.EscapeString(s) }

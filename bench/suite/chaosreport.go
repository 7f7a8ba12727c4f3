package main

import (
	"fmt"
	"strings"
)

// chaosCell is the summary of the runs of one configuration through one
// fault: medians, and the worst count of failures.
type chaosCell struct {
	runs                               int
	failed, worst, failedAfter, begun  int
	ratio, p99After, maxMs, healthyRPS float64
	p999, worstMax, rps, cpu           float64
	extra, hedges, hedgesWon           float64 // per 1,000 requests; -1: not counted
}

// p99Text shows the p99 after the fault's first second, or that no
// request began then (every client was waiting).
func (c *chaosCell) p99Text() string {
	if c.begun == 0 {
		return "none began"
	}
	return fmt.Sprintf("%.1f", c.p99After)
}

// met reports whether the cell meets the targets: no failure, at least
// 80% of the healthy req/s, p99 under 100 ms after the first second.
func (c *chaosCell) met() bool {
	return c.worst == 0 && c.ratio >= 0.8 && c.begun > 0 && c.p99After < 100
}

// chaosCells groups the runs by fault and configuration, in run order.
func chaosCells(runs []ChaosRun) (cells map[[2]string]*chaosCell, faults, configs []string) {
	cells = map[[2]string]*chaosCell{}
	by := map[[2]string][]ChaosRun{}
	for _, x := range runs {
		k := [2]string{x.Fault, x.Proxy}
		if by[k] == nil {
			if !contains(faults, x.Fault) {
				faults = append(faults, x.Fault)
			}
			if !contains(configs, x.Proxy) {
				configs = append(configs, x.Proxy)
			}
		}
		by[k] = append(by[k], x)
	}
	for k, xs := range by {
		var failed, after, ratio, p99, maxMs, healthy, begun []float64
		var p999, rps, cpu, extra, hedges, won []float64
		c := &chaosCell{runs: len(xs), extra: -1}
		for _, x := range xs {
			p999, rps, cpu = append(p999, x.P999Ms), append(rps, x.RPS), append(cpu, x.CPUus)
			c.worstMax = max(c.worstMax, x.MaxMs)
			if t := x.Tries; t != nil && x.Total > 0 {
				extra = append(extra, t.ExtraPer1000)
				hedges = append(hedges, float64(t.Hedges)*1000/float64(x.Total))
				won = append(won, float64(t.HedgesWon)*1000/float64(x.Total))
			}
			failed, after = append(failed, float64(x.Failed)), append(after, float64(x.FailedAfter))
			ratio, p99, maxMs = append(ratio, x.Ratio), append(p99, x.P99AfterMs), append(maxMs, x.MaxMs)
			healthy, begun = append(healthy, x.HealthyRPS), append(begun, float64(x.BegunAfter))
			c.worst = max(c.worst, x.Failed)
		}
		c.failed, c.failedAfter, c.begun = int(median(failed)), int(median(after)), int(median(begun))
		c.ratio, c.p99After, c.maxMs, c.healthyRPS = median(ratio), median(p99), median(maxMs), median(healthy)
		c.p999, c.rps, c.cpu = median(p999), median(rps), median(cpu)
		if len(extra) > 0 {
			c.extra, c.hedges, c.hedgesWon = median(extra), median(hedges), median(won)
		}
		cells[k] = c
	}
	return cells, faults, configs
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// chaosReport renders the chaos matrix: one table per fault.
func chaosReport(runs []ChaosRun) string {
	var b strings.Builder
	cells, faults, configs := chaosCells(runs)
	b.WriteString("\n### Chaos matrix\n\n")
	what := "GETs"
	if len(runs) > 0 && runs[0].PostBody > 0 {
		what = fmt.Sprintf("POSTs with %d-byte bodies", runs[0].PostBody)
		if runs[0].ReadBody {
			what += " (which the backends read whole before answering)"
		}
	}
	fmt.Fprintf(&b, "Three backends, %d keep-alive connections for %v, %s, no client retry. The fault begins at %v and ends at %v. "+
		"`req/s in fault` is answered requests per second during the fault over the same run's healthy phase (%v-%v); "+
		"`p99 after 1 s` is the p99 latency of the requests begun from %v into the fault to its end; `p99.9` and `max` are of every request of the run (`max` also shows the worst run); "+
		"`CPU` is the proxy's CPU time per request; `extra tries` are service_proxy's retries and hedged tries per 1,000 requests (hedges, and those that won, in brackets). Medians of the runs; `failed` also shows the worst run.\n\n",
		conns, chaosTime, what, chaosFault, chaosHeal, chaosHealthy, chaosFault, chaosGrace)
	for _, f := range faults {
		desc := f
		for _, cf := range chaosFaults {
			if cf.Name == f {
				desc = cf.Desc
			}
		}
		fmt.Fprintf(&b, "#### %s: %s\n\n", f, desc)
		b.WriteString("| configuration | runs | failed (worst) | failed after 1 s | req/s in fault | p99 after 1 s, ms | p99.9 ms | max ms (worst) | req/s | CPU µs/request | extra tries /1,000 (hedges, won) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, cfg := range configs {
			c := cells[[2]string{f, cfg}]
			if c == nil {
				continue
			}
			extra := "-"
			if c.extra >= 0 {
				extra = fmt.Sprintf("%.1f (%.1f, %.1f)", c.extra, c.hedges, c.hedgesWon)
			}
			fmt.Fprintf(&b, "| %s | %d | %d (%d) | %d | %.0f%% | %s | %.1f | %.0f (%.0f) | %.0f | %.1f | %s |\n", cfg, c.runs, c.failed, c.worst, c.failedAfter, 100*c.ratio, c.p99Text(), c.p999, c.maxMs, c.worstMax, c.rps, c.cpu, extra)
		}
		b.WriteString("\n")
	}
	b.WriteString(hedgeOverhead(runs))
	b.WriteString("Configurations:\n\n")
	for _, cfg := range configs {
		for _, px := range chaosPostConfigs {
			if px.Name == cfg {
				fmt.Fprintf(&b, "- `%s`: %s\n", cfg, strings.ReplaceAll(px.Desc, "{b}", "b1 b2 b3"))
			}
		}
	}
	b.WriteString("\nWhat the failed requests got (all runs):\n\n")
	for _, x := range runs {
		if x.Failed == 0 {
			continue
		}
		fmt.Fprintf(&b, "- %s, %s, run %d: %s\n", x.Fault, x.Proxy, x.Rep+1, x.failures())
	}
	return b.String()
}

// chaosSVG draws the chaos matrix: a row per fault, a column per
// configuration; each cell says the failed requests and the req/s kept
// during the fault, green when none failed and at least 80% was kept,
// amber when none failed, red otherwise.
func chaosSVG(runs []ChaosRun) string {
	cells, faults, configs := chaosCells(runs)
	const left, top, cw, ch = 150, 60, 170, 46
	width, height := left+len(configs)*cw+20, top+len(faults)*ch+50
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="14">Chaos matrix: failed GETs (median of runs) and req/s kept during a %v fault</text>`+"\n", chaosHeal-chaosFault)
	for j, cfg := range configs {
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" font-weight="bold">%s</text>`+"\n", left+j*cw+cw/2, top-10, cfg)
	}
	for i, f := range faults {
		y := top + i*ch
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y+ch/2+4, f)
		for j, cfg := range configs {
			c := cells[[2]string{f, cfg}]
			if c == nil {
				continue
			}
			fill := "#e8a0a0" // failures
			switch {
			case c.met():
				fill = "#a8d8a0"
			case c.worst == 0:
				fill = "#f0d890"
			}
			x := left + j*cw
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s" stroke="white"/>`+"\n", x, y, cw, ch, fill)
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%d failed</text>`+"\n", x+cw/2, y+18, c.failed)
			p99 := "no request began"
			if c.begun > 0 {
				p99 = fmt.Sprintf("p99 %.0f ms", c.p99After)
			}
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%.0f%% req/s, %s</text>`+"\n", x+cw/2, y+34, 100*c.ratio, p99)
		}
	}
	fmt.Fprintf(&b, `<text x="10" y="%d">green: no failure, at least 80%% of the healthy req/s, p99 under 100 ms; amber: no failure; red: failures. p99 of the requests begun from 1 s into the fault.</text>`+"\n", top+len(faults)*ch+25)
	b.WriteString("</svg>\n")
	return b.String()
}

// hedgeOverhead compares service_proxy with and without hedged tries under
// the healthy load (fault none), repetition by repetition: the two ran
// back to back in the same run.
func hedgeOverhead(runs []ChaosRun) string {
	on, off := map[int]ChaosRun{}, map[int]ChaosRun{}
	for _, x := range runs {
		switch {
		case x.Fault != "none":
		case x.Proxy == serviceProxy.Name:
			on[x.Rep] = x
		case x.Proxy == serviceProxyNoHedge.Name:
			off[x.Rep] = x
		}
	}
	var rps, cpu []float64
	for rep := range len(runs) {
		a, ok := on[rep]
		if !ok {
			continue
		}
		if b, ok := off[rep]; ok && b.RPS > 0 && b.CPUus > 0 {
			rps, cpu = append(rps, a.RPS/b.RPS), append(cpu, a.CPUus/b.CPUus)
		}
	}
	if len(rps) == 0 {
		return ""
	}
	return fmt.Sprintf("Hedging on over off with no fault (same run, each repetition): req/s %s, median **%.3f**; proxy CPU per request %s, median **%.3f**.\n\n",
		ratios(rps), median(rps), ratios(cpu), median(cpu))
}

// ratios lists ratios with three decimals.
func ratios(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.3f", x))
	}
	return strings.Join(parts, ", ")
}

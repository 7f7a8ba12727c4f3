package main

import (
	"fmt"
	"strings"
)

// report renders the results as Markdown tables of medians.
func report(r *Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Run started %s on %s.\n\n", r.Started.Format("2006-01-02 15:04 MST"), r.Machine)
	for name, why := range r.Skipped {
		fmt.Fprintf(&b, "- %s skipped: %s\n", name, why)
	}

	if len(r.Throughput) > 0 {
		b.WriteString("\n### Throughput\n\n")
		fmt.Fprintf(&b, "%d keep-alive connections, %v per run after %v of warm-up, three backends; medians of the runs.\n\n", conns, throughputTime, warmupTime)
		b.WriteString("| configuration | runs | requests/s | p50 ms | p99 ms | proxy CPU µs/request | allocations/request | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		byProxy, order := groupThroughput(r.Throughput)
		for _, name := range order {
			runs := byProxy[name]
			var rps, p50, p99, cpu, allocs []float64
			failed := 0
			for _, x := range runs {
				rps, p50, p99, cpu = append(rps, x.RPS), append(p50, x.P50ms), append(p99, x.P99ms), append(cpu, x.CPUus)
				allocs = append(allocs, x.Allocs)
				failed += x.Failed
			}
			cpuText, allocText := fmt.Sprintf("%.1f", median(cpu)), fmt.Sprintf("%.1f", median(allocs))
			if name == "direct" {
				cpuText = "-"
			}
			if median(allocs) == 0 {
				allocText = "-"
			}
			fmt.Fprintf(&b, "| %s | %d | %.0f | %.2f | %.2f | %s | %s | %d |\n", name, len(runs), median(rps), median(p50), median(p99), cpuText, allocText, failed)
		}
		var ratios, cpuRatios, allocDiffs []float64
		for rep := 0; ; rep++ {
			var plain, svc *ThroughputRun
			for i, x := range r.Throughput {
				if x.Rep == rep && x.Proxy == "caddy_round_robin" {
					plain = &r.Throughput[i]
				}
				if x.Rep == rep && x.Proxy == "service_proxy" {
					svc = &r.Throughput[i]
				}
			}
			if plain == nil || svc == nil {
				break
			}
			ratios = append(ratios, svc.RPS/plain.RPS)
			cpuRatios = append(cpuRatios, svc.CPUus/plain.CPUus)
			allocDiffs = append(allocDiffs, svc.Allocs-plain.Allocs)
		}
		if len(ratios) > 0 {
			format := func(xs []float64) string {
				var parts []string
				for _, x := range xs {
					parts = append(parts, fmt.Sprintf("%.3f", x))
				}
				return strings.Join(parts, ", ")
			}
			fmt.Fprintf(&b, "\n`service_proxy` / Caddy `reverse_proxy` round_robin, run back to back in each repetition (alternating which goes first):\n\n")
			fmt.Fprintf(&b, "- requests/s: %s; median **%.3f**\n", format(ratios), median(ratios))
			fmt.Fprintf(&b, "- proxy CPU per request: %s; median **%.3f**\n", format(cpuRatios), median(cpuRatios))
			fmt.Fprintf(&b, "- allocations per request, `service_proxy` minus plain: median **%+.1f**\n", median(allocDiffs))
		}
		b.WriteString("\nConfigurations:\n\n")
		seen := map[string]bool{}
		for _, x := range r.Throughput {
			if !seen[x.Proxy] {
				seen[x.Proxy] = true
				fmt.Fprintf(&b, "- `%s`: %s\n", x.Proxy, strings.ReplaceAll(x.Desc, "{b}", "b1 b2 b3"))
			}
		}
	}

	if len(r.Failover) > 0 {
		b.WriteString("\n### Failover\n\n")
		fmt.Fprintf(&b, "Three backends, %d keep-alive connections for %v; the second backend is stopped at %v and started again at %v. Medians of the runs; `failed` also shows the worst run.\n\n", conns, failoverTime, killAt, restartAt)
		for _, sig := range []string{"SIGKILL", "SIGTERM"} {
			fmt.Fprintf(&b, "#### Stopped with %s\n\n", sig)
			b.WriteString("| configuration | runs | requests | failed (worst) | max latency ms | restarted backend back after ms | its share after the restart |\n|---|---:|---:|---:|---:|---:|---:|\n")
			byProxy := map[string][]FailoverRun{}
			var order []string
			for _, x := range r.Failover {
				if x.Signal != sig {
					continue
				}
				if byProxy[x.Proxy] == nil {
					order = append(order, x.Proxy)
				}
				byProxy[x.Proxy] = append(byProxy[x.Proxy], x)
			}
			for _, name := range order {
				runs := byProxy[name]
				var total, failed, maxMs, back, share []float64
				worst := 0
				for _, x := range runs {
					total, failed, maxMs = append(total, float64(x.Total)), append(failed, float64(x.Failed)), append(maxMs, x.MaxMs)
					back, share = append(back, x.BackAfterMs), append(share, x.RestartedShare)
					worst = max(worst, x.Failed)
				}
				backText := fmt.Sprintf("%.0f", median(back))
				if median(back) < 0 {
					backText = "never"
				}
				fmt.Fprintf(&b, "| %s | %d | %.0f | %.0f (%d) | %.1f | %s | %.1f%% |\n", name, len(runs), median(total), median(failed), worst, median(maxMs), backText, 100*median(share))
			}
			b.WriteString("\n")
		}
		b.WriteString("Configurations:\n\n")
		seen := map[string]bool{}
		for _, x := range r.Failover {
			if !seen[x.Proxy] {
				seen[x.Proxy] = true
				fmt.Fprintf(&b, "- `%s`: %s\n", x.Proxy, strings.ReplaceAll(x.Desc, "{b}", "b1 b2 b3"))
			}
		}
		b.WriteString("\nWhat the failed requests got (all runs):\n\n")
		for _, x := range r.Failover {
			if x.Failed == 0 {
				continue
			}
			fmt.Fprintf(&b, "- %s, %s, run %d: %s\n", x.Proxy, x.Signal, x.Rep+1, x.failures())
		}
	}

	if len(r.Chaos) > 0 {
		b.WriteString(chaosReport(r.Chaos))
	}

	if len(r.Stores) > 0 {
		b.WriteString(storesReport(r.Stores))
	}

	if s := r.Scale; s != nil {
		b.WriteString("\n### Registry scale\n\n")
		fmt.Fprintf(&b, "%d services × %d endpoints.\n\n```\n%s\n```\n\n", s.Services, s.Endpoints, strings.Join(s.GoBench, "\n"))
		fmt.Fprintf(&b, "| measure | value |\n|---|---:|\n")
		fmt.Fprintf(&b, "| Caddy resident memory, memory backend holding the registry | %.0f MB |\n", s.CaddyRSSMB)
		fmt.Fprintf(&b, "| the same Caddy with a one-service registry | %.0f MB |\n", s.BaselineRSSMB)
		fmt.Fprintf(&b, "| admin API adds per second (memory backend, 8 clients) | %.0f |\n", s.AddsPerSec)
		if s.EtcdSkipped != "" {
			fmt.Fprintf(&b, "| etcd | skipped: %s |\n", s.EtcdSkipped)
		} else {
			fmt.Fprintf(&b, "| admin API adds per second (etcd backend, 8 clients) | %.0f |\n", s.EtcdAddsPerSec)
			fmt.Fprintf(&b, "| etcd put → first request routed, p50 | %.2f ms |\n", s.EtcdPropP50ms)
			fmt.Fprintf(&b, "| etcd put → first request routed, p99 | %.2f ms |\n", s.EtcdPropP99ms)
		}
	}
	return b.String()
}

func groupThroughput(runs []ThroughputRun) (map[string][]ThroughputRun, []string) {
	by := map[string][]ThroughputRun{}
	var order []string
	for _, x := range runs {
		if by[x.Proxy] == nil {
			order = append(order, x.Proxy)
		}
		by[x.Proxy] = append(by[x.Proxy], x)
	}
	return by, order
}

// failoverSVG draws, for the first SIGKILL run of each configuration, the
// requests answered (grey) and failed (red) per 100 ms.
func failoverSVG(runs []FailoverRun) string {
	var rows []FailoverRun
	seen := map[string]bool{}
	for _, x := range runs {
		if x.Signal == "SIGKILL" && !seen[x.Proxy] {
			seen[x.Proxy] = true
			rows = append(rows, x)
		}
	}
	const (
		left, top, rowH, gap, barW = 190, 40, 70, 18, 6
	)
	buckets := 0
	peak := 1
	for _, x := range rows {
		buckets = max(buckets, len(x.Timeline))
		for _, bk := range x.Timeline {
			peak = max(peak, bk.OK+bk.Failed)
		}
	}
	width := left + buckets*barW + 20
	height := top + len(rows)*(rowH+gap) + 40
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14">Requests per 100 ms: answered (grey) and failed (red); backend 2 SIGKILLed at %v, restarted at %v</text>`+"\n", 10, killAt, restartAt)
	for i, x := range rows {
		y0 := top + i*(rowH+gap)
		base := y0 + rowH
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y0+rowH/2, x.Proxy)
		fmt.Fprintf(&b, `<text x="10" y="%d" fill="#b00">%d failed</text>`+"\n", y0+rowH/2+16, x.Failed)
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>`+"\n", left, base, left+buckets*barW, base)
		for k, bk := range x.Timeline {
			x0 := left + k*barW
			hOK := bk.OK * rowH / peak
			hF := bk.Failed * rowH / peak
			if bk.Failed > 0 && hF == 0 {
				hF = 2 // show every failure
			}
			if hOK > 0 {
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="#bbb"/>`+"\n", x0, base-hOK, barW-1, hOK)
			}
			if hF > 0 {
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="#d22"/>`+"\n", x0, base-hOK-hF, barW-1, hF)
			}
		}
		for _, mark := range []struct {
			at    float64
			label string
		}{{killAt.Seconds(), "kill"}, {restartAt.Seconds(), "restart"}} {
			mx := left + int(mark.at*10)*barW
			fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#36c" stroke-dasharray="3,3"/>`+"\n", mx, y0, mx, base)
		}
	}
	ax := top + len(rows)*(rowH+gap) + 10
	for s := 0; s*10 <= buckets; s++ {
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%ds</text>`+"\n", left+s*10*barW, ax, s)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

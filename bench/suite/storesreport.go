package main

import (
	"fmt"
	"slices"
	"strings"
)

// outageFaults are the faults during which Caddy cannot reach the store,
// which each instance should log.
var outageFaults = []string{"kill", "freeze", "wipe", "restore", "cut"}

// aboutStore reports whether a line is the registry's about its backend
// (the store), not about the hosts' health.
func aboutStore(l LogLine) bool {
	return strings.HasPrefix(l.Logger, "service_registry") && (strings.Contains(l.Fields, `"backend":`) || strings.Contains(l.Msg, "backend"))
}

// registryWarnings counts an instance's warnings and errors about the
// store.
func registryWarnings(lines []LogLine) int {
	n := 0
	for _, l := range lines {
		if aboutStore(l) && (l.Level == "warn" || l.Level == "error") {
			n++
		}
	}
	return n
}

// storeMisses lists the targets a cell missed: failed requests for a
// service the store held, answers from hosts it no longer listed once
// the instance routed what the store holds, an
// instance not routing what it holds within the target, a write answered
// untruthfully or applied twice, and a fault not logged once (1 or 2
// registry warnings per instance for a fault that cuts Caddy off from the
// store, the second for a store gone back in time; none otherwise).
func storeMisses(r StoreRun) []string {
	var miss []string
	if r.FailedHeld > 0 {
		miss = append(miss, "failures")
	}
	if r.StaleLate > 0 {
		miss = append(miss, "stale hosts")
	}
	for _, c := range r.ConvergeMs {
		if c < 0 || c > r.TargetMs {
			miss = append(miss, "routing")
			break
		}
	}
	if strings.HasPrefix(r.WritesCheck, "wrong") {
		miss = append(miss, "writes")
	}
	for _, lines := range r.Logs {
		n := registryWarnings(lines)
		if slices.Contains(outageFaults, r.Fault) && (n < 1 || n > 2) || !slices.Contains(outageFaults, r.Fault) && n > 0 {
			miss = append(miss, "log")
			break
		}
	}
	return miss
}

// storesReport renders the fault matrix: a table per store, then what
// each cell's failures, stale answers and logs were.
func storesReport(runs []StoreRun) string {
	var b strings.Builder
	b.WriteString("\n### Control-plane faults\n\n")
	fmt.Fprintf(&b, "Each cell: a fresh store, hosts b1-b3 registered as users do (etcd and ZooKeeper: the selfreg program, %v lease or session; "+
		"Consul: the agent's API with an HTTP check every second), two Caddy instances with `service_proxy` reading the store, "+
		"%d keep-alive connections of GETs through each. The fault begins at %v; during it b3's registration ends (a clean stop; b3 keeps answering), "+
		"and 300 ms into it instance A's admin API gets `POST` of b4, then 1 s after the answer `DELETE` of b4. "+
		"The store and both admin APIs are polled every 100 ms (250 ms with 1,000 services).\n\n", hostTTL, storesConns, storesHealthy)
	b.WriteString("- `failed (held)`: failed requests of both instances, and of those the ones that completed while the store held the service.\n" +
		"- `stale`: answers, from the fault's end on, from a host the store did not list: not in its last read that ended 200 ms or more before the answer's 100 ms, nor in any read up to the first that began after them.\n" +
		"- `routes what the store holds`: from the fault's end until instance A / B's admin API lists exactly what the store holds, for good; the target in brackets.\n" +
		"- `log A / B`: the warnings and errors about the store (not the hosts' health) each instance logged from the fault's start to the load's end.\n" +
		"- `missed`: the targets the cell missed: `failures` (held), `stale hosts` (an answer from a host the store no longer listed after the instance had come to route what the store holds; those before are the recovery grace's), `routing` (target), `writes` (an answer the store's reads contradict: a 503 applied, a 2xx not, the endpoint there after a DELETE's 200 or 404; or a write applied twice), " +
		"`log` (a fault that cut Caddy off from the store not logged by 1 or 2 warnings per instance, or warnings without such a fault).\n\n")
	var stores []string
	for _, r := range runs {
		if !slices.Contains(stores, r.Store) {
			stores = append(stores, r.Store)
		}
	}
	for _, s := range stores {
		fmt.Fprintf(&b, "#### %s\n\n", s)
		b.WriteString("| fault | requests | failed (held) | stale | routes what the store holds, A / B (target) | admin writes | writes check | log A / B | missed |\n|---|---:|---:|---:|---|---|---|---|---|\n")
		for _, r := range runs {
			if r.Store != s {
				continue
			}
			if r.Skipped != "" {
				fmt.Fprintf(&b, "| %s | skipped: %s | | | | | | | |\n", r.Fault, r.Skipped)
				continue
			}
			missed := strings.Join(storeMisses(r), ", ")
			if missed == "" {
				missed = "none"
			}
			fmt.Fprintf(&b, "| %s | %d | %d (%d) | %d | %s / %s (%s) | %s | %s | %d / %d | %s |\n",
				r.Fault, r.Total, r.Failed, r.FailedHeld, r.Stale, secondsText(r.ConvergeMs[0]), secondsText(r.ConvergeMs[1]), secondsText(r.TargetMs),
				writesText(r.Writes), r.WritesCheck, registryWarnings(r.Logs[0]), registryWarnings(r.Logs[1]), missed)
		}
		b.WriteString("\n")
		for _, r := range runs {
			if r.Store != s || r.Skipped != "" {
				continue
			}
			fmt.Fprintf(&b, "- **%s** (%s): fault %.1f-%.1f s, b3 left at %.1f s", r.Fault, storeFaultDesc(r.Fault), r.FaultStartMs/1000, r.FaultEndMs/1000, r.LeftAtMs/1000)
			if r.Failed > 0 {
				fmt.Fprintf(&b, "; failed: %s", r.failures())
			}
			if r.Stale > 0 {
				fmt.Fprintf(&b, "; stale answers by host: %v", r.StaleByHost)
			}
			if r.Reregistered != "" {
				fmt.Fprintf(&b, "; hosts registered again %s", r.Reregistered)
			}
			fmt.Fprintf(&b, "; connections to the store after the fault, at most: A %d, B %d", r.StoreConns[0], r.StoreConns[1])
			if d := endDiff(r); d != "" {
				fmt.Fprintf(&b, "; at the end %s", d)
			}
			for _, n := range r.Notes {
				fmt.Fprintf(&b, "; %s", n)
			}
			b.WriteString("\n")
			for i, lines := range r.Logs {
				var store, other []LogLine
				for _, l := range lines {
					if aboutStore(l) {
						store = append(store, l)
					} else {
						other = append(other, l)
					}
				}
				for _, m := range logSummary(store) {
					fmt.Fprintf(&b, "  - %c logged %s\n", 'A'+i, m)
				}
				if len(other) > 0 {
					fmt.Fprintf(&b, "  - %c also logged: %s\n", 'A'+i, strings.Join(logSummary(other), "; "))
				}
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// endDiff says what each instance that did not end listing what the store
// holds listed at the last read the store answered, hosts by name: such
// as "A lists +bench/v1/b3 (not in the store) -bench/v1/b5 (in the store)".
func endDiff(r StoreRun) string {
	var last *StoreSample
	for i := range r.Samples {
		if r.Samples[i].Store >= 0 {
			last = &r.Samples[i]
		}
	}
	if last == nil {
		return ""
	}
	var parts []string
	for i, d := range last.Diff {
		if r.ConvergeMs[i] >= 0 || d == "" {
			continue
		}
		for name, addr := range r.Hosts {
			d = strings.ReplaceAll(d, "/"+addr, "/"+name)
		}
		parts = append(parts, fmt.Sprintf("%c lists %s", 'A'+i, d))
	}
	if len(parts) == 0 {
		return ""
	}
	return strings.Join(parts, ", ") + " (+: not in the store, -: missing)"
}

func storeFaultDesc(name string) string {
	for _, f := range storeFaults {
		if f.Name == name {
			return f.Desc
		}
	}
	return name
}

// logSummary is each distinct message with its level, logger and count,
// in order of first appearance.
func logSummary(lines []LogLine) []string {
	var order []string
	count := map[string]int{}
	for _, l := range lines {
		k := fmt.Sprintf("%s %s: %q", l.Level, l.Logger, l.Msg)
		if l.Level == "" {
			k = l.Msg // the count of lines left out
		}
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	for i, k := range order {
		order[i] = fmt.Sprintf("%s ×%d", k, count[k])
	}
	return order
}

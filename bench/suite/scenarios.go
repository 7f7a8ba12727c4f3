package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/bench/loadgen"
)

// Shape of the runs.
const (
	conns          = 32
	throughputTime = 5 * time.Second
	warmupTime     = time.Second
	failoverTime   = 10 * time.Second
	killAt         = 3 * time.Second
	restartAt      = 7 * time.Second
)

// ThroughputRun is one measurement of one configuration.
type ThroughputRun struct {
	Proxy  string  `json:"proxy"`
	Desc   string  `json:"desc"`
	Rep    int     `json:"rep"`
	Total  int     `json:"total"`
	Failed int     `json:"failed"`
	RPS    float64 `json:"rps"`
	P50ms  float64 `json:"p50_ms"`
	P99ms  float64 `json:"p99_ms"`
	// CPUus is the proxy's CPU time (user + system) per request.
	CPUus float64 `json:"cpu_us_per_request"`
	// Allocs is the heap allocations per request of a Caddy proxy (from
	// the Go runtime's count, read through Caddy's /debug/vars); 0 for
	// the others.
	Allocs float64 `json:"allocs_per_request,omitempty"`
}

// runThroughput compares the proxies on the same three backends,
// interleaved, several times.
func runThroughput(e *env) ([]ThroughputRun, error) {
	backends, err := startBackends(e, 3, 0)
	if err != nil {
		return nil, err
	}
	defer backends.stopAll()
	var configs []proxy
	var running []*runningProxy
	for _, px := range []proxy{direct, caddyPlain, serviceProxy, nginxProxy, haproxyProxy} {
		r, err := px.start(e, backends.addrs)
		if err != nil {
			return nil, err
		}
		if r == nil {
			continue // not installed
		}
		defer r.stop()
		configs = append(configs, px)
		running = append(running, r)
	}
	// Each repetition runs plain reverse_proxy and service_proxy back to
	// back, in alternating order (ABBA), then the others in a rotating
	// order, so that the ratio of the pair is measured under the same
	// conditions.
	var runs []ThroughputRun
	for rep := range e.reps {
		var order []int
		var others []int
		for i, px := range configs {
			if px.Name != caddyPlain.Name && px.Name != serviceProxy.Name {
				others = append(others, i)
			}
		}
		pair := []int{slices.IndexFunc(configs, func(p proxy) bool { return p.Name == caddyPlain.Name }),
			slices.IndexFunc(configs, func(p proxy) bool { return p.Name == serviceProxy.Name })}
		if rep%2 == 1 {
			pair[0], pair[1] = pair[1], pair[0]
		}
		order = append(order, pair...)
		for k := range others {
			order = append(order, others[(k+rep)%len(others)])
		}
		for _, i := range order {
			px, r := configs[i], running[i]
			if _, err := loadgen.Run(context.Background(), loadgen.Config{Addr: r.addr, Path: r.path, Conns: conns, Duration: warmupTime}); err != nil {
				return nil, err
			}
			var cpu0 float64
			var mallocs0 uint64
			if r.proc != nil {
				cpu0 = r.proc.cpuSeconds()
			}
			if r.admin != "" {
				if mallocs0, err = caddyMallocs(r.admin); err != nil {
					return nil, err
				}
			}
			res, err := loadgen.Run(context.Background(), loadgen.Config{Addr: r.addr, Path: r.path, Conns: conns, Duration: throughputTime})
			if err != nil {
				return nil, err
			}
			run := ThroughputRun{Proxy: px.Name, Desc: px.Desc, Rep: rep, Total: res.Total, Failed: res.Failed, RPS: res.RPS, P50ms: res.P50ms, P99ms: res.P99ms}
			if r.proc != nil && res.Total > 0 {
				run.CPUus = (r.proc.cpuSeconds() - cpu0) / float64(res.Total) * 1e6
			}
			if r.admin != "" && res.Total > 0 {
				mallocs1, err := caddyMallocs(r.admin)
				if err != nil {
					return nil, err
				}
				run.Allocs = float64(mallocs1-mallocs0) / float64(res.Total)
			}
			log.Printf("throughput %-20s rep %d: %8.0f req/s p50 %.2f ms p99 %.2f ms cpu %.1f µs/req allocs %.1f/req failed %d",
				px.Name, rep, run.RPS, run.P50ms, run.P99ms, run.CPUus, run.Allocs, run.Failed)
			runs = append(runs, run)
		}
	}
	return runs, nil
}

// caddyMallocs returns how many heap objects the Caddy with the given
// admin address has allocated since it started.
func caddyMallocs(admin string) (uint64, error) {
	resp, err := http.Get("http://" + admin + "/debug/vars")
	if err != nil {
		return 0, fmt.Errorf("reading allocations: %w", err)
	}
	defer resp.Body.Close()
	var vars struct {
		Memstats struct {
			Mallocs uint64
		} `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		return 0, fmt.Errorf("reading allocations: %w", err)
	}
	return vars.Memstats.Mallocs, nil
}

// Outcome is what the requests of a load run got.
type Outcome struct {
	Total    int            `json:"total"`
	Failed   int            `json:"failed"`
	Statuses map[int]int    `json:"statuses"` // every response by status
	Errors   map[string]int `json:"errors"`   // requests without a response, by kind
}

// outcomeOf takes a load run's outcome.
func outcomeOf(res *loadgen.Result) Outcome {
	return Outcome{Total: res.Total, Failed: res.Failed, Statuses: res.Statuses, Errors: res.Errors}
}

// failures lists what the failed requests got, such as "HTTP 502 ×3,
// read: connection closed ×2".
func (o Outcome) failures() string {
	var kinds []string
	for k, n := range o.Errors {
		kinds = append(kinds, fmt.Sprintf("%s ×%d", k, n))
	}
	for code, n := range o.Statuses {
		if code >= 300 {
			kinds = append(kinds, fmt.Sprintf("HTTP %d ×%d", code, n))
		}
	}
	sort.Strings(kinds)
	return strings.Join(kinds, ", ")
}

// FailoverRun is one failover run of one configuration.
type FailoverRun struct {
	Proxy  string `json:"proxy"`
	Desc   string `json:"desc"`
	Signal string `json:"signal"`
	Rep    int    `json:"rep"`
	Outcome
	P99ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// BackAfterMs bounds the time from the restart to the restarted
	// backend's first answered request (100 ms buckets); -1: never.
	BackAfterMs float64 `json:"back_after_ms"`
	// RestartedShare is the restarted backend's share of the answered
	// requests from its restart to the end.
	RestartedShare float64          `json:"restarted_share"`
	RestartedAtMs  float64          `json:"restarted_at_ms"`
	Timeline       []loadgen.Bucket `json:"timeline"`
}

// failoverConfigs are compared in the failover scenario.
var failoverConfigs = []proxy{serviceProxy, caddyDefault, caddyRetries, caddyTryDuration, caddyPassive, nginxProxy, haproxyProxy}

// runFailover kills the second of three backends under load and starts it
// again, for each configuration and stop signal.
func runFailover(e *env) ([]FailoverRun, error) {
	var runs []FailoverRun
	for rep := range e.reps {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			for _, px := range failoverConfigs {
				run, err := failoverOnce(e, px, sig, rep)
				if err != nil {
					return nil, err
				}
				if run == nil {
					continue
				}
				log.Printf("failover %-26s %-7s rep %d: %6d requests, %4d failed, max %7.1f ms, back after %5.0f ms, share after %4.1f%%",
					px.Name, run.Signal, rep, run.Total, run.Failed, run.MaxMs, run.BackAfterMs, 100*run.RestartedShare)
				runs = append(runs, *run)
			}
		}
	}
	return runs, nil
}

func failoverOnce(e *env, px proxy, sig syscall.Signal, rep int) (*FailoverRun, error) {
	backends, err := startBackends(e, 3, 0)
	if err != nil {
		return nil, err
	}
	defer backends.stopAll()
	r, err := px.start(e, backends.addrs)
	if err != nil || r == nil {
		return nil, err
	}
	defer r.stop()
	// warm the proxy's connections to every backend
	if _, err := loadgen.Run(context.Background(), loadgen.Config{Addr: r.addr, Path: r.path, Conns: conns, Duration: 500 * time.Millisecond}); err != nil {
		return nil, err
	}

	start := time.Now()
	var restartedAt time.Duration
	var faultErr error
	faults := make(chan struct{})
	go func() {
		defer close(faults)
		time.Sleep(time.Until(start.Add(killAt)))
		backends.procs[1].stop(sig)
		time.Sleep(time.Until(start.Add(restartAt)))
		faultErr = backends.startOne(1)
		restartedAt = time.Since(start)
	}()
	res, err := loadgen.Run(context.Background(), loadgen.Config{Addr: r.addr, Path: r.path, Conns: conns, Duration: failoverTime})
	<-faults
	if err != nil {
		return nil, err
	}
	if faultErr != nil {
		return nil, faultErr
	}

	run := &FailoverRun{Proxy: px.Name, Desc: px.Desc, Signal: strings.TrimPrefix(sig.String(), "signal "), Rep: rep,
		Outcome: outcomeOf(res),
		P99ms:   res.P99ms, MaxMs: res.MaxMs, BackAfterMs: -1, RestartedAtMs: float64(restartedAt.Milliseconds()), Timeline: res.Timeline}
	switch sig {
	case syscall.SIGKILL:
		run.Signal = "SIGKILL"
	case syscall.SIGTERM:
		run.Signal = "SIGTERM"
	}
	from := int(restartedAt / (100 * time.Millisecond))
	var b2, all int
	for k := from; k < len(res.Timeline); k++ {
		n := res.Timeline[k].Backends["b2"]
		if n > 0 && run.BackAfterMs < 0 {
			run.BackAfterMs = float64((k+1)*100) - run.RestartedAtMs
		}
		b2 += n
		all += res.Timeline[k].OK
	}
	if all > 0 {
		run.RestartedShare = float64(b2) / float64(all)
	}
	return run, nil
}

// ScaleResult is the registry-scale scenario: 10,000 services of 5
// endpoints each.
type ScaleResult struct {
	Services  int `json:"services"`
	Endpoints int `json:"endpoints_per_service"`
	// GoBench are the output lines of the Go benchmarks at this scale.
	GoBench []string `json:"go_bench"`
	// CaddyRSSMB is Caddy's resident memory holding the registry (memory
	// backend), and BaselineRSSMB the same Caddy with an empty registry.
	CaddyRSSMB    float64 `json:"caddy_rss_mb"`
	BaselineRSSMB float64 `json:"baseline_rss_mb"`
	// AddsPerSec is admin-API adds per second on top of the full registry.
	AddsPerSec     float64 `json:"admin_adds_per_sec_memory"`
	EtcdAddsPerSec float64 `json:"admin_adds_per_sec_etcd,omitempty"`
	// Propagation from a put to etcd to the first request Caddy routes
	// with it, over a full registry.
	EtcdPropP50ms float64 `json:"etcd_propagation_p50_ms,omitempty"`
	EtcdPropP99ms float64 `json:"etcd_propagation_p99_ms,omitempty"`
	EtcdSkipped   string  `json:"etcd_skipped,omitempty"`
}

const (
	scaleServices  = 10000
	scaleEndpoints = 5
)

func runScale(e *env) (*ScaleResult, error) {
	res := &ScaleResult{Services: scaleServices, Endpoints: scaleEndpoints}

	log.Printf("scale: go benchmarks")
	out, err := exec.Command("go", "test", "-run", "^$", "-bench", "BenchmarkRegistryScale", "-benchmem", "-count", "3", ".").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go benchmarks: %w\n%s", err, out)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(line, "Benchmark") {
			res.GoBench = append(res.GoBench, strings.Join(strings.Fields(line), " "))
		}
	}

	backends, err := startBackends(e, 1, 0)
	if err != nil {
		return nil, err
	}
	defer backends.stopAll()
	b := backends.addrs[0]

	// Memory backend: Caddy seeded with the whole registry.
	var seeds strings.Builder
	seeds.WriteString("service_registry {\n")
	for i := range scaleServices {
		fmt.Fprintf(&seeds, "\t\tservice s%d v1", i)
		for j := range scaleEndpoints {
			fmt.Fprintf(&seeds, " 10.%d.%d.%d:80", i/256%256, i%256, j+1)
		}
		seeds.WriteString("\n")
	}
	seeds.WriteString("\t}")
	empty, err := startCaddy(e, "scale-empty", "service_registry {\n\t\tservice bench v1 "+b+"\n\t}", "service_proxy")
	if err != nil {
		return nil, err
	}
	res.BaselineRSSMB = rssMB(empty.proc)
	empty.proc.stop(syscall.SIGTERM)

	full, err := startCaddy(e, "scale-memory", seeds.String(), "service_proxy")
	if err != nil {
		return nil, err
	}
	defer full.proc.stop(syscall.SIGTERM)
	res.CaddyRSSMB = rssMB(full.proc)
	res.AddsPerSec, err = adminAdds(full.admin, "mem", 2000)
	if err != nil {
		return nil, err
	}
	log.Printf("scale: memory backend: rss %.0f MB (empty %.0f MB), %.0f adds/s", res.CaddyRSSMB, res.BaselineRSSMB, res.AddsPerSec)

	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		res.EtcdSkipped = "no etcd binary on PATH"
		return res, nil
	}
	etcd, endpoint, err := startEtcd(e, etcdBin)
	if err != nil {
		return nil, err
	}
	defer etcd.stop(syscall.SIGTERM)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	log.Printf("scale: loading %d keys into etcd", scaleServices*scaleEndpoints)
	var ops []clientv3.Op
	for i := range scaleServices {
		for j := range scaleEndpoints {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/svcreg/s%d/v1/10.%d.%d.%d:80", i, i/256%256, i%256, j+1), "{}"))
			if len(ops) == 100 {
				if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
					return nil, err
				}
				ops = ops[:0]
			}
		}
	}
	ec, err := startCaddy(e, "scale-etcd", fmt.Sprintf("service_registry {\n\t\tbackend etcd {\n\t\t\tendpoints %s\n\t\t}\n\t}", endpoint), "service_proxy")
	if err != nil {
		return nil, err
	}
	defer ec.proc.stop(syscall.SIGTERM)
	if err := waitSynced(ec.admin, scaleServices, 60*time.Second); err != nil {
		return nil, err
	}
	var lat []float64
	client := &http.Client{}
	for i := range 200 {
		key := fmt.Sprintf("/svcreg/prop%d/v1/%s", i, b)
		url := fmt.Sprintf("http://%s/prop%d/v1/x", ec.addr, i)
		t0 := time.Now()
		if _, err := cli.Put(context.Background(), key, "{}"); err != nil {
			return nil, err
		}
		for {
			resp, err := client.Get(url)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Since(t0) > 10*time.Second {
				return nil, fmt.Errorf("a put was not routed within 10s")
			}
		}
		lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
	}
	slices.Sort(lat)
	res.EtcdPropP50ms, res.EtcdPropP99ms = lat[len(lat)/2], lat[len(lat)*99/100]
	res.EtcdAddsPerSec, err = adminAdds(ec.admin, "etcd", 1000)
	if err != nil {
		return nil, err
	}
	log.Printf("scale: etcd: propagation p50 %.2f ms p99 %.2f ms, %.0f adds/s", res.EtcdPropP50ms, res.EtcdPropP99ms, res.EtcdAddsPerSec)
	return res, nil
}

// adminAdds adds n endpoints through the admin API from 8 clients and
// returns adds per second.
func adminAdds(admin, prefix string, n int) (float64, error) {
	var next atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1))
				if i > n {
					return
				}
				body := fmt.Sprintf(`{"address":"10.200.%d.%d:80"}`, i/256, i%256)
				resp, err := http.Post(fmt.Sprintf("http://%s/service_registry/services/%s%d/v1", admin, prefix, i%500), "application/json", strings.NewReader(body))
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 201 && resp.StatusCode != 200 {
					firstErr.CompareAndSwap(nil, fmt.Errorf("add: %d %s", resp.StatusCode, b))
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// waitSynced waits until the admin API lists at least n service versions.
func waitSynced(admin string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + admin + "/service_registry/services")
		if err == nil {
			var list struct {
				Synced   bool              `json:"synced"`
				Services []json.RawMessage `json:"services"`
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if json.NewDecoder(bytes.NewReader(data)).Decode(&list) == nil && list.Synced && len(list.Services) >= n {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the registry did not list %d services within %v", n, timeout)
}

// startEtcd runs etcd on loopback with a temporary data directory.
func startEtcd(e *env, bin string) (*proc, string, error) {
	dir, err := os.MkdirTemp(e.tmp, "etcd-")
	if err != nil {
		return nil, "", err
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", freePort()), fmt.Sprintf("http://127.0.0.1:%d", freePort())
	p, err := start("etcd", dir, bin, "--name", "bench", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "bench="+peer,
		"--log-level", "warn", "--quota-backend-bytes", strconv.Itoa(4<<30))
	if err != nil {
		return nil, "", err
	}
	if err := waitHTTP(client+"/health", 30*time.Second); err != nil {
		p.stop(syscall.SIGKILL)
		return nil, "", err
	}
	return p, strings.TrimPrefix(client, "http://"), nil
}

// rssMB returns the resident memory of a process in MB.
func rssMB(p *proc) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

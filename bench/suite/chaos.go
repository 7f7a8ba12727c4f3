package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/svcreg/caddy-svcreg/bench/loadgen"
)

// Timeline of a chaos run: healthy, then the fault from faultAt to
// healAt, then healed.
const (
	chaosTime    = 10 * time.Second
	chaosFault   = 3 * time.Second
	chaosHeal    = 8 * time.Second
	chaosHealthy = time.Second // the healthy phase measured: [chaosHealthy, chaosFault)
	chaosGrace   = time.Second // p99 is taken from this long after the fault began
)

// ChaosRun is one run of one configuration through one fault.
type ChaosRun struct {
	Fault string `json:"fault"`
	Proxy string `json:"proxy"`
	Rep   int    `json:"rep"`
	// PostBody is the size of the POST bodies sent; 0: GETs.
	PostBody int `json:"post_body,omitempty"`
	// ReadBody says the backends read request bodies before answering.
	ReadBody bool `json:"read_body,omitempty"`
	Outcome
	// HealthyRPS and FaultRPS are answered requests per second in the
	// healthy phase and during the fault; Ratio is FaultRPS / HealthyRPS.
	HealthyRPS float64 `json:"healthy_rps"`
	FaultRPS   float64 `json:"fault_rps"`
	Ratio      float64 `json:"ratio"`
	// BegunAfter counts the requests that began from one second into the
	// fault to its end; P99AfterMs and FailedAfter are of those.
	BegunAfter  int     `json:"begun_after_first_second"`
	P99AfterMs  float64 `json:"p99_after_first_second_ms"`
	FailedAfter int     `json:"failed_after_first_second"`
	MaxMs       float64 `json:"max_ms"`
	P999Ms      float64 `json:"p99_9_ms"`
	// RPS is answered requests per second over the whole run.
	RPS float64 `json:"rps"`
	// CPUus is the proxy's CPU time (user + system) per request over the
	// whole run.
	CPUus float64 `json:"cpu_us_per_request"`
	// Tries is what service_proxy's admin API counted over the run (nil
	// for other proxies).
	Tries    *TryCounts       `json:"tries,omitempty"`
	Timeline []loadgen.Bucket `json:"timeline"`
}

// TryCounts are the tries beyond a request's first that service_proxy
// sent during a run, from its admin API.
type TryCounts struct {
	// Retries are tries after a failed one; Hedges are backup tries sent
	// while the first was still waiting; HedgesWon answered first.
	Retries   uint64 `json:"retries"`
	Hedges    uint64 `json:"hedges"`
	HedgesWon uint64 `json:"hedges_won"`
	// ExtraPer1000 is (Retries + Hedges) per 1,000 requests.
	ExtraPer1000 float64 `json:"extra_per_1000"`
}

// fault is something that goes wrong with the backends during a run.
type fault struct {
	Name, Desc string
	// inject starts the fault at chaosFault; heal ends it at chaosHeal
	// (nil: the fault ends on its own).
	inject, heal func(b *backendSet, h *holes) error
}

// holes are the listeners a fault puts where a backend was.
type holes struct {
	mu    sync.Mutex
	close []func()
}

func (h *holes) add(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.close = append(h.close, f)
}

func (h *holes) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range h.close {
		f()
	}
	h.close = nil
}

// signalBackend sends sig to backend i without waiting for it.
func signalBackend(i int, sig syscall.Signal) func(*backendSet, *holes) error {
	return func(b *backendSet, _ *holes) error { return b.procs[i].cmd.Process.Signal(sig) }
}

// replaceBackends stops backends (SIGKILL) and puts a hole made by mk on
// each one's address.
func replaceBackends(mk func(addr string) (func(), error), which ...int) func(*backendSet, *holes) error {
	return func(b *backendSet, h *holes) error {
		for _, i := range which {
			b.procs[i].stop(syscall.SIGKILL)
			closeHole, err := mk(b.addrs[i])
			if err != nil {
				return err
			}
			h.add(closeHole)
		}
		return nil
	}
}

// restoreBackends removes the holes and starts the backends again.
func restoreBackends(which ...int) func(*backendSet, *holes) error {
	return func(b *backendSet, h *holes) error {
		h.closeAll()
		for _, i := range which {
			if err := b.startOne(i); err != nil {
				return err
			}
		}
		return nil
	}
}

// rolling restarts every backend in turn, 1.5 s apart: with SIGTERM at
// once (a graceful deploy), with SIGKILL after 300 ms down (a crash loop).
func rolling(sig syscall.Signal) func(*backendSet, *holes) error {
	return func(b *backendSet, _ *holes) error {
		for i := range b.procs {
			if i > 0 {
				time.Sleep(1500 * time.Millisecond)
			}
			b.procs[i].stop(sig)
			if sig == syscall.SIGKILL {
				time.Sleep(300 * time.Millisecond)
			}
			if err := b.startOne(i); err != nil {
				return err
			}
		}
		return nil
	}
}

var chaosFaults = []fault{
	{Name: "none", Desc: "no fault: the healthy load, for the overhead of hedging"},
	{Name: "hang", Desc: "one of three hosts frozen (SIGSTOP) for 5 s",
		inject: signalBackend(1, syscall.SIGSTOP), heal: signalBackend(1, syscall.SIGCONT)},
	{Name: "black_hole", Desc: "one host replaced for 5 s by a listener that accepts and never reads",
		inject: replaceBackends(blackHole, 1), heal: restoreBackends(1)},
	{Name: "slow", Desc: "one host 1 s slower for 5 s",
		inject: signalBackend(1, syscall.SIGUSR2), heal: signalBackend(1, syscall.SIGUSR2)},
	{Name: "5xx", Desc: "one host answering 503 to everything for 5 s",
		inject: signalBackend(1, syscall.SIGUSR1), heal: signalBackend(1, syscall.SIGUSR1)},
	{Name: "unreachable_1", Desc: "one host unreachable for 5 s (connects time out: a full listen backlog)",
		inject: replaceBackends(fullBacklog, 1), heal: restoreBackends(1)},
	{Name: "unreachable_2", Desc: "two of three hosts unreachable for 5 s",
		inject: replaceBackends(fullBacklog, 1, 2), heal: restoreBackends(1, 2)},
	{Name: "rolling_sigterm", Desc: "every host restarted in turn, 1.5 s apart (SIGTERM, started again at once)",
		inject: rolling(syscall.SIGTERM)},
	{Name: "rolling_sigkill", Desc: "every host killed in turn, 1.5 s apart (SIGKILL, started again 300 ms later)",
		inject: rolling(syscall.SIGKILL)},
}

// chaosConfigs are compared in the chaos matrix.
var chaosConfigs = []proxy{serviceProxy, serviceProxyNoHedge, caddyRetries, caddyTimeouts, nginxProxy, haproxyProxy}

// chaosPostConfigs are compared in the chaos matrix with POSTs (-post):
// the same, and service_proxy over h2c, which tells which requests a host
// did not process.
var chaosPostConfigs = []proxy{serviceProxy, serviceProxyNoHedge, serviceProxyH2C, caddyRetries, caddyTimeouts, nginxProxy, haproxyProxy}

// runChaos runs every configuration (or those named in proxies) through
// every fault (or those named in only).
func runChaos(e *env, only, proxies string) ([]ChaosRun, error) {
	var runs []ChaosRun
	for rep := range e.reps {
		for _, f := range chaosFaults {
			if only != "" && !strings.Contains(","+only+",", ","+f.Name+",") {
				continue
			}
			configs := chaosConfigs
			if e.post > 0 {
				configs = chaosPostConfigs
			}
			for k := range configs {
				// a different order each repetition: the machine's
				// load drifts
				px := configs[(k+rep)%len(configs)]
				if proxies != "" && !strings.Contains(","+proxies+",", ","+px.Name+",") {
					continue
				}
				run, err := chaosOnce(e, px, f, rep)
				if err != nil {
					return nil, fmt.Errorf("%s, %s: %w", f.Name, px.Name, err)
				}
				if run == nil {
					continue
				}
				log.Printf("chaos %-16s %-26s rep %d: %6d requests, %5d failed (%d after 1 s), %5.0f%% of healthy req/s, p99 after 1 s %7.1f ms, p99.9 %7.1f ms, max %7.1f ms, cpu %.1f µs/req%s",
					f.Name, px.Name, rep, run.Total, run.Failed, run.FailedAfter, 100*run.Ratio, run.P99AfterMs, run.P999Ms, run.MaxMs, run.CPUus, run.Tries.text())
				runs = append(runs, *run)
			}
		}
	}
	return runs, nil
}

func chaosOnce(e *env, px proxy, f fault, rep int) (*ChaosRun, error) {
	backends, err := startBackends(e, 3, 0)
	if err != nil {
		return nil, err
	}
	defer backends.stopAll()
	h := new(holes)
	defer h.closeAll()
	r, err := px.start(e, backends.addrs)
	if err != nil || r == nil {
		return nil, err
	}
	defer r.stop()
	if _, err := loadgen.Run(context.Background(), loadgen.Config{Addr: r.addr, Path: r.path, Conns: conns, Duration: 500 * time.Millisecond, PostBody: e.post}); err != nil {
		return nil, err
	}

	var cpu0 float64
	if r.proc != nil {
		cpu0 = r.proc.cpuSeconds()
	}
	var tries0 *TryCounts
	if px.Name != serviceProxyH2C.Name && r.admin != "" {
		if tries0, err = tryCounts(r.admin); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	var faultErr error
	faults := make(chan struct{})
	go func() {
		defer close(faults)
		if f.inject == nil {
			return
		}
		time.Sleep(time.Until(start.Add(chaosFault)))
		if faultErr = f.inject(backends, h); faultErr != nil || f.heal == nil {
			return
		}
		time.Sleep(time.Until(start.Add(chaosHeal)))
		faultErr = f.heal(backends, h)
	}()
	res, err := loadgen.Run(context.Background(), loadgen.Config{Addr: r.addr, Path: r.path, Conns: conns, Duration: chaosTime, PostBody: e.post})
	<-faults
	// a frozen backend must be able to stop
	_ = backends.procs[1].cmd.Process.Signal(syscall.SIGCONT)
	if err != nil {
		return nil, err
	}
	if faultErr != nil {
		return nil, faultErr
	}
	bucket := 100 * time.Millisecond
	run := &ChaosRun{Fault: f.Name, Proxy: px.Name, Rep: rep, PostBody: e.post, ReadBody: e.read, Outcome: outcomeOf(res), MaxMs: res.MaxMs, Timeline: res.Timeline,
		P999Ms: res.P999ms, RPS: float64(res.OK) / res.Seconds,
		HealthyRPS: res.OKPerSecond(chaosHealthy, chaosFault, bucket),
		FaultRPS:   res.OKPerSecond(chaosFault, chaosHeal, bucket)}
	if run.HealthyRPS > 0 {
		run.Ratio = run.FaultRPS / run.HealthyRPS
	}
	run.BegunAfter, run.FailedAfter, run.P99AfterMs, _ = res.Window(chaosFault+chaosGrace, chaosHeal)
	if r.proc != nil && res.Total > 0 {
		run.CPUus = (r.proc.cpuSeconds() - cpu0) / float64(res.Total) * 1e6
	}
	if tries0 != nil && res.Total > 0 {
		t, err := tryCounts(r.admin)
		if err != nil {
			return nil, err
		}
		t.Retries, t.Hedges, t.HedgesWon = t.Retries-tries0.Retries, t.Hedges-tries0.Hedges, t.HedgesWon-tries0.HedgesWon
		t.ExtraPer1000 = float64(t.Retries+t.Hedges) * 1000 / float64(res.Total)
		run.Tries = t
	}
	return run, nil
}

// tryCounts reads the bench service's retries and hedges from Caddy's
// admin API (zero where the build does not count them).
func tryCounts(admin string) (*TryCounts, error) {
	resp, err := http.Get("http://" + admin + "/service_registry/services/bench/v1")
	if err != nil {
		return nil, fmt.Errorf("reading retries: %w", err)
	}
	defer resp.Body.Close()
	var t TryCounts
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil {
		return nil, fmt.Errorf("reading retries: %w", err)
	}
	return &t, nil
}

func (t *TryCounts) text() string {
	if t == nil {
		return ""
	}
	return fmt.Sprintf(", %d retries, %d hedges (%d won), %.1f extra tries per 1,000", t.Retries, t.Hedges, t.HedgesWon, t.ExtraPer1000)
}

// blackHole listens on addr, accepts connections and never reads from
// them, until closed.
func blackHole(addr string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("black hole on %s: %w", addr, err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	return func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}, nil
}

// fullBacklog listens on addr with a backlog of one connection, fills it,
// and never accepts: further connects get no answer to their SYN and time
// out, as with a host that is down behind a firewall.
func fullBacklog(addr string) (func(), error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var port int
	fmt.Sscan(portText, &port)
	ip := net.ParseIP(host).To4()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, err
	}
	closeFD := func() { syscall.Close(fd) }
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte(ip)}); err != nil {
		closeFD()
		return nil, fmt.Errorf("full backlog on %s: %w", addr, err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		closeFD()
		return nil, err
	}
	// A proxy's connect may take the one place first; then this one times
	// out, and the backlog is just as full.
	filler, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return closeFD, nil
	}
	return func() { filler.Close(); closeFD() }, nil
}

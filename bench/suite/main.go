// Command suite runs svcreg's benchmark scenarios on 127.0.0.1 and writes
// what it measured to an output directory: results.json (everything),
// report.md (the tables), failover.svg (the failover timeline chart) and
// chaos.svg (the chaos matrix).
//
//	go run ./bench/suite -out bench/results            # everything (about 15 min)
//	go run ./bench/suite -scenarios throughput -reps 5
//
// It builds Caddy with the plugin (./cmd/caddy) and the benchmark backend,
// starts every process itself on fresh loopback ports, bounds every run in
// time and stops every process by PID. nginx and HAProxy are compared when
// their binaries are installed.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// env is what every scenario needs.
type env struct {
	root    string // repository root
	tmp     string
	caddy   string // binary
	backend string // binary
	nginx   string // binary or ""
	haproxy string // binary or ""
	reps    int
	post    int    // the chaos scenario's POST body size; 0: GETs
	read    bool   // the backends read request bodies whole before answering
	pin     string // CPUs (taskset -c) the proxies run on; "": any
	selfreg string // binary, built by the stores scenario
}

// proxyCommand is the command line that runs a proxy binary with args,
// pinned to e.pin's CPUs when set (taskset execs it: the PID is the
// proxy's).
func (e *env) proxyCommand(bin string, args ...string) []string {
	cmd := append([]string{bin}, args...)
	if e.pin == "" {
		return cmd
	}
	return append([]string{"taskset", "-c", e.pin}, cmd...)
}

// Results is everything the suite measured.
type Results struct {
	Started    time.Time         `json:"started"`
	Machine    string            `json:"machine"`
	Throughput []ThroughputRun   `json:"throughput,omitempty"`
	Failover   []FailoverRun     `json:"failover,omitempty"`
	Chaos      []ChaosRun        `json:"chaos,omitempty"`
	Scale      *ScaleResult      `json:"scale,omitempty"`
	Stores     []StoreRun        `json:"stores,omitempty"`
	Skipped    map[string]string `json:"skipped,omitempty"`
}

func main() {
	out := flag.String("out", "bench/results", "directory for results.json, report.md and failover.svg")
	scenarios := flag.String("scenarios", "throughput,failover,chaos,scale", "comma-separated scenarios to run (also: stores, the control-plane fault matrix)")
	reps := flag.Int("reps", 3, "repetitions of each measurement")
	faults := flag.String("faults", "", "comma-separated faults of the chaos or stores scenario to run (default all)")
	proxies := flag.String("proxies", "", "comma-separated configurations of the chaos scenario to run, such as service_proxy (default all)")
	stores := flag.String("stores", "", "comma-separated stores of the stores scenario: etcd, zookeeper, consul (default all)")
	post := flag.Int("post", 0, "the chaos scenario sends POSTs with bodies of this many bytes instead of GETs")
	readBody := flag.Bool("read-body", false, "the backends read each request body whole before they answer (default: they answer at once)")
	pin := flag.String("pin", "", "run every proxy on these CPUs only (taskset -c), e.g. 1")
	flag.Parse()

	defer stopAll()
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, os.Interrupt, syscall.SIGTERM)
	go func() { <-interrupted; stopAll(); os.Exit(130) }()

	e, err := setup(*reps)
	if err != nil {
		log.Fatal(err)
	}
	e.post, e.read, e.pin = *post, *readBody, *pin
	defer os.RemoveAll(e.tmp)
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}

	res := &Results{Started: time.Now(), Machine: machine(), Skipped: map[string]string{}}
	if e.nginx == "" {
		res.Skipped["nginx"] = "nginx is not installed"
	}
	if e.haproxy == "" {
		res.Skipped["haproxy"] = "haproxy is not installed"
	}
	for _, s := range strings.Split(*scenarios, ",") {
		log.Printf("scenario %s", s)
		switch strings.TrimSpace(s) {
		case "throughput":
			res.Throughput, err = runThroughput(e)
		case "failover":
			res.Failover, err = runFailover(e)
		case "chaos":
			res.Chaos, err = runChaos(e, *faults, *proxies)
		case "scale":
			res.Scale, err = runScale(e)
		case "stores":
			res.Stores, err = runStores(e, *out, *stores, *faults)
		default:
			err = fmt.Errorf("unknown scenario %q", s)
		}
		if err != nil {
			stopAll()
			log.Fatalf("scenario %s: %v", s, err)
		}
	}

	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	must(os.WriteFile(filepath.Join(*out, "results.json"), data, 0o644))
	must(os.WriteFile(filepath.Join(*out, "report.md"), []byte(report(res)), 0o644))
	if len(res.Failover) > 0 {
		must(os.WriteFile(filepath.Join(*out, "failover.svg"), []byte(failoverSVG(res.Failover)), 0o644))
	}
	if len(res.Chaos) > 0 {
		must(os.WriteFile(filepath.Join(*out, "chaos.svg"), []byte(chaosSVG(res.Chaos)), 0o644))
	}
	log.Printf("wrote %s", *out)
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// setup builds the binaries and finds the optional proxies.
func setup(reps int) (*env, error) {
	root, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "caddy")); err != nil {
		return nil, fmt.Errorf("run the suite from the repository root: %w", err)
	}
	tmp, err := os.MkdirTemp("", "svcreg-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{root: root, tmp: tmp, caddy: filepath.Join(tmp, "caddy"), backend: filepath.Join(tmp, "backend"), reps: reps}
	for bin, pkg := range map[string]string{e.caddy: "./cmd/caddy", e.backend: "./examples/backend"} {
		log.Printf("building %s", pkg)
		build := exec.Command("go", "build", "-o", bin, pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return nil, fmt.Errorf("building %s: %w", pkg, err)
		}
	}
	for _, name := range []string{"nginx", "haproxy"} {
		for _, dir := range []string{"", "/usr/sbin/", "/usr/local/sbin/"} {
			if p, err := exec.LookPath(dir + name); err == nil {
				if name == "nginx" {
					e.nginx = p
				} else {
					e.haproxy = p
				}
				break
			}
		}
	}
	return e, nil
}

// machine describes the machine briefly.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	out, _ := exec.Command("go", "version").Output()
	return fmt.Sprintf("%s, %d CPUs, %s", model, numCPU(), strings.TrimSpace(string(out)))
}

func numCPU() int {
	out, err := exec.Command("nproc").Output()
	if err != nil {
		return 0
	}
	var n int
	fmt.Sscan(string(out), &n)
	return n
}

// median returns the median of xs.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

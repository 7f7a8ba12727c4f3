package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/svcreg/caddy-svcreg/bench/loadgen"
)

// Shape of a stores-scenario run: healthy, the fault, then the recovery,
// which lasts at least storesRecovery and, while an instance does not
// route what the store holds, up to storesSettle.
const (
	hostTTL        = 3 * time.Second // the hosts' lease TTL (etcd) and session timeout (ZooKeeper)
	storesHealthy  = 3 * time.Second
	storesRecovery = 8 * time.Second
	storesSettle   = 20 * time.Second
	storesConns    = 16 // per Caddy instance
	storesPoll     = 100 * time.Millisecond
	storesMany     = 1000 // services of the services_1000 cell
)

// StoreRun is one cell of the fault matrix: one store through one fault,
// under GET load through two Caddy instances that read the store.
type StoreRun struct {
	Store string `json:"store"`
	Fault string `json:"fault"`
	// Skipped says why the cell did not run.
	Skipped string `json:"skipped,omitempty"`
	// FaultStartMs and FaultEndMs are since the load's start; the fault
	// ends when the store answers again (kill, wipe, restore), is thawed
	// (freeze), is reachable again (cut), when both reloads have returned
	// (reload), when the deregistration is done (split), or when the last
	// service is written (services_1000).
	FaultStartMs float64 `json:"fault_start_ms"`
	FaultEndMs   float64 `json:"fault_end_ms"`
	// EndMs is when the load ended.
	EndMs float64 `json:"end_ms"`
	// LeftAtMs is when the leaving host's registration was ended.
	LeftAtMs float64 `json:"left_at_ms"`
	// Hosts are the backends' addresses by name (b1 to b5).
	Hosts map[string]string `json:"hosts"`
	// Outcome is both instances' requests together.
	Outcome
	// FailedHeld counts the failed requests that completed while the
	// store held the service they were for: a host of it, registered
	// once, was listed by the store's last answer before them and its
	// first answer after them.
	FailedHeld int `json:"failed_while_held"`
	// Stale counts answers, from the fault's end on, from hosts the
	// store did not list: not in its last read that ended 200 ms or more
	// before the answer's 100 ms, nor in any read after that up to the
	// first that began after them (StaleByHost by host).
	Stale int `json:"stale_answers"`
	// StaleLate counts those of the stale answers that came after the
	// instance had come to route what the store holds: routing the hosts
	// a store dropped during an outage a little longer (recovery_grace)
	// is by design, routing one after is not.
	StaleLate   int            `json:"stale_after_converged"`
	StaleByHost map[string]int `json:"stale_by_host,omitempty"`
	// ConvergeMs is, for each instance, the time from the fault's end
	// until its admin API lists what the store holds and keeps doing so
	// to the end of the run; -1: it did not by the end.
	ConvergeMs [2]float64 `json:"converge_ms"`
	TargetMs   float64    `json:"target_ms"`
	// StoreConns is, for each instance, the most TCP connections it held
	// to the store from the fault's end on.
	StoreConns [2]int `json:"store_conns_max"`
	// Writes are the admin-API writes sent to instance A from 300 ms into
	// the fault, and WritesCheck what the store showed of them.
	Writes      []AdminWrite `json:"admin_writes"`
	WritesCheck string       `json:"admin_writes_check"`
	// Reregistered says, for a wipe, who registered the hosts again.
	Reregistered string `json:"reregistered,omitempty"`
	// Logs are each instance's log lines from the fault's start: the
	// registry's, and warnings and errors of any other logger but the
	// access log.
	Logs    [2][]LogLine  `json:"logs"`
	Samples []StoreSample `json:"samples"`
	// Timeline is the load's, per 100 ms, of each instance.
	Timeline [2][]loadgen.Bucket `json:"timeline"`
	Notes    []string            `json:"notes,omitempty"`
}

// AdminWrite is one admin-API write and its answer.
type AdminWrite struct {
	Method string  `json:"method"`
	Path   string  `json:"path"`
	Status int     `json:"status"` // 0: no answer
	Answer string  `json:"answer"` // the body (shortened) or the error
	AtMs   float64 `json:"at_ms"`  // sent, since the load's start
	Ms     float64 `json:"ms"`     // until answered
	// DuringFault says it was sent before the fault's end.
	DuringFault bool `json:"during_fault"`
}

// LogLine is one line Caddy logged.
type LogLine struct {
	AtMs   float64 `json:"at_ms"` // since the load's start
	Level  string  `json:"level"`
	Logger string  `json:"logger"`
	Msg    string  `json:"msg"`
	Fields string  `json:"fields,omitempty"`
}

// storeFault is one fault of the matrix.
type storeFault struct {
	Name, Desc string
	// only, when set, is the one store the fault applies to.
	only string
	// split runs the cell with a traffic split over v1 and v2, the
	// leaving host being v2's only one.
	split bool
	// target is how soon after the fault's end both instances must route
	// what the store holds.
	target time.Duration
	// prepare runs once the hosts are registered, before Caddy starts.
	prepare func(c *cell) error
	// run injects the fault, ends the leaving host's registration at its
	// moment (c.leave), and returns once the fault has ended.
	run func(c *cell) error
}

var storeFaults = []storeFault{
	{Name: "kill", Desc: "store killed (SIGKILL), started again 3 s later on its data", target: 5 * time.Second,
		run: func(c *cell) error {
			c.st.Proc().stop(syscall.SIGKILL)
			time.Sleep(1500 * time.Millisecond)
			c.leave()
			time.Sleep(1500 * time.Millisecond)
			return c.st.Start()
		}},
	{Name: "freeze", Desc: "store frozen (SIGSTOP) for 8 s, past the hosts' 3 s lease or session and Caddy's 4 s ZooKeeper session, then SIGCONT", target: 5 * time.Second,
		run: func(c *cell) error {
			p := c.st.Proc().cmd.Process
			if err := p.Signal(syscall.SIGSTOP); err != nil {
				return err
			}
			time.Sleep(4 * time.Second)
			c.leave()
			time.Sleep(4 * time.Second)
			return p.Signal(syscall.SIGCONT)
		}},
	{Name: "wipe", Desc: "store stopped (SIGTERM), its data deleted, started again with the same configuration and ports", target: 5 * time.Second,
		run: func(c *cell) error {
			c.st.Proc().stop(syscall.SIGTERM)
			c.leave()
			time.Sleep(time.Second)
			if err := c.st.Wipe(); err != nil {
				return err
			}
			c.reregister()
			return nil
		}},
	{Name: "restore", Desc: "etcd stopped and restored (etcdctl snapshot restore, same name, URLs and token) from a snapshot taken before the run; a host deleted since comes back", only: "etcd", target: 5 * time.Second,
		prepare: func(c *cell) error {
			s := c.st.(*etcdStore)
			if err := s.Put("bench", "v1", c.hosts[4].addr); err != nil {
				return err
			}
			if err := s.Snapshot(); err != nil {
				return err
			}
			return s.Delete("bench", "v1", c.hosts[4].addr)
		},
		run: func(c *cell) error {
			c.st.Proc().stop(syscall.SIGTERM)
			c.leave()
			time.Sleep(time.Second)
			return c.st.(*etcdStore).Restore()
		}},
	{Name: "cut", Desc: "Caddy cut off from the store for 10 s by a TCP proxy that forwards nothing meanwhile (a partition; the hosts reach the store directly)", target: 5 * time.Second,
		run: func(c *cell) error {
			c.part.Cut()
			time.Sleep(5 * time.Second)
			c.leave()
			time.Sleep(5 * time.Second)
			c.part.Mend()
			return nil
		}},
	{Name: "reload", Desc: "`caddy reload` of both instances in turn with another backend setting (etcd `dial_timeout` 5s→3s, zookeeper `session_timeout` 4s→5s, consul `wait` 1m→30s)", target: time.Second,
		run: func(c *cell) error {
			leaving := make(chan struct{})
			go func() {
				defer close(leaving)
				time.Sleep(500 * time.Millisecond)
				c.leave()
			}()
			defer func() { <-leaving }()
			for i := range c.caddys {
				if err := c.reload(i); err != nil {
					return err
				}
			}
			return nil
		}},
	{Name: "split", Desc: "traffic `split v1 50 v2 50` with `fallback v1`; v2's only host deregistered (load on /bench/x)", split: true, target: time.Second,
		run: func(c *cell) error {
			c.leaveNow()
			return nil
		}},
	{Name: "services_1000", Desc: "1,000 services (one endpoint each) registered at once", target: time.Second,
		run: func(c *cell) error {
			c.leave()
			return c.st.LoadServices(storesMany, c.hosts[0].addr)
		}},
}

// storeKinds are the columns of the matrix, in order.
var storeKinds = []struct {
	name  string
	start func(*env) (store, error)
}{
	{"etcd", newEtcd}, {"zookeeper", newZooKeeper}, {"consul", newConsul},
}

// runStores runs every store through every fault it applies to; stores
// and faults (comma-separated) narrow the matrix. Each Caddy instance's
// log (but the lines about the harness's reads of its listing) goes to
// out/logs/<store>-<fault>-<a|b>.log, the store's to
// out/logs/<store>-<fault>-store.log.
func runStores(e *env, out, stores, faults string) ([]StoreRun, error) {
	if err := buildSelfreg(e); err != nil {
		return nil, err
	}
	logs := filepath.Join(out, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, err
	}
	var runs []StoreRun
	for _, kind := range storeKinds {
		if stores != "" && !slices.Contains(strings.Split(stores, ","), kind.name) {
			continue
		}
		for _, f := range storeFaults {
			if (f.only != "" && f.only != kind.name) || (faults != "" && !slices.Contains(strings.Split(faults, ","), f.Name)) {
				continue
			}
			run, err := storesOnce(e, logs, kind.name, kind.start, f)
			if err != nil {
				return nil, fmt.Errorf("%s, %s: %w", kind.name, f.Name, err)
			}
			if run.Skipped != "" {
				log.Printf("stores %-9s %-13s skipped: %s", run.Store, run.Fault, run.Skipped)
			} else {
				log.Printf("stores %-9s %-13s %6d requests, %4d failed (%d while held), %4d stale, routes what the store holds after %s / %s, writes: %s; %s",
					run.Store, run.Fault, run.Total, run.Failed, run.FailedHeld, run.Stale, secondsText(run.ConvergeMs[0]), secondsText(run.ConvergeMs[1]),
					writesText(run.Writes), run.WritesCheck)
			}
			runs = append(runs, *run)
		}
	}
	return runs, nil
}

// buildSelfreg builds the selfreg program, which the etcd and ZooKeeper
// hosts register with.
func buildSelfreg(e *env) error {
	if e.selfreg != "" {
		return nil
	}
	bin := e.tmp + "/selfreg"
	log.Printf("building ./selfreg/cmd/selfreg")
	build := exec.Command("go", "build", "-o", bin, "./selfreg/cmd/selfreg")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building selfreg: %w", err)
	}
	e.selfreg = bin
	return nil
}

// cell is one run of the matrix in progress.
type cell struct {
	e         *env
	f         storeFault
	st        store
	part      *partition // between Caddy and the store in the cut cell
	storeAddr string     // what Caddy reads: the store, or the partition
	backends  *backendSet
	hosts     []storeHost
	regs      []registration // of hosts[0:3]
	caddys    [2]*runningProxy
	path      string
	t0        time.Time
	faultEnd  time.Duration // 0 until the fault has ended

	mu      sync.Mutex
	leftAt  time.Duration
	leaving sync.WaitGroup
	writes  []AdminWrite
	notes   []string
	rereg   string
	raw     []storePoll // every poll of the store and the instances
}

func (c *cell) since() time.Duration { return time.Since(c.t0) }

func (c *cell) note(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.notes = append(c.notes, fmt.Sprintf(format, args...))
}

// leave ends the third host's registration as a clean stop does, without
// waiting for it (the store may not answer).
func (c *cell) leave() {
	c.mu.Lock()
	c.leftAt = c.since()
	c.mu.Unlock()
	c.leaving.Go(c.regs[2].Leave)
}

// leaveNow ends the third host's registration and waits until done.
func (c *cell) leaveNow() {
	c.leave()
	c.leaving.Wait()
}

// reregister, after a wipe, registers the hosts again where their own
// registration does not: selfreg is given 10 s to do it by itself (it
// does when it notices its lease or session is gone); Consul's agent has
// lost what was registered through its API, which a redeploy registers
// again.
func (c *cell) reregister() {
	if s, ok := c.st.(*consulStore); ok {
		if err := s.Reregister(); err != nil {
			c.note("registering the hosts again after the wipe: %v", err)
		}
		c.rereg = "by the harness at once (the agent loses services registered through its API with its data directory)"
		return
	}
	back := c.since()
	c.leaving.Go(func() {
		want := []string{c.hosts[0].key(), c.hosts[1].key()}
		err := until(10*time.Second, "selfreg registering again", func() bool {
			held, err := c.st.Content(time.Second)
			_, first := held[want[0]]
			_, second := held[want[1]]
			return err == nil && first && second
		})
		c.mu.Lock()
		defer c.mu.Unlock()
		if err == nil {
			c.rereg = fmt.Sprintf("by selfreg itself, within %.1f s of the store's restart", (c.since() - back).Seconds())
			return
		}
		c.rereg = "by the harness 10 s after the store's restart: selfreg had not registered again (its processes restarted)"
		for i := range 2 {
			c.regs[i].Kill()
			r, err := c.st.Register(c.hosts[i])
			if err != nil {
				c.notes = append(c.notes, fmt.Sprintf("registering %s again: %v", c.hosts[i].name, err))
				continue
			}
			c.regs[i] = r
		}
	})
}

// reload rewrites instance i's Caddyfile with the changed backend setting
// and runs `caddy reload` on it.
func (c *cell) reload(i int) error {
	r := c.caddys[i]
	file := ""
	if k := slices.Index(r.proc.cmd.Args, "--config"); k >= 0 {
		file = r.proc.cmd.Args[k+1]
	}
	text, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	changed := strings.Replace(string(text), c.st.Backend(c.storeAddr, false), c.st.Backend(c.storeAddr, true), 1)
	if changed == string(text) {
		return errors.New("the backend block was not found in the Caddyfile")
	}
	if err := os.WriteFile(file, []byte(changed), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t := time.Now()
	out, err := exec.CommandContext(ctx, c.e.caddy, "reload", "--config", file, "--adapter", "caddyfile", "--address", r.admin).CombinedOutput()
	if err != nil {
		return fmt.Errorf("caddy reload: %w\n%s", err, out)
	}
	c.note("`caddy reload` of instance %s took %.1f s", "AB"[i:i+1], time.Since(t).Seconds())
	return nil
}

// key is the host's endpoint as Content lists it.
func (h storeHost) key() string { return "bench/" + h.version + "/" + h.addr }

// adminWrites adds the fourth host through instance A's admin API, and
// deletes it a second after the answer.
func (c *cell) adminWrites() {
	b4 := c.hosts[3]
	c.write(http.MethodPost, "/service_registry/services/bench/v1", `{"address":"`+b4.addr+`"}`)
	time.Sleep(time.Second)
	c.write(http.MethodDelete, "/service_registry/services/bench/v1/"+b4.addr, "")
}

func (c *cell) write(method, path, body string) {
	client := &http.Client{Timeout: 30 * time.Second}
	at := c.since()
	w := AdminWrite{Method: method, Path: path, AtMs: ms(at)}
	c.mu.Lock()
	w.DuringFault = c.faultEnd == 0
	c.mu.Unlock()
	req, err := http.NewRequest(method, "http://"+c.caddys[0].admin+path, strings.NewReader(body))
	var resp *http.Response
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		resp, err = client.Do(req)
	}
	if err != nil {
		w.Answer = err.Error()
	} else {
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		w.Status, w.Answer = resp.StatusCode, shorten(strings.TrimSpace(string(data)), 300)
	}
	w.Ms = ms(c.since() - at)
	c.mu.Lock()
	c.writes = append(c.writes, w)
	c.mu.Unlock()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// withoutPolls drops the admin API's lines about the harness's own reads
// of the listing (ten a second) from a Caddy log.
func withoutPolls(log string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(log, "\n") {
		if strings.Contains(line, `"logger":"admin.api","msg":"received request"`) && strings.Contains(line, `"uri":"/service_registry/services"`) {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// storesOnce runs one cell: a fresh store, five hosts (three registered,
// the fourth for admin writes, the fifth for the restore cell), two Caddy
// instances, load through both, the fault, the recovery.
func storesOnce(e *env, logs, name string, newStore func(*env) (store, error), f storeFault) (*StoreRun, error) {
	run := &StoreRun{Store: name, Fault: f.Name, TargetMs: ms(f.target)}
	st, err := newStore(e)
	var skip errSkip
	if errors.As(err, &skip) {
		run.Skipped = string(skip)
		return run, nil
	}
	if err != nil {
		return nil, err
	}
	defer st.Close()
	c := &cell{e: e, f: f, st: st, storeAddr: st.Addr(), path: "/bench/v1/x"}
	defer c.tearDown()
	if err := c.setUp(); err != nil {
		return nil, err
	}
	if err := c.measure(run); err != nil {
		return nil, err
	}
	// stop both instances and the store to read their logs whole
	for i, r := range c.caddys {
		r.proc.stop(syscall.SIGTERM)
		out := r.proc.out.String()
		run.Logs[i] = caddyLog(out, c.t0, run.FaultStartMs, run.EndMs)
		if err := os.WriteFile(filepath.Join(logs, fmt.Sprintf("%s-%s-%c.log", name, f.Name, 'a'+i)), []byte(withoutPolls(out)), 0o644); err != nil {
			return nil, err
		}
	}
	st.Close()
	if err := os.WriteFile(filepath.Join(logs, fmt.Sprintf("%s-%s-store.log", name, f.Name)), []byte(st.Output()), 0o644); err != nil {
		return nil, err
	}
	c.summarize(run)
	return run, nil
}

// setUp starts the hosts, registers three, starts both Caddy instances and
// returns once both route what the store holds and have warmed up.
func (c *cell) setUp() error {
	if c.f.split {
		c.path = "/bench/x"
	}
	if c.f.Name == "cut" {
		var err error
		if c.part, err = newPartition(c.st.Addr()); err != nil {
			return err
		}
		c.storeAddr = c.part.Addr
	}
	var err error
	if c.backends, err = startBackends(c.e, 5, 0); err != nil {
		return err
	}
	for i, addr := range c.backends.addrs {
		h := storeHost{name: fmt.Sprintf("b%d", i+1), addr: addr, version: "v1"}
		if c.f.split && i == 2 {
			h.version = "v2"
		}
		c.hosts = append(c.hosts, h)
	}
	for _, h := range c.hosts[:3] {
		r, err := c.st.Register(h)
		if err != nil {
			return err
		}
		c.regs = append(c.regs, r)
	}
	want := map[string]bool{c.hosts[0].key(): true, c.hosts[1].key(): true, c.hosts[2].key(): true}
	if err := until(30*time.Second, "the hosts registered in "+c.st.Name(), func() bool {
		held, err := c.st.Content(time.Second)
		return err == nil && sameKeys(held, want)
	}); err != nil {
		return err
	}
	if c.f.prepare != nil {
		if err := c.f.prepare(c); err != nil {
			return err
		}
	}

	global := "service_registry {\n\t\t" + c.st.Backend(c.storeAddr, false)
	if c.f.split {
		global += "\n\t\ttraffic bench {\n\t\t\tsplit v1 50 v2 50\n\t\t\tfallback v1\n\t\t}"
	}
	global += "\n\t}"
	for i := range c.caddys {
		if c.caddys[i], err = startCaddy(c.e, fmt.Sprintf("stores-%s-%s-%c", c.st.Name(), c.f.Name, 'a'+i), global, "service_proxy"); err != nil {
			return err
		}
	}
	for i, r := range c.caddys {
		if err := until(30*time.Second, fmt.Sprintf("instance %c routing what %s holds", 'A'+i, c.st.Name()), func() bool {
			listed, _, err := listing(r.admin, time.Second)
			return err == nil && sameKeys(listed, want)
		}); err != nil {
			return err
		}
	}
	for _, r := range c.caddys {
		if _, err := loadgen.Run(context.Background(), loadgen.Config{Addr: r.addr, Path: c.path, Conns: storesConns, Duration: 500 * time.Millisecond}); err != nil {
			return err
		}
	}
	return nil
}

// tearDown stops whatever setUp started (the store is the caller's).
func (c *cell) tearDown() {
	for _, r := range c.caddys {
		if r != nil {
			r.proc.stop(syscall.SIGKILL)
		}
	}
	for _, r := range c.regs {
		r.Kill()
	}
	if c.backends != nil {
		c.backends.stopAll()
	}
	if c.part != nil {
		c.part.Close()
	}
}

// measure runs the load, the fault and the recovery, polling the store
// and both instances, and fills in run's load figures.
func (c *cell) measure(run *StoreRun) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	poll := storesPoll
	settle := storesSettle
	if c.f.Name == "services_1000" {
		poll, settle = 250*time.Millisecond, 30*time.Second
	}
	c.t0 = time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { c.poll(ctx, poll) })
	var results [2]*loadgen.Result
	var loadErr [2]error
	for i, r := range c.caddys {
		wg.Go(func() {
			results[i], loadErr[i] = loadgen.Run(ctx, loadgen.Config{Addr: r.addr, Path: c.path, Conns: storesConns, Duration: 10 * time.Minute})
		})
	}

	time.Sleep(storesHealthy)
	faultStart := c.since()
	var writes sync.WaitGroup
	writes.Go(func() {
		time.Sleep(300 * time.Millisecond)
		c.adminWrites()
	})
	faultErr := c.f.run(c)
	c.mu.Lock()
	c.faultEnd = c.since()
	c.mu.Unlock()
	if faultErr != nil {
		cancel()
		wg.Wait()
		return fmt.Errorf("the fault: %w", faultErr)
	}
	time.Sleep(storesRecovery)
	for c.since()-c.faultEnd < settle && !c.settled(2*time.Second) {
		time.Sleep(200 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	writes.Wait()
	c.leaving.Wait()
	for _, err := range loadErr {
		if err != nil {
			return err
		}
	}

	run.FaultStartMs, run.FaultEndMs, run.EndMs = ms(faultStart), ms(c.faultEnd), ms(c.since())
	run.LeftAtMs = ms(c.leftAt)
	run.Outcome = Outcome{Statuses: map[int]int{}, Errors: map[string]int{}}
	for i, res := range results {
		run.Total += res.Total
		run.Failed += res.Failed
		for k, n := range res.Statuses {
			run.Statuses[k] += n
		}
		for k, n := range res.Errors {
			run.Errors[k] += n
		}
		run.Timeline[i] = res.Timeline
	}
	return nil
}

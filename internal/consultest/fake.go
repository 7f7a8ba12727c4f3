package consultest

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Fake is a fake Consul agent: the three HTTP endpoints the consul
// backend reads, /v1/catalog/services, /v1/health/state/any and
// /v1/health/service/<name>, with Consul's blocking-query semantics, on
// 127.0.0.1, and faults on demand (Fail, Hang, Reset). Use it only for
// those faults: for everything else, Start a real agent.
//
// Blocking queries behave as Consul documents them: every answer carries
// X-Consul-Index; a request with ?index=N (N > 0) is held until the
// index of what it reads is greater than N, or until ?wait= (default 5m,
// at most 10m) has passed, and then answers with the current data and
// index, which may be lower than N if the index went backwards (Reset).
//
// The indexes move as Consul 1.16's do: the catalog's when an instance
// is registered or deregistered; the checks' when an instance (and so its
// check) is registered or deregistered or its check changes status; a
// service's health index with any change of its instances, and it keeps
// the index of the service's last change after its last instance is gone.
// /v1/health/state/any knows one filter, the one the backend sends:
// Status != "passing".
type Fake struct {
	// Addr is 127.0.0.1:port, the same across Stop and Serve.
	Addr string

	t testing.TB

	mu       sync.Mutex
	srv      *http.Server
	token    string // required when set
	index    uint64 // of the last change
	catalog  uint64 // index of the catalog's last change
	checks   uint64 // index of the checks' last change
	services map[string]*fakeService
	faults   map[string]Fault // by path
	wake     chan struct{}    // closed and replaced at every change
	requests []Request
}

// Instance is one registered instance of a service of the fake, with one
// check.
type Instance struct {
	// ID is the service ID. Default: <service>-<address>-<port>.
	ID string
	// Node is the node's name. Default: node1.
	Node string
	// NodeAddress is the node's address. Default: 127.0.0.1.
	NodeAddress string
	// Address is the service's own address; empty means the node's.
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
	Weights api.AgentWeights
	// Status is the check's status: passing (default), warning or critical.
	Status string
	// CheckType is the check's type, as Consul reports it: ttl (default),
	// http, tcp...
	CheckType string
	// Output is what the check last said ("" if it has not run).
	Output string
}

// Request is what the fake saw of one request.
type Request struct {
	Path       string
	Index      string // the index parameter, "" if absent
	Wait       string
	Filter     string
	Datacenter string
	Token      string // the X-Consul-Token header
	Passing    string // the passing parameter
}

// Fault is how the fake answers the requests to one path.
type Fault struct {
	// Status, if not 0, is the status every request gets, with Body.
	Status int
	Body   string
	// Hang holds every request until the client gives up or the fault
	// is cleared, then answers as usual.
	Hang bool
}

type fakeService struct {
	index     uint64 // of the service's last change
	instances map[string]Instance
}

// StartFake starts a fake Consul agent holding only the consul service,
// as a fresh agent does. It stops when the test ends.
func StartFake(t testing.TB) *Fake {
	t.Helper()
	s := StartFakeLater(t)
	s.Serve()
	return s
}

// StartFakeLater reserves a port for a fake agent that Serve starts later.
func StartFakeLater(t testing.TB) *Fake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Fake{Addr: ln.Addr().String(), t: t, wake: make(chan struct{}), faults: map[string]Fault{}}
	ln.Close()
	s.reset()
	t.Cleanup(s.Stop)
	return s
}

// Serve starts serving on Addr, after StartFakeLater or Stop, with the
// data the fake holds.
func (s *Fake) Serve() {
	s.t.Helper()
	var ln net.Listener
	var err error
	// the port may still be held for a moment after a Stop
	for range 200 {
		if ln, err = net.Listen("tcp", s.Addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("fake consul on %s: %v", s.Addr, err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go srv.Serve(ln) //nolint:errcheck // ends with http.ErrServerClosed at Stop
}

// Stop closes the listener and every connection, held queries included,
// as a Consul agent that dies does. The data stays for Serve.
func (s *Fake) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// RequireToken makes every request without this X-Consul-Token header
// get 403 "ACL not found", as Consul with ACLs on answers.
func (s *Fake) RequireToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
}

// Fail sets how the requests to path (such as /v1/health/service/orders)
// are answered, until Clear.
func (s *Fake) Fail(path string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[path] = f
	s.changed()
}

// Clear ends the fault of path: the requests it held answer.
func (s *Fake) Clear(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.faults, path)
	s.changed()
}

// Reset forgets every service and starts the index again from 1, with
// the consul service only: a Consul whose data was wiped, or another
// cluster at the same address. Held queries go on waiting, as Consul's
// do when the index they know is ahead of the data's.
func (s *Fake) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
	s.changed()
}

// reset sets the data of a fresh agent. The caller holds s.mu.
func (s *Fake) reset() {
	s.index, s.catalog, s.checks = 0, 0, 0
	s.services = map[string]*fakeService{}
	s.register("consul", Instance{ID: "consul", Port: 8300})
}

// Register adds or replaces an instance of service.
func (s *Fake) Register(name string, inst Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.register(name, inst)
	s.changed()
}

// register adds or replaces an instance. The caller holds s.mu.
func (s *Fake) register(name string, inst Instance) {
	if inst.ID == "" {
		inst.ID = fmt.Sprintf("%s-%s-%d", name, inst.Address, inst.Port)
	}
	if inst.Node == "" {
		inst.Node = "node1"
	}
	if inst.NodeAddress == "" {
		inst.NodeAddress = "127.0.0.1"
	}
	if inst.Status == "" {
		inst.Status = api.HealthPassing
	}
	svc := s.services[name]
	if svc == nil {
		svc = &fakeService{instances: map[string]Instance{}}
		s.services[name] = svc
	}
	s.index++
	svc.instances[inst.ID] = inst
	svc.index, s.catalog, s.checks = s.index, s.index, s.index
}

// Deregister removes an instance of service by its ID.
func (s *Fake) Deregister(name, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, ok := s.services[name]
	if ok {
		_, ok = svc.instances[id]
	}
	if !ok {
		s.t.Errorf("fake consul: deregistering unknown instance %s of %s", id, name)
		return
	}
	s.index++
	delete(svc.instances, id)
	svc.index, s.catalog, s.checks = s.index, s.index, s.index
	s.changed()
}

// SetStatus sets the check status of an instance of service: passing,
// warning or critical.
func (s *Fake) SetStatus(name, id, status string) {
	s.setCheck(name, id, status, nil)
}

// SetCheck sets the status of the check of the instance id of name and
// what it said ("": a check not run yet).
func (s *Fake) SetCheck(name, id, status, output string) {
	s.setCheck(name, id, status, &output)
}

func (s *Fake) setCheck(name, id, status string, output *string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var inst Instance
	svc, ok := s.services[name]
	if ok {
		inst, ok = svc.instances[id]
	}
	if !ok {
		s.t.Errorf("fake consul: setting the status of unknown instance %s of %s", id, name)
		return
	}
	s.index++
	inst.Status = status
	if output != nil {
		inst.Output = *output
	}
	svc.instances[id] = inst
	svc.index, s.checks = s.index, s.index
	s.changed()
}

// Requests returns what the fake saw of every request so far.
func (s *Fake) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// changed wakes the held queries. The caller holds s.mu.
func (s *Fake) changed() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// ServeHTTP answers the endpoints the consul backend reads.
func (s *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := Request{Path: r.URL.Path, Index: q.Get("index"), Wait: q.Get("wait"), Filter: q.Get("filter"),
		Datacenter: q.Get("dc"), Token: r.Header.Get("X-Consul-Token"), Passing: q.Get("passing")}
	s.mu.Lock()
	s.requests = append(s.requests, req)
	token := s.token
	s.mu.Unlock()

	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if token != "" && req.Token != token {
		http.Error(w, "ACL not found", http.StatusForbidden)
		return
	}
	if !s.hang(r) {
		return
	}
	s.mu.Lock()
	fault := s.faults[r.URL.Path]
	s.mu.Unlock()
	if fault.Status != 0 {
		http.Error(w, fault.Body, fault.Status)
		return
	}
	index, err := strconv.ParseUint(req.Index, 10, 64)
	if req.Index == "" {
		index, err = 0, nil
	}
	if err != nil {
		http.Error(w, "Invalid index: "+err.Error(), http.StatusBadRequest)
		return
	}
	wait := 5 * time.Minute
	if req.Wait != "" {
		if wait, err = time.ParseDuration(req.Wait); err != nil {
			http.Error(w, "Invalid wait time: "+err.Error(), http.StatusBadRequest)
			return
		}
		wait = min(wait, 10*time.Minute)
	}

	if r.URL.Path == "/v1/status/leader" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `"127.0.0.1:8300"`)
		return
	}
	var read func() (uint64, any)
	switch name, ok := strings.CutPrefix(r.URL.Path, "/v1/health/service/"); {
	case r.URL.Path == "/v1/catalog/services":
		read = s.readCatalog
	case r.URL.Path == "/v1/health/state/any":
		if req.Filter != "" && req.Filter != `Status != "passing"` {
			http.Error(w, "fake consul: unknown filter "+req.Filter, http.StatusBadRequest)
			return
		}
		read = func() (uint64, any) { return s.readChecks(req.Filter != "") }
	case ok && name != "":
		passing := q.Has("passing") && req.Passing != "false" && req.Passing != "0"
		read = func() (uint64, any) { return s.readHealth(name, passing) }
	default:
		http.NotFound(w, r)
		return
	}
	at, body := s.block(r, index, wait, read)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Consul-Index", strconv.FormatUint(at, 10))
	w.Header().Set("X-Consul-KnownLeader", "true")
	w.Header().Set("X-Consul-LastContact", "0")
	_ = json.NewEncoder(w).Encode(body)
}

// hang holds r while its path has a Hang fault, and reports whether the
// client is still there.
func (s *Fake) hang(r *http.Request) bool {
	for {
		s.mu.Lock()
		hang := s.faults[r.URL.Path].Hang
		wake := s.wake
		s.mu.Unlock()
		if !hang {
			return true
		}
		select {
		case <-wake:
		case <-r.Context().Done():
			return false
		}
	}
}

// block reads at once for index 0; else it holds the request until the
// index of what read reads is greater than index, wait has passed or the
// client has gone, and then reads.
func (s *Fake) block(r *http.Request, index uint64, wait time.Duration, read func() (uint64, any)) (uint64, any) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		s.mu.Lock()
		at, body := read()
		wake := s.wake
		s.mu.Unlock()
		if index == 0 || at > index {
			return at, body
		}
		select {
		case <-wake:
		case <-timer.C:
			return at, body
		case <-r.Context().Done():
			return at, body
		}
	}
}

// readCatalog returns the catalog's index and its services with their
// tags. The caller holds s.mu.
func (s *Fake) readCatalog() (uint64, any) {
	out := map[string][]string{}
	for name, svc := range s.services {
		if len(svc.instances) == 0 {
			continue
		}
		tags := map[string]bool{}
		for _, inst := range svc.instances {
			for _, tag := range inst.Tags {
				tags[tag] = true
			}
		}
		out[name] = slices.Sorted(maps.Keys(tags))
	}
	return max(s.catalog, 1), out
}

// readChecks returns the checks' index and every check (each node's
// serfHealth, passing, and each instance's), only those that do not pass
// if notPassing. The caller holds s.mu.
func (s *Fake) readChecks(notPassing bool) (uint64, any) {
	out := api.HealthChecks{}
	nodes := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(s.services)) {
		svc := s.services[name]
		for _, id := range slices.Sorted(maps.Keys(svc.instances)) {
			inst := svc.instances[id]
			nodes[inst.Node] = true
			if notPassing && inst.Status == api.HealthPassing {
				continue
			}
			out = append(out, &api.HealthCheck{Node: inst.Node, CheckID: "service:" + inst.ID, Status: inst.Status,
				ServiceID: inst.ID, ServiceName: name, ServiceTags: inst.Tags, Type: inst.CheckType, Output: inst.Output})
		}
	}
	if !notPassing {
		for _, node := range slices.Sorted(maps.Keys(nodes)) {
			out = append(out, &api.HealthCheck{Node: node, CheckID: "serfHealth", Status: api.HealthPassing})
		}
	}
	return max(s.checks, 1), out
}

// readHealth returns the service's health index and its instances,
// only those whose checks all pass if passing. The caller holds s.mu.
func (s *Fake) readHealth(name string, passing bool) (uint64, any) {
	out := []*api.ServiceEntry{}
	svc := s.services[name]
	if svc == nil {
		return max(s.catalog, 1), out
	}
	for _, id := range slices.Sorted(maps.Keys(svc.instances)) {
		inst := svc.instances[id]
		if passing && inst.Status != api.HealthPassing {
			continue
		}
		out = append(out, &api.ServiceEntry{
			Node: &api.Node{Node: inst.Node, Address: inst.NodeAddress, Datacenter: "dc1"},
			Service: &api.AgentService{ID: inst.ID, Service: name, Tags: inst.Tags, Meta: inst.Meta,
				Address: inst.Address, Port: inst.Port, Weights: inst.Weights},
			Checks: api.HealthChecks{
				{Node: inst.Node, CheckID: "serfHealth", Status: api.HealthPassing},
				{Node: inst.Node, CheckID: "service:" + inst.ID, Status: inst.Status, ServiceID: inst.ID, ServiceName: name,
					Type: inst.CheckType, Output: inst.Output},
			},
		})
	}
	return max(svc.index, 1), out
}

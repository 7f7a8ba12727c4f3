// Package consultest is a fake Consul agent for tests: the two HTTP
// endpoints the consul backend reads, /v1/catalog/services and
// /v1/health/service/<name>, with Consul's blocking-query semantics, on
// 127.0.0.1. A real Consul cannot be installed where these tests run (it
// is not in Debian, and its current releases are not open source).
//
// Blocking queries behave as Consul documents them: every answer carries
// X-Consul-Index; a request with ?index=N (N > 0) is held until the
// index of what it reads is greater than N, or until ?wait= (default 5m,
// at most 10m) has passed, and then answers with the current data and
// index, which may be lower than N if the index went backwards (Reset).
//
// The catalog's index moves when an instance is registered or
// deregistered; a service's health index moves when one of its instances
// is registered, deregistered or changes status, and keeps the index of
// the service's last change after its last instance is gone.
package consultest

import (
	"encoding/json"
	"fmt"
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

// Instance is one registered instance of a service, with one check.
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
}

// Request is what the server saw of one request.
type Request struct {
	Path       string
	Index      string // the index parameter, "" if absent
	Wait       string
	Datacenter string
	Token      string // the X-Consul-Token header
	Passing    string // the passing parameter
}

// Server is a running fake Consul agent.
type Server struct {
	// Addr is 127.0.0.1:port, the same across Stop and Serve.
	Addr string

	t testing.TB

	mu       sync.Mutex
	srv      *http.Server
	token    string // required when set
	index    uint64 // of the last change
	catalog  uint64 // index of the catalog's last change
	services map[string]*service
	wake     chan struct{} // closed and replaced at every change
	requests []Request
}

type service struct {
	index     uint64 // of the service's last change
	instances map[string]Instance
}

// Start starts a fake Consul agent holding only the consul service, as a
// fresh agent does. It stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := StartLater(t)
	s.Serve()
	return s
}

// StartLater reserves a port for a fake agent that Serve starts later,
// for tests of a backend that starts before Consul does.
func StartLater(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: ln.Addr().String(), t: t, wake: make(chan struct{})}
	ln.Close()
	s.reset()
	t.Cleanup(s.Stop)
	return s
}

// Serve starts serving on Addr, after StartLater or Stop, with the data
// the server holds.
func (s *Server) Serve() {
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
func (s *Server) Stop() {
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
func (s *Server) RequireToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
}

// Reset forgets every service and starts the index again from 1, with
// the consul service only: a Consul whose data was wiped, or another
// cluster at the same address. Held queries go on waiting, as Consul's
// do when the index they know is ahead of the data's.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
	s.changed()
}

// reset sets the data of a fresh agent. The caller holds s.mu.
func (s *Server) reset() {
	s.index, s.catalog = 0, 0
	s.services = map[string]*service{}
	s.register("consul", Instance{ID: "consul", Port: 8300})
}

// Register adds or replaces an instance of service.
func (s *Server) Register(name string, inst Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.register(name, inst)
	s.changed()
}

// register adds or replaces an instance. The caller holds s.mu.
func (s *Server) register(name string, inst Instance) {
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
		svc = &service{instances: map[string]Instance{}}
		s.services[name] = svc
	}
	s.index++
	svc.instances[inst.ID] = inst
	svc.index, s.catalog = s.index, s.index
}

// Deregister removes an instance of service by its ID.
func (s *Server) Deregister(name, id string) {
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
	svc.index, s.catalog = s.index, s.index
	s.changed()
}

// SetStatus sets the check status of an instance of service: passing,
// warning or critical.
func (s *Server) SetStatus(name, id, status string) {
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
	svc.instances[id] = inst
	svc.index = s.index
	s.changed()
}

// Requests returns what the server saw of every request so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// changed wakes the held queries. The caller holds s.mu.
func (s *Server) changed() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// ServeHTTP answers the two endpoints the consul backend reads.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := Request{Path: r.URL.Path, Index: q.Get("index"), Wait: q.Get("wait"), Datacenter: q.Get("dc"),
		Token: r.Header.Get("X-Consul-Token"), Passing: q.Get("passing")}
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

	var read func() (uint64, any)
	switch name, ok := strings.CutPrefix(r.URL.Path, "/v1/health/service/"); {
	case r.URL.Path == "/v1/catalog/services":
		read = s.readCatalog
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

// block reads at once for index 0; else it holds the request until the
// index of what read reads is greater than index, wait has passed or the
// client has gone, and then reads.
func (s *Server) block(r *http.Request, index uint64, wait time.Duration, read func() (uint64, any)) (uint64, any) {
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
func (s *Server) readCatalog() (uint64, any) {
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

// readHealth returns the service's health index and its instances,
// only those whose checks all pass if passing. The caller holds s.mu.
func (s *Server) readHealth(name string, passing bool) (uint64, any) {
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
				{Node: inst.Node, CheckID: "service:" + inst.ID, Status: inst.Status, ServiceID: inst.ID, ServiceName: name},
			},
		})
	}
	return max(svc.index, 1), out
}

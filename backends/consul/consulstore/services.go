package consulstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry"
)

// service is a Consul service the backend follows.
type service struct {
	name     string
	versions []string             // the versions it holds in Store.stored, known even without endpoints
	warned   map[string]string    // skipped instance → why, as logged; only its reader touches it
	nodes    []string             // of its instances, as last read
	tried    bool                 // read, or failed, at least once
	read     bool                 // read at least once
	gone     bool                 // no longer followed
	queued   queue                // the queue it waits in to be read, if any
	reading  bool                 // being read
	again    bool                 // asked for while being read: read once more after
	failure  string               // how its last read failed (a key of reads.failures), "" if it did not
	retry    time.Duration        // the wait before its next read after a failure
	retryAt  time.Time            // when it is read again after a failure
	pending  map[string]time.Time // instances kept while their failing checks have not run yet → since when
	failing  map[checkID]string   // the checks that did not pass in its last read (its instances' and their nodes'), with their status
}

// queue is a queue of services waiting to be read.
type queue int8

const (
	none   queue = iota
	urgent       // their checks changed, or they are new: read first
	sweep        // the catalog changed
)

// reads are the services the backend follows, and which of them to read.
// Store.mu guards them.
type reads struct {
	services map[string]*service          // followed, by Consul name
	queues   [3][]*service                // the services waiting to be read, by queue (urgent first); some taken already
	retrying map[*service]bool            // failed, or keeping instances whose checks have not run yet: waiting for their retryAt
	onNode   map[string]map[*service]bool // the services with instances on a node, as last read
	failures map[string]*failure          // how reads fail, by error
	wake     chan struct{}                // closed, and replaced, when there is more to read
	untried  int                          // followed services neither read nor failed yet
}

// failure counts the services whose reads fail in one way.
type failure struct {
	services int  // failing now
	total    int  // since the first
	logged   bool // at Warn (a refusal or a timeout), and its end is logged too
}

func newReads() reads {
	return reads{services: map[string]*service{}, retrying: map[*service]bool{}, onNode: map[string]map[*service]bool{},
		failures: map[string]*failure{}, wake: make(chan struct{})}
}

// follow starts following a service: it is read at once. The caller
// holds c.mu.
func (c *Store) follow(name string) {
	s := &service{name: name, warned: map[string]string{}}
	c.services[name] = s
	c.untried++
	c.want(s, urgent)
}

// drop stops following s and forgets what it held. The caller holds c.mu.
func (c *Store) drop(s *service) {
	s.gone = true
	delete(c.services, s.name)
	delete(c.retrying, s)
	if !s.tried {
		c.untried--
	}
	c.recovered(s)
	c.setNodes(s, nil)
	for _, v := range s.versions {
		key := registry.ServiceKey{Service: s.name, Version: v}
		delete(c.stored, key)
		c.publish(key)
	}
	s.versions = nil
}

// want asks for s to be read, in queue q (urgent or sweep). The caller
// holds c.mu.
func (c *Store) want(s *service, q queue) {
	switch {
	case s.gone:
		return
	case s.reading:
		s.again = true
		return
	case s.queued != none && s.queued <= q: // in that queue, or a more urgent one
		return
	}
	delete(c.retrying, s)
	s.queued = q
	c.queues[q] = append(c.queues[q], s)
	close(c.wake)
	c.wake = make(chan struct{})
}

// readAll asks for every service to be read again. A service that
// failed is read at its retry time, unless now. The caller holds c.mu.
func (c *Store) readAll(now bool) {
	for _, s := range c.services {
		if now || !c.retrying[s] {
			if now {
				s.retry = 0
			}
			c.want(s, sweep)
		}
	}
}

// reader reads the services asked for until ctx ends.
func (c *Store) reader(ctx context.Context) {
	for {
		s := c.next(ctx)
		if s == nil {
			return
		}
		c.read(ctx, s)
	}
}

// next waits for a service to read, and marks it being read; it returns
// nil once ctx ends.
func (c *Store) next(ctx context.Context) *service {
	for {
		c.mu.Lock()
		s, due := c.pop(time.Now())
		wake := c.wake
		c.mu.Unlock()
		if s != nil {
			return s
		}
		if !c.idle(ctx, wake, due) {
			return nil
		}
	}
}

// idle waits until wake is closed or due has come (if not zero), and
// reports whether ctx is still going.
func (c *Store) idle(ctx context.Context, wake <-chan struct{}, due time.Time) bool {
	var retry <-chan time.Time
	if !due.IsZero() {
		t := time.NewTimer(time.Until(due))
		defer t.Stop()
		retry = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-wake:
	case <-retry:
	}
	return true
}

// pop takes the next service to read, the failed ones whose retry time
// has come queued first; else it returns when the next retry is due
// (zero if none). While Consul is unreachable, failed services wait for
// it to be back, when everything is read again. The caller holds c.mu.
func (c *Store) pop(now time.Time) (*service, time.Time) {
	var due time.Time
	for s := range c.retrying {
		if !c.reachable {
			break
		}
		if !now.Before(s.retryAt) {
			c.want(s, urgent)
		} else if due.IsZero() || s.retryAt.Before(due) {
			due = s.retryAt
		}
	}
	for _, q := range []queue{urgent, sweep} {
		for len(c.queues[q]) > 0 {
			s := c.queues[q][0]
			c.queues[q][0] = nil
			c.queues[q] = c.queues[q][1:]
			if s.queued == q && !s.gone { // else moved to the urgent queue, or taken, or dropped
				s.queued, s.reading = none, true
				return s, due
			}
		}
	}
	return nil, due
}

// read reads s's instances and their health, and applies them.
func (c *Store) read(ctx context.Context, s *service) {
	var byVersion map[string]map[string]registry.Change
	var warned map[string]string
	var pending []pendingInstance
	var nodes []string
	var failing map[checkID]string
	readCtx, cancel := context.WithTimeout(ctx, c.opts.ReadTimeout)
	err := c.safely("reading consul service "+s.name, func() error {
		// every instance, whatever its health: a version whose
		// instances all fail is known, without endpoints (503)
		entries, _, err := c.client.Health().Service(s.name, "", false, (&api.QueryOptions{}).WithContext(readCtx))
		if err != nil {
			return err
		}
		byVersion, warned, pending = c.instances(s, entries)
		failing = failingChecks(entries)
		for _, entry := range entries {
			if entry.Node != nil && !slices.Contains(nodes, entry.Node.Node) {
				nodes = append(nodes, entry.Node.Node)
			}
		}
		return nil
	})
	cancel()
	if ctx.Err() != nil {
		return
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	s.reading = false
	if s.gone {
		return
	}
	if !s.tried {
		s.tried = true
		c.untried--
	}
	if err != nil {
		c.failed(s, err)
	} else {
		c.recovered(s)
		s.read, s.warned, s.failing = true, warned, failing
		c.setNodes(s, nodes)
		if due := c.keepPending(s, byVersion, pending, time.Now()); !due.IsZero() {
			s.retryAt = due // read again then, unless a change of its checks comes first
			c.retrying[s] = true
		}
		c.apply(s, byVersion)
	}
	if s.again {
		s.again = false
		c.want(s, urgent)
	}
	c.checkSynced()
}

// instances returns the versions of s's instances with the passing
// ones as endpoints, and logs each instance skipped that was not yet.
func (c *Store) instances(s *service, entries []*api.ServiceEntry) (byVersion map[string]map[string]registry.Change, warned map[string]string, pending []pendingInstance) {
	byVersion = map[string]map[string]registry.Change{}
	warned = map[string]string{}
	for _, entry := range entries {
		versions, ep, err := c.instance(entry)
		if err != nil {
			id := instanceName(entry)
			warned[id] = err.Error()
			if s.warned[id] != err.Error() {
				c.log().Warn("skipping consul instance", zap.String("backend", "consul"), zap.String("service", s.name),
					zap.String("instance", id), zap.String("reason", err.Error()))
			}
			continue
		}
		passing := entry.Checks.AggregatedStatus() == api.HealthPassing
		if !passing && notRunYet(entry.Checks) {
			pending = append(pending, pendingInstance{id: instanceName(entry), versions: versions, ep: ep})
		}
		for _, v := range versions {
			if byVersion[v] == nil {
				byVersion[v] = map[string]registry.Change{}
			}
			if _, dup := byVersion[v][ep.Address]; passing && !dup { // the same host registered twice: the first counts
				byVersion[v][ep.Address] = registry.Change{Endpoint: ep}
			}
		}
	}
	return byVersion, warned, pending
}

// pendingCheckHold is how long, at most, an instance that passed is kept
// while its failing checks have not run yet: a restarted Consul agent
// marks every check critical until it has run it again, once within its
// interval (the checks are staggered over it), and a fresh agent that
// services register with again does the same.
const pendingCheckHold = 10 * time.Second

// agentRuns are the types of the checks a Consul agent runs itself.
var agentRuns = map[string]bool{"http": true, "tcp": true, "udp": true, "grpc": true, "h2ping": true, "script": true, "docker": true, "os_service": true}

// pendingInstance is an instance whose only failing checks have not run
// yet.
type pendingInstance struct {
	id       string
	versions []string
	ep       registry.Endpoint
}

// notRunYet reports whether every check of checks that does not pass is
// one the agent has not run yet: a check the agent runs (HTTP, TCP, gRPC,
// a script...), critical, with no output; once run, it says what it saw.
// Not a TTL check (its service reports, maybe with no note, and the agent
// keeps its state over a restart), nor maintenance, an alias, a check of
// the node itself (a node's checks have no type) or of a type not known.
func notRunYet(checks api.HealthChecks) bool {
	for _, hc := range checks {
		if hc.Status == api.HealthPassing {
			continue
		}
		if hc.Status != api.HealthCritical || hc.Output != "" || !agentRuns[hc.Type] {
			return false
		}
	}
	return true
}

// keepPending adds to byVersion the pending instances that are routed
// (those that passed, or that the table holds while Consul comes back),
// for up to pendingCheckHold from when each was first seen pending, and
// returns when the first of those it kept is due to be read again (zero
// if none). The caller holds c.mu.
func (c *Store) keepPending(s *service, byVersion map[string]map[string]registry.Change, pending []pendingInstance, now time.Time) time.Time {
	was := s.pending
	s.pending = nil
	var due time.Time
	snap := c.feed.Snapshot()
	for _, p := range pending {
		routed := false
		for _, v := range p.versions {
			if svc, err := snap.Lookup(s.name, v); err == nil {
				routed = routed || slices.ContainsFunc(svc.Endpoints, func(ep *registry.Endpoint) bool { return ep.Address == p.ep.Address })
			}
		}
		since, ok := was[p.id]
		if !ok && !routed {
			continue // not passing before: nothing to keep
		}
		if !ok {
			since = now
		}
		if !now.Before(since.Add(pendingCheckHold)) {
			continue
		}
		if s.pending == nil {
			s.pending = map[string]time.Time{}
		}
		s.pending[p.id] = since
		for _, v := range p.versions {
			if byVersion[v] == nil {
				byVersion[v] = map[string]registry.Change{}
			}
			if _, dup := byVersion[v][p.ep.Address]; !dup {
				byVersion[v][p.ep.Address] = registry.Change{Endpoint: p.ep}
			}
		}
		if at := since.Add(pendingCheckHold); due.IsZero() || at.Before(due) {
			due = at
		}
	}
	return due
}

// setNodes sets the nodes of s's instances. The caller holds c.mu.
func (c *Store) setNodes(s *service, nodes []string) {
	for _, node := range s.nodes {
		delete(c.onNode[node], s)
		if len(c.onNode[node]) == 0 {
			delete(c.onNode, node)
		}
	}
	s.nodes = nodes
	for _, node := range nodes {
		if c.onNode[node] == nil {
			c.onNode[node] = map[*service]bool{}
		}
		c.onNode[node][s] = true
	}
}

// apply replaces what s holds with byVersion. The caller holds c.mu.
func (c *Store) apply(s *service, byVersion map[string]map[string]registry.Change) {
	old := s.versions
	s.versions = make([]string, 0, len(byVersion))
	for v, eps := range byVersion {
		c.stored[registry.ServiceKey{Service: s.name, Version: v}] = eps
		s.versions = append(s.versions, v)
	}
	for _, v := range old {
		if byVersion[v] == nil {
			delete(c.stored, registry.ServiceKey{Service: s.name, Version: v})
		}
	}
	for _, v := range append(old, s.versions...) {
		c.publish(registry.ServiceKey{Service: s.name, Version: v})
	}
}

// failed notes that reading s failed: it keeps what it holds, and is
// read again after a backoff. The first service to fail in one way is
// logged, with how it failed: Consul refused it (a status such as 500),
// or did not answer in time; the others that fail that way only count,
// and the end of all those failures is logged once. A connection Consul
// refused or closed is logged by the catalog's query, as Consul
// unreachable. The caller holds c.mu.
func (c *Store) failed(s *service, err error) {
	s.retry = min(max(2*s.retry, consulRetryMin), consulRetryMax)
	s.retryAt = time.Now().Add(jitter(s.retry))
	c.retrying[s] = true

	how, notable := failedHow(err, c.opts.ReadTimeout)
	if s.failure == how {
		return
	}
	c.endFailure(s)
	s.failure = how
	f := c.failures[how]
	if f == nil {
		f = &failure{logged: notable}
		c.failures[how] = f
		if notable {
			msg := "consul could not read a service; it keeps the endpoints last read and is read again with backoff (other services failing the same way are only counted)"
			if !s.read {
				msg = "consul could not read a service; it stays unknown (404) until read, again with backoff (other services failing the same way are only counted)"
			}
			c.log().Warn(msg, zap.String("backend", "consul"), zap.String("service", s.name), zap.String("error", how))
		}
	}
	if !f.logged {
		c.log().Debug("consul service read failed; retrying", zap.String("backend", "consul"), zap.String("service", s.name), zap.Error(err))
	}
	f.services++
	f.total++
}

// recovered notes that s no longer fails. The caller holds c.mu.
func (c *Store) recovered(s *service) {
	s.retry = 0
	delete(c.retrying, s)
	c.endFailure(s)
}

// endFailure notes that s no longer fails the way it did, and logs the
// end of that way of failing once no service fails so. The caller holds
// c.mu.
func (c *Store) endFailure(s *service) {
	if s.failure == "" {
		return
	}
	f := c.failures[s.failure]
	f.services--
	if f.services == 0 {
		delete(c.failures, s.failure)
		if f.logged {
			c.log().Info("consul services readable again", zap.String("backend", "consul"),
				zap.String("error", s.failure), zap.Int("services", f.total))
		}
	}
	s.failure = ""
}

// failedHow says how a read failed, the same for every service that
// fails that way, and whether that is logged here: a refusal by Consul
// (an HTTP status) or no answer in time. A connection refused or closed
// is Consul out of reach, logged by the catalog's query.
func failedHow(err error, readTimeout time.Duration) (string, bool) {
	var status api.StatusError
	switch {
	case errors.As(err, &status):
		return err.Error(), true
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer in %v", readTimeout), true
	default:
		return "connection failed", false
	}
}

// publish hands the feed key's endpoints, what Consul holds, once
// synced: a version Consul lists is known even when no instance passes
// (503, not 404). The caller holds c.mu.
func (c *Store) publish(key registry.ServiceKey) {
	if !c.synced {
		return
	}
	changes, registered := c.stored[key]
	c.feed.PublishKey(key, changes, registered)
}

// checkSynced publishes the whole registry once the catalog has been
// read and each service it lists read or failed once. The caller holds
// c.mu.
func (c *Store) checkSynced() {
	if c.synced || !c.listed || c.untried > 0 {
		return
	}
	c.synced = true
	c.feed.Publish(c.stored, true)
	unreadable := 0
	for s := range c.retrying {
		if s.failure != "" || !s.read {
			unreadable++
		}
	}
	c.log().Info("consul registry synced", zap.String("backend", "consul"), zap.String("address", c.address),
		zap.Int("services", len(c.services)), zap.Int("unreadable", unreadable))
}

// failingChecks returns the checks of entries that do not pass, with
// their status: what the query of the checks that do not pass should
// show for their service while it is as read.
func failingChecks(entries []*api.ServiceEntry) map[checkID]string {
	var failing map[checkID]string
	for _, entry := range entries {
		for _, hc := range entry.Checks {
			if hc.Status == api.HealthPassing {
				continue
			}
			if failing == nil {
				failing = map[checkID]string{}
			}
			failing[checkID{hc.Node, hc.CheckID}] = hc.Status
		}
	}
	return failing
}

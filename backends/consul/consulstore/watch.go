package consulstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/registry"
)

// query returns the options of a blocking query from index.
func query(ctx context.Context, index uint64, wait time.Duration) *api.QueryOptions {
	return (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
}

// nextIndex returns the index to send after an answer at index got to a
// query sent with index sent, by Consul's rules for blocking queries: if
// the index went backwards, start again from 0 (a full read that does not
// wait); never send 0 after an answer, which would not wait either.
func nextIndex(sent, got uint64) uint64 {
	if got < sent {
		return 0
	}
	return max(got, 1)
}

// jitter returns d less a random amount of up to a quarter of it.
func jitter(d time.Duration) time.Duration {
	return d - rand.N(d/4+1)
}

// sleep waits d, or until wake is closed, and reports whether ctx is
// still going.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-wake:
		return ctx.Err() == nil
	}
}

// backChan returns the channel closed when Consul is next seen back
// after a failure, which ends the backoff of the blocking queries.
func (c *Store) backChan() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.back
}

// wakeQueries ends the backoff of the blocking queries: Consul is back.
func (c *Store) wakeQueries() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.back)
	c.back = make(chan struct{})
}

// poll sends blocking queries with read until ctx ends. read sends index
// and wait and returns the index of the answer, from which nextIndex
// makes the next one. After a failure, which failed hears of unless ctx
// has ended, poll waits (backoff, with jitter) and reads everything again
// (index 0).
func (c *Store) poll(ctx context.Context, what string, read func(ctx context.Context, index uint64, wait time.Duration) (uint64, error), failed func(error)) {
	var index uint64
	retry := consulRetryMin
	for ctx.Err() == nil {
		begin := time.Now()
		wait := jitter(c.opts.Wait)
		// Consul may add up to wait/16 to the wait
		reqCtx, cancel := context.WithTimeout(ctx, wait+wait/16+consulSlack)
		var got uint64
		err := c.safely("reading "+what, func() (err error) {
			got, err = read(reqCtx, index, wait)
			return err
		})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			back := c.backChan() // before failed: it may see Consul back at once
			failed(err)
			index = 0
			if !sleep(ctx, jitter(retry), back) {
				return
			}
			retry = min(2*retry, consulRetryMax)
			continue
		}
		retry = consulRetryMin
		index = nextIndex(index, got)
		// a query that answers at once every time (a bug, or changes
		// faster than that) does not spin
		if !sleep(ctx, time.Until(begin.Add(consulMinInterval)), nil) {
			return
		}
	}
}

// watchCatalog follows the catalog's list of services until ctx ends.
func (c *Store) watchCatalog(ctx context.Context) {
	c.poll(ctx, "the consul catalog", func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		services, meta, err := c.client.Catalog().Services(query(ctx, index, wait))
		if err != nil {
			return 0, err
		}
		back := c.setReachable(true, nil)
		c.applyCatalog(ctx, services, index, meta.LastIndex, back)
		return meta.LastIndex, nil
	}, func(err error) { c.setReachable(false, err) })
}

// applyCatalog follows the services of the catalog's answer at index got
// to a query sent with index sent, and forgets those gone. The catalog
// says which services exist, not which of their instances changed: when
// its index moved, every service is read again; when Consul is back
// after a failure, at once, failing services included.
func (c *Store) applyCatalog(ctx context.Context, services map[string][]string, sent, got uint64, back bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	want := map[string]bool{}
	for name := range services {
		switch {
		case len(c.opts.Services) > 0 && !slices.Contains(c.opts.Services, name):
		case len(c.opts.Services) == 0 && name == "consul":
		case !registry.ValidName(name):
			if !c.badNames[name] {
				c.badNames[name] = true
				c.log().Warn("skipping consul service", zap.String("backend", "consul"), zap.String("service", name),
					zap.String("reason", registry.CheckName("service", name).Error()))
			}
		default:
			want[name] = true
		}
	}
	if got < sent && c.listed {
		c.log().Warn("consul's index went backwards (restored, or another cluster); reading everything again",
			zap.String("backend", "consul"))
	}
	for name, s := range c.services {
		if !want[name] {
			c.drop(s)
		}
	}
	for name := range want {
		if c.services[name] == nil {
			c.follow(name)
		}
	}
	if c.listed && (back || got != c.catalogIndex) {
		c.readAll(back)
	}
	c.listed, c.catalogIndex = true, got
	c.checkSynced()
}

// monitor checks every consulCheckEvery that Consul answers, until ctx
// ends: a blocking query to an agent that froze, or that a partition cut
// off, just waits, so without it such a fault would go unseen (and
// unlogged) until the agent is back. When Consul answers again after a
// failed check, every service is read again at once.
func (c *Store) monitor(ctx context.Context) {
	tick := time.NewTicker(consulCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.mu.Lock()
		listed := c.listed
		c.mu.Unlock()
		if !listed {
			continue // the catalog's watch reports on its own until it answers
		}
		check, cancel := context.WithTimeout(ctx, consulCheckTimeout)
		_, err := c.client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(check))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.setReachable(false, fmt.Errorf("checking that consul answers: %w", err))
			continue
		}
		if c.setReachable(true, nil) {
			c.mu.Lock()
			c.readAll(true)
			c.mu.Unlock()
			c.wakeQueries() // the blocking queries may be waiting out a backoff
		}
	}
}

// watchChecks follows the health checks that do not pass until ctx ends.
func (c *Store) watchChecks(ctx context.Context) {
	c.poll(ctx, "consul's health checks", func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		q := query(ctx, index, wait)
		q.Filter = notPassingFilter
		checks, meta, err := c.client.Health().State(api.HealthAny, q)
		if err != nil {
			return 0, err
		}
		c.applyChecks(checks, index, meta.LastIndex)
		return meta.LastIndex, nil
	}, c.checksFailed)
}

// check is a health check as applyChecks compares them: its service
// ("" for a node's own check) and status.
type check struct {
	service, status string
}

// checkID identifies a health check: its node and its ID there.
type checkID struct {
	node, id string
}

// applyChecks reads again the services whose checks changed since the
// last answer, by the checks that do not pass in the answer at index got
// to a query sent with index sent (a check that turns critical shows
// there; one that passes again leaves it). A change of a node's own
// check (such as serfHealth: the node failed) reads again the services
// with instances on that node. An answer without a last one to compare
// with (the first, or after a failure), or whose index went backwards,
// reads every service again.
func (c *Store) applyChecks(checks api.HealthChecks, sent, got uint64) {
	now := make(map[checkID]check, len(checks))
	for _, hc := range checks {
		if hc.Status == api.HealthPassing { // should the filter not apply
			continue
		}
		now[checkID{hc.Node, hc.CheckID}] = check{hc.ServiceName, hc.Status}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checksFailing {
		c.checksFailing = false
		c.log().Info("consul's health checks readable again", zap.String("backend", "consul"))
	}
	known := c.checksKnown
	c.checksKnown = true
	if !known || got < sent {
		c.readAll(false)
		return
	}
	c.readStale(now)
}

// readStale reads again every service whose last read saw other failing
// checks than now says it has (a node's own failing checks count for the
// services with instances there). Comparing each service with its own
// last read, not one answer with the one before, also catches a check
// that failed and passed again between two answers while a read of its
// service saw it failing.
// The caller holds c.mu.
func (c *Store) readStale(now map[checkID]check) {
	expect := map[*service]map[checkID]string{}
	add := func(s *service, id checkID, status string) {
		if expect[s] == nil {
			expect[s] = map[checkID]string{}
		}
		expect[s][id] = status
	}
	for id, hc := range now {
		if hc.service == "" { // a node's own check fails its instances
			for s := range c.onNode[id.node] {
				add(s, id, hc.status)
			}
		} else if s := c.services[hc.service]; s != nil {
			add(s, id, hc.status)
		}
	}
	for _, s := range c.services {
		if s.read && !maps.Equal(s.failing, expect[s]) {
			c.want(s, urgent)
		}
	}
}

// checksFailed notes that the query of the checks failed: until it
// answers again, a service whose health changes is read again only when
// the catalog changes. Consul out of reach shows in the catalog's queries
// and is logged there; an answer refusing the query is logged here, once.
func (c *Store) checksFailed(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checksKnown = false
	var status api.StatusError
	if !errors.As(err, &status) || c.checksFailing {
		c.log().Debug("consul's health checks query failed; retrying", zap.String("backend", "consul"), zap.Error(err))
		return
	}
	c.checksFailing = true
	c.log().Warn("consul refused the query of its health checks; health changes are seen only with changes to the catalog until it answers, retrying",
		zap.String("backend", "consul"), zap.Error(err))
}

// setReachable logs a change of Consul's reachability, as the catalog's
// queries see it, and reports whether it changed.
func (c *Store) setReachable(ok bool, err error) bool {
	c.mu.Lock()
	changed := c.reachable != ok
	c.reachable = ok
	synced := c.synced
	c.mu.Unlock()
	if !changed {
		return false
	}
	c.feed.Reachable(ok, synced, err, "consul",
		"consul reachable again", zap.String("address", c.address))
	return true
}

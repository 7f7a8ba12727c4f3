package svcreg

import (
	"sync/atomic"
	"time"

	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// serviceState is what the proxy keeps with a service version while the
// version stays registered (registry.Service.Attach): the strings its
// requests store in placeholders, boxed once, what it counts, and its
// retry budget. A change of the version's endpoints keeps it; removing
// the version drops it.
type serviceState struct {
	serviceBoxes
	retries   atomic.Uint64 // tries after a request's first
	hedges    atomic.Uint64 // backup tries sent while a request's try waited
	hedgesWon atomic.Uint64 // backup tries that answered first
	routed    [traffic.NumSources]atomic.Uint64
	budget    retryBudget
}

// stateOf returns svc's state, made by its first request.
func stateOf(svc *registry.Service) *serviceState {
	if s, ok := svc.Attachment().(*serviceState); ok {
		return s
	}
	s := &serviceState{serviceBoxes: serviceBoxes{name: svc.Name, version: svc.Version, prefix: svc.Prefix, unavailable: svc.Unavailable().Error()}}
	return svc.Attach(s).(*serviceState)
}

// serviceCounts are a service version's counters, read for the metrics and
// the admin API.
type serviceCounts struct {
	retries, hedges, hedgesWon uint64
	routed                     [traffic.NumSources]uint64 // by traffic.Source
}

// countsOf returns svc's counters: zero before its first request.
func countsOf(svc *registry.Service) serviceCounts {
	var c serviceCounts
	if s, ok := svc.Attachment().(*serviceState); ok {
		c.retries, c.hedges, c.hedgesWon = s.retries.Load(), s.hedges.Load(), s.hedgesWon.Load()
		for i := range s.routed {
			c.routed[i] = s.routed[i].Load()
		}
	}
	return c
}

// countRouted counts a request routed to the service version, and why.
func (s *serviceState) countRouted(from traffic.Source) {
	if int(from) < len(s.routed) {
		s.routed[from].Add(1)
	}
}

// budgetRule is a retry budget's configuration, resolved (see RetryBudget).
type budgetRule struct {
	ratio     float64 // share of requests that may be retried, 0 to 1
	perSecond int     // retries a second allowed whatever the traffic
	burst     int     // retries the budget can save up
}

// defaultBudget lets a fifth of requests be retried, 10 retries a second
// whatever the traffic, and saves up to 100.
var defaultBudget = budgetRule{ratio: 0.2, perSecond: 10, burst: 100}

// retryBudget limits the retries of a service version that cost its hosts
// work (a retry after an answer or a request that may have arrived), as
// Finagle's RetryBudget does: every request deposits a share of a retry,
// every such retry withdraws one, and a floor of retries per second is
// always allowed. Balances are in thousandths of a retry. Retries after a
// host could not be reached cost nothing and are never refused.
type retryBudget struct {
	balance atomic.Int64 // thousandths of a retry
	floorAt atomic.Int64 // unix nanoseconds the floor was last paid
}

// credit adds to the balance, up to the burst.
func (b *retryBudget) credit(c budgetRule, thousandths int64) {
	if v := b.balance.Add(thousandths); v > int64(c.burst)*1000 {
		b.balance.Store(int64(c.burst) * 1000)
	}
}

// deposit credits one request: call it once per request, not per try.
func (b *retryBudget) deposit(c budgetRule) { b.credit(c, int64(c.ratio*1000)) }

// withdraw takes one retry out of the budget at now, and reports whether
// there was one.
func (b *retryBudget) withdraw(c budgetRule, now time.Time) bool {
	at, t := b.floorAt.Load(), now.UnixNano()
	// pay the floor for the time since it was last paid
	if at == 0 {
		if b.floorAt.CompareAndSwap(0, t) {
			b.credit(c, int64(c.burst)*1000) // a new budget starts full
		}
	} else if elapsed := t - at; elapsed > int64(time.Millisecond) && b.floorAt.CompareAndSwap(at, t) {
		b.credit(c, int64(float64(c.perSecond)*1000*float64(elapsed)/float64(time.Second)))
	}
	if b.balance.Add(-1000) >= 0 {
		return true
	}
	b.balance.Add(1000)
	return false
}

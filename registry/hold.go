package registry

import (
	"time"
)

// defaultRecoveryGrace is how long, by default, endpoints that a store
// dropped while it was out of reach, or just after it came back, stay in
// the snapshot (see Feed.Reachable).
const defaultRecoveryGrace = 2 * time.Second

// hold keeps the endpoints a backend removes while its store is out of
// reach, or within the grace after it came back, for that grace.
//
// A store that was out of reach (frozen, cut off, restarted) often comes
// back having expired every session or lease it could not renew
// meanwhile: ZooKeeper drops the ephemeral nodes of every session, etcd
// revokes the leases, Consul's TTL checks go critical. The services that
// registered themselves register again within a second or so, but a
// backend that lists the store before they have would route nothing to
// them: 404 for every request in between. As Eureka's self-preservation
// does, and as a proxy that keeps an endpoint while it still answers,
// the table keeps such endpoints (health and all: one that fails leaves
// rotation as any other) until the store has been back for the grace,
// then publishes exactly what the backend holds.
type hold struct {
	grace     time.Duration // 0: nothing is held
	reachable bool          // the backend's store answers
	until     time.Time     // when reachable: holding ends then
	keys      map[ServiceKey]*heldKey
	timer     *time.Timer
	afterFunc func(time.Duration, func()) *time.Timer // time.AfterFunc; tests replace it
}

// heldKey is what is held of one service version.
type heldKey struct {
	eps  map[string]Endpoint // by address, as last published (health included)
	gone bool                // the backend no longer has the version at all
}

// holding reports whether a removal now is held. The caller holds t.mu.
func (t *table) holding() bool {
	h := &t.hold
	return h.grace > 0 && (!h.reachable || t.now().Before(h.until))
}

// withHeld returns the endpoints to publish for key when the backend has
// eps for it (gone: it has no such version): eps, and the endpoints held
// for key that eps does not have. prev is what is published now; when
// holding, its endpoints that eps drops are held. The caller holds t.mu.
func (t *table) withHeld(key ServiceKey, prev *Service, eps []Endpoint, gone bool) []Endpoint {
	h := &t.hold
	hk := h.keys[key]
	if hk == nil && (prev == nil || !t.holding()) {
		return eps // the common case: nothing held, nothing to hold
	}
	has := make(map[string]bool, len(eps))
	for _, ep := range eps {
		has[ep.Address] = true
	}
	if hk == nil {
		hk = &heldKey{eps: map[string]Endpoint{}}
	}
	if prev != nil && t.holding() {
		for _, ep := range prev.Endpoints {
			if _, held := hk.eps[ep.Address]; !held && !has[ep.Address] {
				hk.eps[ep.Address] = *ep
				ep.health.held.Store(true)
			}
		}
	}
	for addr, ep := range hk.eps {
		if has[addr] { // the store has it again
			ep.health.held.Store(false)
			delete(hk.eps, addr)
		}
	}
	hk.gone = gone
	if len(hk.eps) == 0 {
		delete(h.keys, key)
		return eps
	}
	if h.keys == nil {
		h.keys = map[ServiceKey]*heldKey{}
	}
	h.keys[key] = hk
	out := make([]Endpoint, 0, len(eps)+len(hk.eps))
	out = append(out, eps...)
	for _, ep := range hk.eps {
		out = append(out, ep)
	}
	return out
}

// setRecoveryGrace sets how long endpoints the backend drops while its
// store is out of reach, or within that time after it came back, are
// kept (0: none are). Default: 0 for a table, defaultRecoveryGrace for a
// registry made by New.
func (t *table) setRecoveryGrace(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.hold.grace = max(d, 0)
	if d <= 0 {
		t.releaseHeld()
	}
}

// setReachable tells the table whether the backend's store answers. A
// backend calls it when it loses its store and when it has it again
// (after listing it again, if it does). Endpoints the backend removes
// meanwhile, and for the recovery grace after, stay in the snapshot until
// the store has been back for the grace; then the snapshot holds what the
// backend holds.
func (t *table) setReachable(ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := &t.hold
	if h.reachable == ok {
		return
	}
	h.reachable = ok
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	if !ok || h.grace == 0 {
		return
	}
	h.until = t.now().Add(h.grace)
	h.timer = h.afterFunc(h.grace, t.endHold)
}

// endHold publishes what the backend holds once the grace has passed
// since the store came back.
func (t *table) endHold() {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := &t.hold
	h.timer = nil
	if !h.reachable {
		return // lost again: setReachable arms the next end
	}
	if left := h.until.Sub(t.now()); left > 0 {
		h.timer = h.afterFunc(left, t.endHold)
		return
	}
	t.releaseHeld()
}

// releaseHeld drops every held endpoint from the snapshot. The caller
// holds t.mu.
func (t *table) releaseHeld() {
	h := &t.hold
	keys := h.keys
	h.keys = nil
	for key, hk := range keys {
		old := t.snap.Load()
		prev, _ := old.Lookup(key.Service, key.Version)
		if prev == nil {
			continue
		}
		var eps []Endpoint
		for _, ep := range prev.Endpoints {
			if _, held := hk.eps[ep.Address]; held {
				ep.health.held.Store(false)
				continue
			}
			eps = append(eps, *ep)
		}
		if hk.gone && len(eps) == 0 {
			t.publish(old, key, nil)
			continue
		}
		if svc := t.buildService(key, eps, prev); svc != prev {
			t.publish(old, key, svc)
		}
	}
}

// stopHold stops the timer of the hold, if any. The caller holds t.mu.
func (t *table) stopHold() {
	if t.hold.timer != nil {
		t.hold.timer.Stop()
		t.hold.timer = nil
	}
}

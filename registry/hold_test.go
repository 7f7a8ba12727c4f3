package registry

import (
	"slices"
	"testing"
	"time"
)

// holdTable is a table with a recovery grace of 3s on a fake clock whose
// hold timer the test fires.
type holdTable struct {
	*table
	clock *fakeClock
	fire  func() // the armed timer's function, nil when none
	after time.Duration
}

func newHoldTable(t *testing.T) *holdTable {
	clock := newFakeClock()
	h := &holdTable{table: newTable(clock.Now), clock: clock}
	h.hold.afterFunc = func(d time.Duration, f func()) *time.Timer {
		h.fire, h.after = f, d
		return time.NewTimer(time.Hour) // stopped by setReachable or never fires in the test
	}
	h.setRecoveryGrace(3 * time.Second)
	return h
}

// endpoints returns the addresses key has in the snapshot and which of
// them are held; nil for an unknown key.
func (h *holdTable) endpoints(key ServiceKey) (all, held []string) {
	svc, err := h.Snapshot().Lookup(key.Service, key.Version)
	if err != nil {
		return nil, nil
	}
	for _, ep := range svc.Endpoints {
		all = append(all, ep.Address)
		if ep.Stats().Held {
			held = append(held, ep.Address)
		}
	}
	return all, held
}

func (h *holdTable) want(t *testing.T, when string, key ServiceKey, all, held []string) {
	t.Helper()
	gotAll, gotHeld := h.endpoints(key)
	if !slices.Equal(gotAll, all) || !slices.Equal(gotHeld, held) {
		t.Errorf("%s: %s has %v, held %v; want %v, held %v", when, key, gotAll, gotHeld, all, held)
	}
}

// A store that comes back having expired every session (ZooKeeper frozen
// past its session timeout): the relist drops every self-registered
// endpoint, which stays until the store has been back for the grace; one
// that registers again meanwhile is simply there; then the snapshot is
// exactly what the store holds.
func TestHoldThroughRecovery(t *testing.T) {
	users, orders := ServiceKey{"users", "v1"}, ServiceKey{"orders", "v1"}
	h := newHoldTable(t)
	h.replace(map[ServiceKey][]Endpoint{users: eps("a:1", "b:1"), orders: eps("c:1")})

	h.setReachable(false)
	h.replace(map[ServiceKey][]Endpoint{}) // listed again: every ephemeral node gone
	h.want(t, "relisted empty while out of reach", users, []string{"a:1", "b:1"}, []string{"a:1", "b:1"})
	h.want(t, "relisted empty while out of reach", orders, []string{"c:1"}, []string{"c:1"})

	h.setReachable(true)
	if h.fire == nil || h.after != 3*time.Second {
		t.Fatalf("coming back armed a timer of %v; want 3s", h.after)
	}
	h.set(users, eps("a:1")) // a registered again
	h.want(t, "a back", users, []string{"a:1", "b:1"}, []string{"b:1"})

	h.clock.Advance(2 * time.Second)
	h.remove(users) // a removal within the grace is held too
	h.want(t, "removed within the grace", users, []string{"a:1", "b:1"}, []string{"a:1", "b:1"})
	h.set(users, eps("a:1"))

	h.clock.Advance(time.Second)
	h.fire()
	h.want(t, "after the grace", users, []string{"a:1"}, nil)
	h.want(t, "after the grace", orders, nil, nil)

	h.remove(users) // after the grace: at once
	h.want(t, "removed after the grace", users, nil, nil)
}

// Without an outage nothing is held, and a held endpoint that the store
// lists again keeps its health.
func TestHoldOnlyThroughOutages(t *testing.T) {
	users := ServiceKey{"users", "v1"}
	h := newHoldTable(t)
	h.replace(map[ServiceKey][]Endpoint{users: eps("a:1", "b:1")})
	h.set(users, eps("a:1"))
	h.want(t, "removed with the store in reach", users, []string{"a:1"}, nil)

	h.setReachable(false)
	h.set(users, nil)
	svc, _ := h.Snapshot().Lookup("users", "v1")
	before := svc.Endpoints[0]
	h.set(users, eps("a:1"))
	svc, _ = h.Snapshot().Lookup("users", "v1")
	if svc.Endpoints[0].health != before.health || svc.Endpoints[0].Stats().Held {
		t.Errorf("an endpoint listed again while held lost its health, or is still marked held")
	}

	// lost again before the grace ended: held until the next grace ends
	h.set(users, nil)
	h.setReachable(true)
	fire := h.fire
	h.setReachable(false)
	h.clock.Advance(10 * time.Second)
	fire() // a timer that fires anyway finds the store out of reach
	h.want(t, "lost again", users, []string{"a:1"}, []string{"a:1"})
	h.setReachable(true)
	h.clock.Advance(3 * time.Second)
	h.fire()
	h.want(t, "after the second grace", users, []string{}, nil)

	h.setRecoveryGrace(0)
	h.replace(map[ServiceKey][]Endpoint{users: eps("a:1")})
	h.setReachable(false)
	h.remove(users)
	h.want(t, "grace 0", users, nil, nil)
}

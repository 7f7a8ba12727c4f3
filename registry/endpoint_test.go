package registry

import (
	"encoding/json"
	"errors"
	"math"
	"testing"
	"time"
)

// TestWeightJSON: 0 in JSON is Drained, a missing weight the default,
// and both survive a round trip.
func TestWeightJSON(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Weight
		out  string
	}{
		{`{"address":"127.0.0.1:1"}`, 0, `{"address":"127.0.0.1:1"}`},
		{`{"address":"127.0.0.1:1","weight":0}`, Drained, `{"address":"127.0.0.1:1","weight":0}`},
		{`{"address":"127.0.0.1:1","weight":7}`, 7, `{"address":"127.0.0.1:1","weight":7}`},
	} {
		var ep Endpoint
		if err := json.Unmarshal([]byte(tc.in), &ep); err != nil || ep.Weight != tc.want {
			t.Errorf("%s: weight %d, %v; want %d", tc.in, ep.Weight, err, tc.want)
			continue
		}
		if out, err := json.Marshal(ep); err != nil || string(out) != tc.out {
			t.Errorf("%s: marshaled as %s, %v; want %s", tc.in, out, err, tc.out)
		}
	}
	for _, bad := range []string{`{"weight":-1}`, `{"weight":101}`, `{"weight":"3"}`, `{"weight":1.5}`} {
		var ep Endpoint
		if err := json.Unmarshal([]byte(bad), &ep); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want an ErrInvalid", bad, err)
		}
	}
}

// TestEndpointLatency: an endpoint's latency is unknown until a try's is
// reported, then decays with the time the caller reads, beside the time since
// its last answer.
func TestEndpointLatency(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	m := newMachine(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1")})
	svc, _ := m.table.Snapshot().Lookup("users", "v1")
	ep := svc.Endpoints[0]
	if ewma, since, known := ep.Latency(m.clock.Now()); known {
		t.Errorf("before any try: latency %v, %v since the last answer, known; want unknown", ewma, since)
	}
	m.c.report(svc, ep, Answered, 4*time.Millisecond, m.clock.Now())
	m.clock.Advance(50 * time.Millisecond)
	want := float64(4*time.Millisecond) * math.Exp(-float64(50*time.Millisecond)/float64(ewmaDecay))
	if ewma, since, known := ep.Latency(m.clock.Now()); !known || math.Abs(ewma-want) > 1 || since != 50*time.Millisecond {
		t.Errorf("50 ms after a 4 ms answer: latency %v, %v since the last answer, known %v; want %v, 50ms, true", ewma, since, known, want)
	}
}

// countingHost is an InFlightCounter, as Caddy's reverseproxy.Host is.
type countingHost struct{ n int }

func (h *countingHost) NumRequests() int { return h.n }

// TestCountInFlightAndTLS: the proxy calls CountInFlight and SetUsesTLS on
// every try; the registry keeps the counter it was given last and the TLS
// setting its checks then use.
func TestCountInFlightAndTLS(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	m := newMachine(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1")})
	svc, _ := m.table.Snapshot().Lookup("users", "v1")
	ep := svc.Endpoints[0]
	if n := ep.Stats().InFlight; n != 0 {
		t.Errorf("no counter yet: %d in flight", n)
	}
	a, b := &countingHost{n: 2}, &countingHost{n: 5}
	ep.CountInFlight(a)
	ep.CountInFlight(a)
	if n := ep.Stats().InFlight; n != 2 {
		t.Errorf("counting with a: %d in flight, want 2", n)
	}
	ep.CountInFlight(b)
	if n := ep.Stats().InFlight; n != 5 {
		t.Errorf("counting with b: %d in flight, want b's 5", n)
	}
	for _, on := range []bool{true, true, false} {
		ep.SetUsesTLS(on)
		if got := ep.health.tls.Load(); got != on {
			t.Errorf("SetUsesTLS(%v): the checks use TLS %v", on, got)
		}
	}
}

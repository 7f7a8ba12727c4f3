package registry

import (
	"encoding/json"
	"maps"
	"math/rand/v2"
	"strconv"
	"time"
)

// Endpoint is one host of a service version. Values handed out by a
// Snapshot are shared and must not be modified.
type Endpoint struct {
	// Address is the host:port to dial, for example 127.0.0.1:9091 or
	// [::1]:9091. An http:// prefix is accepted and dropped.
	Address string `json:"address,omitempty"`

	// Weight is the endpoint's share of requests relative to the other
	// endpoints of its service version, from 1 to 100, or 0 (Drained in
	// Go) for an endpoint that stays registered but takes no new request
	// (maintenance). Default: 1.
	Weight Weight `json:"weight,omitempty"`

	// Metadata is free-form information about the endpoint (at most 16
	// entries of up to 256 bytes each), shown by the admin API.
	Metadata map[string]string `json:"metadata,omitempty"`

	// TTL, given when adding an endpoint, binds it to a lease of that
	// length that the registry keeps alive while the endpoint stays
	// registered: if the registry's process stops, the endpoint disappears
	// TTL later. Only backends with leases (etcd) accept it; 1s to 24h. It
	// is an input of Registry.Add only: snapshots do not carry it.
	// Default: none.
	TTL Duration `json:"ttl,omitempty"`

	// health is shared by every snapshot that holds this endpoint.
	health *endpointHealth
}

// Weight is an endpoint's share of requests relative to the other
// endpoints of its service version: 1 to 100, or Drained. Its zero value
// stands for the default, 1, so that an Endpoint literal without a weight
// takes requests. In JSON a drained endpoint's weight is 0, and a missing
// weight is the default.
type Weight int

// Drained is the weight of an endpoint that stays registered, health
// checked and shown, but takes no new request: balancing skips it, and a
// service version whose endpoints are all drained has no available host
// (its requests go to the fallback, or get 503). Requests in flight to it
// finish. It is 0 in JSON.
const Drained Weight = -1

// MaxWeight is the largest endpoint weight.
const MaxWeight = 100

// Int returns the weight as balancing uses it: 0 for Drained, 1 for the
// zero value, else the weight.
func (w Weight) Int() int {
	switch {
	case w == Drained:
		return 0
	case w == 0:
		return 1
	}
	return int(w)
}

// String returns the weight as JSON has it: "0" when drained.
func (w Weight) String() string { return strconv.Itoa(w.Int()) }

// MarshalJSON writes the weight as a number, 0 when drained.
func (w Weight) MarshalJSON() ([]byte, error) { return strconv.AppendInt(nil, int64(w.Int()), 10), nil }

// UnmarshalJSON reads a number: 0 is Drained.
func (w *Weight) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return Invalidf("weight %s: want a whole number from 0 to %d", b, MaxWeight)
	}
	if n < 0 || n > MaxWeight {
		return Invalidf("invalid weight %d: want 0 (drained) to %d", n, MaxWeight)
	}
	*w = WeightOf(n)
	return nil
}

// WeightOf returns the weight of a number as JSON has it: 0 is Drained.
func WeightOf(n int) Weight {
	if n == 0 {
		return Drained
	}
	return Weight(n)
}

// Limits of an endpoint's metadata and TTL.
const (
	maxMetadataEntries = 16
	maxMetadataLen     = 256
	minTTL             = Duration(time.Second)
	maxTTL             = Duration(24 * time.Hour)
)

// sameConfig reports whether ep and other have the same settings.
func (ep *Endpoint) sameConfig(other Endpoint) bool {
	return ep.Weight == other.Weight && maps.Equal(ep.Metadata, other.Metadata)
}

// Normalize validates ep and returns it with a canonical address (see
// ParseAddress), a weight of 1 for the zero value, and its own copy of
// the metadata. Errors match ErrInvalid.
func (ep Endpoint) Normalize() (Endpoint, error) {
	addr, err := ParseAddress(ep.Address)
	if err != nil {
		return Endpoint{}, err
	}
	w := ep.Weight
	if w == 0 {
		w = 1
	}
	if w != Drained && (w < 1 || w > MaxWeight) {
		return Endpoint{}, Invalidf("invalid weight %d for %s: want 0 (drained) to %d", ep.Weight, addr, MaxWeight)
	}
	if len(ep.Metadata) > maxMetadataEntries {
		return Endpoint{}, Invalidf("metadata of %s: %d entries, want at most %d", addr, len(ep.Metadata), maxMetadataEntries)
	}
	for k, v := range ep.Metadata {
		if k == "" || len(k) > maxMetadataLen || len(v) > maxMetadataLen {
			return Endpoint{}, Invalidf("metadata of %s: keys must be 1 to %d bytes, values at most %d", addr, maxMetadataLen, maxMetadataLen)
		}
	}
	if ep.TTL != 0 && (ep.TTL < minTTL || ep.TTL > maxTTL) {
		return Endpoint{}, Invalidf("invalid ttl %s for %s: want 1s to 24h", time.Duration(ep.TTL), addr)
	}
	var meta map[string]string
	if len(ep.Metadata) > 0 {
		meta = maps.Clone(ep.Metadata)
	}
	return Endpoint{Address: addr, Weight: w, Metadata: meta, TTL: ep.TTL}, nil
}

// Pickable reports whether a new request may go to the endpoint. An
// endpoint being removed or Drained never may; with ignoreHealth (panic mode: every
// other choice is out of rotation too) any other may. Otherwise it must be
// in rotation, and an endpoint in slow start is pickable with the
// probability of its current share, drawn anew at every call.
func (ep *Endpoint) Pickable(ignoreHealth bool) bool {
	if ep.Weight == Drained {
		return false
	}
	h := ep.health
	state := h.state.Load()
	if ignoreHealth {
		return state&outDraining == 0
	}
	return state == 0 && (h.rampEnd.Load() == 0 || h.rampPick())
}

// rampPick draws whether an endpoint in slow start takes a request.
func (h *endpointHealth) rampPick() bool {
	share := h.rampShare(h.now().UnixNano())
	return share >= 1 || rand.Float64() < share
}

// Sent counts a request's try sent to the endpoint. It is meant for the
// request path: no allocation, no lock.
func (ep *Endpoint) Sent() { ep.health.requests.Add(1) }

// SetUsesTLS tells the registry whether the proxy speaks TLS to the
// endpoint, so that the checks that bring it back after failures do too.
// It is meant for every try: it writes only when that changes.
func (ep *Endpoint) SetUsesTLS(on bool) {
	if ep.health.tls.Load() != on {
		ep.health.tls.Store(on)
	}
}

// InFlightCounter counts the requests a proxy has in flight to one
// address, such as Caddy's reverseproxy.Host. It must be comparable (a
// pointer, as *reverseproxy.Host is): CountInFlight compares it with the
// one it has.
type InFlightCounter interface {
	NumRequests() int
}

// inFlightBox holds an InFlightCounter for an atomic pointer.
type inFlightBox struct{ c InFlightCounter }

// CountInFlight tells the registry where the proxy counts the endpoint's
// requests in flight, which drains, least_conn and the stats read. It is
// meant for every try: it writes only when c is a new counter.
func (ep *Endpoint) CountInFlight(c InFlightCounter) {
	if b := ep.health.inFlight.Load(); b != nil && b.c == c {
		return
	}
	ep.health.inFlight.Store(&inFlightBox{c})
}

// inFlight returns how many requests the proxy has in flight to the
// endpoint, as its InFlightCounter counts them.
func (ep *Endpoint) inFlight() int {
	if b := ep.health.inFlight.Load(); b != nil && b.c != nil {
		return b.c.NumRequests()
	}
	return 0
}

// Latency returns what the peak_ewma balance (balance.PeakEWMA) weighs
// the endpoint by at now: its peak-EWMA latency estimate, in nanoseconds,
// and the time since its last response (since the Unix epoch if it never
// answered: with requests in flight, a host that only ever timed out
// costs more than any other). known is false until a try's latency was
// first reported. now is the caller's reading of the clock the latencies
// are reported on (time.Now, unless Options.Now says otherwise), read
// once for both hosts of a choice.
func (ep *Endpoint) Latency(now time.Time) (ewma float64, sinceReply time.Duration, known bool) {
	h := ep.health
	if h.ewma.stamp.Load() == 0 {
		return 0, 0, false
	}
	t := now.UnixNano()
	return h.ewma.at(t), time.Duration(t - h.lastReply.Load()), true
}

// EndpointStats is a point-in-time view of an endpoint's health and
// counters.
type EndpointStats struct {
	// Available is true when the endpoint is in rotation.
	Available bool
	// OutOfRotation says why it is not: "draining" (being removed),
	// "probe" (failing its active checks), "unreachable" (could not be
	// connected to, or answered nobody while its peers answered),
	// "passive" (failed requests), or "" when it is in rotation.
	OutOfRotation string
	// Latency is its peak-EWMA response time, as balancing sees it.
	Latency time.Duration
	// Fails counts its failed requests in a row since it last answered.
	Fails int
	// LastFailure is when it last failed a request, or zero.
	LastFailure time.Time
	// NextCheck is when it is checked next while out after a failed
	// request, or zero.
	NextCheck time.Time
	// SlowStartUntil is when its slow start ends, or zero when it is not
	// ramping up.
	SlowStartUntil time.Time
	// InFlight counts the requests in flight to it.
	InFlight int
	// Requests counts the tries sent to it, Failures those that failed
	// without an answer, Ejections the times it left rotation after a
	// failed request.
	Requests, Failures, Ejections uint64
	// Checked is true once a check (active, or one that brings it back
	// after failures) has finished on it. An endpoint with neither
	// Requests nor Checked has not been tried: its health is not known yet.
	Checked bool
	// Held is true when the store no longer lists it, but the registry
	// keeps it a little longer because the store just came back from an
	// outage (see Feed.Reachable): it serves while it answers.
	Held bool
}

// Stats returns the endpoint's current health and counters.
func (ep *Endpoint) Stats() EndpointStats {
	h := ep.health
	st := EndpointStats{
		Available:   h.available(),
		Fails:       int(h.fails.Load()),
		LastFailure: unixTime(h.lastFailure.Load()),
		InFlight:    ep.inFlight(),
		Requests:    h.requests.Load(),
		Failures:    h.failures.Load(),
		Ejections:   h.ejections.Load(),
		Held:        h.held.Load(),
		Checked:     h.checked.Load(),
	}
	switch {
	case h.out(outDraining):
		st.OutOfRotation = "draining"
	case h.out(outProbe):
		st.OutOfRotation = "probe"
	case h.out(outUnreachable):
		st.OutOfRotation = "unreachable"
		st.NextCheck = unixTime(h.nextProbe.Load())
	case h.out(outPassive):
		st.OutOfRotation = "passive"
		st.NextCheck = unixTime(h.nextProbe.Load())
	}
	st.Latency = time.Duration(h.ewma.at(h.now().UnixNano()))
	if end := h.rampEnd.Load(); end > h.now().UnixNano() {
		st.SlowStartUntil = time.Unix(0, end)
	}
	return st
}

func unixTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

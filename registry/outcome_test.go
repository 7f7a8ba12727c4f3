package registry

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/registry/balance"
)

// TestReportOutcomes feeds each outcome of a try to the health state
// machine: answers reset the count of gateway errors; EjectAfter gateway
// errors or timeouts in a row take an endpoint out; a failed connection
// takes it out at once; every failure counts.
func TestReportOutcomes(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	a := "127.0.0.1:1"
	for _, tc := range []struct {
		name     string
		outcomes []Outcome
		out      string // OutOfRotation after them
		failures uint64
	}{
		{"answers", []Outcome{Answered, Answered}, "", 0},
		{"two gateway errors", []Outcome{GatewayError, GatewayError}, "", 2},
		{"three gateway errors", []Outcome{GatewayError, GatewayError, GatewayError}, "passive", 3},
		{"timed out", []Outcome{TimedOut}, "passive", 1},
		{"an answer in between", []Outcome{GatewayError, GatewayError, Answered, GatewayError, GatewayError}, "", 4},
		{"failed", []Outcome{Failed}, "passive", 1},
		{"unreachable", []Outcome{Unreachable}, "unreachable", 1},
		{"silent", []Outcome{Silent}, "unreachable", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(t, map[ServiceKey][]Endpoint{key: eps(a, "127.0.0.1:2", "127.0.0.1:3")})
			svc, _ := m.table.Snapshot().Lookup("users", "v1")
			ep := svc.Endpoint(a)
			for _, o := range tc.outcomes {
				m.c.report(svc, ep, o, time.Millisecond, m.clock.Now())
			}
			if st := ep.Stats(); st.OutOfRotation != tc.out || st.Failures != tc.failures {
				t.Errorf("after %v: out %q with %d failures; want %q, %d", tc.outcomes, st.OutOfRotation, st.Failures, tc.out, tc.failures)
			}
		})
	}
}

// TestUnreachableOutsideTheLimit fails 2 of 3 hosts: failed requests stay
// within the 50% ejection limit (one goes back in), hosts that cannot be
// connected to are all out.
func TestUnreachableOutsideTheLimit(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	hosts := []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
	for _, tc := range []struct {
		o    Outcome
		want int // endpoints out
	}{{Failed, 1}, {Unreachable, 2}, {Silent, 2}} {
		m := newMachine(t, map[ServiceKey][]Endpoint{key: eps(hosts...)})
		svc, _ := m.table.Snapshot().Lookup("users", "v1")
		for _, h := range hosts[:2] {
			m.c.report(svc, svc.Endpoint(h), tc.o, 0, m.clock.Now())
			m.clock.Advance(time.Millisecond)
		}
		out := 0
		for _, ep := range svc.Endpoints {
			if !ep.Stats().Available {
				out++
			}
		}
		if out != tc.want {
			t.Errorf("2 of 3 hosts %s: %d out of rotation, want %d", tc.o, out, tc.want)
		}
	}
}

// TestPassiveCheckNeedsAnHTTPAnswer checks what brings an endpoint back
// after failed requests: an HTTP answer below 500, not a TCP connect.
func TestPassiveCheckNeedsAnHTTPAnswer(t *testing.T) {
	// accepts connections (as a frozen process's kernel does), never answers
	blackHole, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	done := make(chan struct{})
	defer func() { blackHole.Close(); <-done }()
	go func() {
		defer close(done)
		var held []net.Conn
		for {
			c, err := blackHole.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	defer failing.Close()
	missing := httptest.NewServer(http.NotFoundHandler())
	defer missing.Close()
	secure := httptest.NewTLSServer(http.NotFoundHandler())
	defer secure.Close()

	for _, tc := range []struct {
		name, addr string
		tls        bool
		want       string // "" = passes
	}{
		{"accepts, never answers", blackHole.Addr().String(), false, "deadline"},
		{"answers 503", failing.Listener.Addr().String(), false, "status 503"},
		{"answers 404", missing.Listener.Addr().String(), false, ""},
		{"answers over TLS", secure.Listener.Addr().String(), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := probe(t, tc.addr, HealthCheck{Timeout: Duration(300 * time.Millisecond)}, tc.tls)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("passive check: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLatencyBuckets(t *testing.T) {
	prev := -1
	for _, d := range []time.Duration{0, time.Microsecond, 1500 * time.Nanosecond, time.Millisecond, 1300 * time.Microsecond, time.Second, time.Hour} {
		b := bucket(d)
		if b < prev || b >= histBuckets {
			t.Errorf("bucket(%v) = %d after %d", d, b, prev)
		}
		prev = b
		if top := bucketTop(b); d >= 2*time.Microsecond && d < time.Minute && (top < d || top > d*5/4+1) {
			t.Errorf("bucket of %v tops at %v, want within 25%% above it", d, top)
		}
	}
}

// TestLatencyP99 fills a service's histogram: 1% of slow answers make the
// p99, old samples age out after two windows, and there is no p99 before
// 20 samples (and one with the 20th).
func TestLatencyP99(t *testing.T) {
	var h latencyHist
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	for range 19 {
		h.observe(time.Millisecond, now)
	}
	if p := h.quantile99(now); p != 0 {
		t.Errorf("p99 of 19 samples = %v, want none", p)
	}
	// the 20th sample makes a p99 at once, not a refresh later
	h.observe(time.Millisecond, now)
	if p := h.quantile99(now); p == 0 {
		t.Error("no p99 right after the 20th sample")
	}
	for range 978 {
		h.observe(time.Millisecond, now)
	}
	for range 22 {
		h.observe(200*time.Millisecond, now)
	}
	now += int64(histRefresh)
	if p := h.quantile99(now); p < 200*time.Millisecond || p > 250*time.Millisecond {
		t.Errorf("p99 with 2.2%% of 200ms = %v, want about 200ms", p)
	}
	// 20 s later only fast samples: the slow ones age out.
	now += int64(2*histWindow) + 1
	for range 100 {
		h.observe(time.Millisecond, now)
	}
	now += int64(histRefresh)
	if p := h.quantile99(now); p > 2*time.Millisecond {
		t.Errorf("p99 after the slow samples aged out = %v", p)
	}
}

func TestPeakEWMA(t *testing.T) {
	var e peakEWMA
	now := int64(1e18)
	e.observe(time.Millisecond, now)
	e.observe(time.Second, now) // a peak counts at once
	if v := e.at(now); v != float64(time.Second) {
		t.Errorf("after a peak: %v", time.Duration(v))
	}
	now += int64(time.Millisecond)
	e.observe(time.Millisecond, now) // a fast sample right after barely moves it
	if v := time.Duration(e.at(now)); v < 900*time.Millisecond {
		t.Errorf("a fast sample 1ms later pulled it to %v", v)
	}
	if v := time.Duration(e.at(now + int64(30*time.Second))); v > 60*time.Millisecond {
		t.Errorf("30s without samples it is still %v: an idle host must look fast again", v)
	}
}

// threeHosts returns a fake clock and the service users v1 with three
// hosts, in a table on that clock.
func threeHosts(t *testing.T) (*fakeClock, *Service) {
	t.Helper()
	clock := newFakeClock()
	tbl := newTable(clock.Now)
	tbl.replace(normalized(t, map[ServiceKey][]Endpoint{{"users", "v1"}: eps("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")}))
	svc, err := tbl.Snapshot().Lookup("users", "v1")
	if err != nil {
		t.Fatal(err)
	}
	return clock, svc
}

// TestPeakEWMABalance sends requests over three hosts of which one is
// slow: peak_ewma gives it a small share, and more again once its latency
// is old news.
func TestPeakEWMABalance(t *testing.T) {
	clock, svc := threeHosts(t)
	now := clock.Now().UnixNano()
	for i, ep := range svc.Endpoints {
		lat := time.Millisecond
		if i == 2 {
			lat = time.Second
		}
		ep.health.ewma.observe(lat, now)
		ep.health.lastReply.Store(now)
	}
	counts := make([]int, 3)
	for range 3000 {
		p := newSvcPool(svc)
		p.inFlight = []int{2, 2, 0} // the slow one is idle, the others busy
		counts[balance.PeakEWMA.Pick(p, svc.Rotation(), false)]++
	}
	if counts[2] > 30 {
		t.Errorf("the slow host got %d of 3000 picks (%v)", counts[2], counts)
	}
	if counts[0] < 1200 || counts[1] < 1200 {
		t.Errorf("two equal hosts did not share evenly: %v", counts)
	}
	// two minutes on, the fast hosts answering all along: its slowness is
	// old news
	for range 1200 {
		now = clock.Advance(100 * time.Millisecond).UnixNano()
		for _, ep := range svc.Endpoints[:2] {
			ep.health.ewma.observe(time.Millisecond, now)
			ep.health.lastReply.Store(now)
		}
	}
	counts = make([]int, 3)
	for range 3000 {
		p := newSvcPool(svc)
		p.inFlight = []int{2, 2, 0}
		counts[balance.PeakEWMA.Pick(p, svc.Rotation(), false)]++
	}
	if counts[2] < 300 {
		t.Errorf("two minutes on, the once slow host got %d of 3000 picks (%v)", counts[2], counts)
	}
}

// TestTimeoutsTeachANewService checks the latency a service's deadline
// follows: timed-out tries count at their deadline only while the service
// has no latency yet (so a slow new service learns it), never after (so a
// hung host does not stretch its peers' deadlines).
func TestTimeoutsTeachANewService(t *testing.T) {
	key := ServiceKey{"users", "v1"}
	m := newMachine(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1", "127.0.0.1:2")}, HealthCheck{MaxEjectedPercent: 100})
	svc, _ := m.table.Snapshot().Lookup("users", "v1")
	for range 20 {
		m.c.report(svc, svc.Endpoints[0], TimedOut, 2*time.Second, m.clock.Now())
	}
	m.clock.Advance(histRefresh)
	if p := svc.LatencyP99(m.clock.Now()); p < 2*time.Second || p > 3*time.Second {
		t.Errorf("a new service whose tries all timed out at 2s: p99 %v, want about 2s", p)
	}

	m = newMachine(t, map[ServiceKey][]Endpoint{key: eps("127.0.0.1:1", "127.0.0.1:2")}, HealthCheck{MaxEjectedPercent: 100})
	svc, _ = m.table.Snapshot().Lookup("users", "v1")
	for range 100 {
		m.c.report(svc, svc.Endpoints[1], Answered, time.Millisecond, m.clock.Now())
	}
	m.clock.Advance(histRefresh)
	for range 20 {
		m.c.report(svc, svc.Endpoints[0], TimedOut, 2*time.Second, m.clock.Now())
	}
	m.clock.Advance(histRefresh)
	if p := svc.LatencyP99(m.clock.Now()); p > 2*time.Millisecond {
		t.Errorf("a service with a latency, one host timing out: p99 %v, want its peers' 1ms", p)
	}
}

// TestPeakEWMAStoppedAnswering checks that a host with requests in flight
// and no answer for a while costs as much as that wait: it stops getting
// requests long before they time out.
func TestPeakEWMAStoppedAnswering(t *testing.T) {
	clock, svc := threeHosts(t)
	now := clock.Now().UnixNano()
	for _, ep := range svc.Endpoints {
		ep.health.ewma.observe(time.Millisecond, now)
		ep.health.lastReply.Store(now)
	}
	// 50 ms later, host 0 has not answered since; the others just did.
	now = clock.Advance(50 * time.Millisecond).UnixNano()
	svc.Endpoints[1].health.lastReply.Store(now)
	svc.Endpoints[2].health.lastReply.Store(now)
	counts := make([]int, 3)
	for range 3000 {
		p := newSvcPool(svc)
		p.inFlight = []int{3, 5, 5}
		counts[balance.PeakEWMA.Pick(p, svc.Rotation(), false)]++
	}
	if counts[0] > 300 {
		t.Errorf("a host silent for 50 ms with requests in flight got %d of 3000 (%v)", counts[0], counts)
	}
}

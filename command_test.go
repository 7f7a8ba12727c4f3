package svcreg

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseSplit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]int
		err  string
	}{
		{in: "v1=90,v2=10", want: map[string]int{"v1": 90, "v2": 10}},
		{in: " v1 = 100 ", want: map[string]int{"v1": 100}},
		{in: "v1=0,v2=100", want: map[string]int{"v1": 0, "v2": 100}},
		{in: "v1", err: "want key=value"},
		{in: "v1=", err: "want key=value"},
		{in: "=10", err: "want key=value"},
		{in: "v1=90,,v2=10", err: "want key=value"},
		{in: "v1=ninety", err: `weight "ninety" of v1`},
		{in: "v1=101", err: "0 to 100"},
		{in: "v1=-1", err: "0 to 100"},
		{in: "v1=50,v1=50", err: `"v1" given twice`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseSplit(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseSplit(%q) = %v, %v; want an error mentioning %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("parseSplit(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParseSticky(t *testing.T) {
	for _, tc := range []struct {
		in, sticky, header string
		ok                 bool
	}{
		{"cookie", "cookie", "", true},
		{"ip", "ip", "", true},
		{"off", "off", "", true},
		{"header:X-User", "header", "X-User", true},
		{"header:", "", "", false},
		{"header", "", "", false},
		{"Cookie", "", "", false},
		{"", "", "", false},
	} {
		sticky, header, err := parseSticky(tc.in)
		if (err == nil) != tc.ok || sticky != tc.sticky || header != tc.header {
			t.Errorf("parseSticky(%q) = %q, %q, %v; want %q, %q, ok %v", tc.in, sticky, header, err, tc.sticky, tc.header, tc.ok)
		}
	}
}

func TestWriteEndpointTable(t *testing.T) {
	var b strings.Builder
	err := writeEndpointTable(&b, []serviceStatus{
		{Name: "users", Version: "v1", Endpoints: []endpointStatus{
			{Address: "127.0.0.1:9091", Weight: 1, Healthy: true, Requests: 12, Latency: "1.2ms"},
			{Address: "127.0.0.1:19092", Weight: 100, OutOfRotation: "probe", InFlight: 3, Failures: 2},
			{Address: "127.0.0.1:9093", Weight: 0, Drained: true, Healthy: true, Metadata: map[string]string{"zone": "a", "rack": "2"}},
			{Address: "127.0.0.1:9094", Weight: 0, Drained: true, OutOfRotation: "unreachable"},
			{Address: "127.0.0.1:9095", Weight: 1, Healthy: true, NotTried: true},
		}},
		{Name: "orders", Version: "v10"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `SERVICE  VERSION  ADDRESS          WEIGHT  HEALTH                      IN-FLIGHT  REQUESTS  FAILURES  LATENCY  METADATA
users    v1       127.0.0.1:9091   1       in                          0          12        0         1.2ms    -
users    v1       127.0.0.1:19092  100     out (probe)                 3          0         2         -        -
users    v1       127.0.0.1:9093   0       drained, in                 0          0         0         -        rack=2,zone=a
users    v1       127.0.0.1:9094   0       drained, out (unreachable)  0          0         0         -        -
users    v1       127.0.0.1:9095   1       in (not tried)              0          0         0         -        -
orders   v10      -                -       -                           -          -         -         -        -
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestRequestError(t *testing.T) {
	c := adminClient{addr: "127.0.0.1:2999"}
	for _, tc := range []struct{ in, want string }{
		{"caddy responded with error: HTTP 400: {\"error\":\"bad address \\\"x\\\": want host:port\"}\n",
			`bad address "x": want host:port (400 from DELETE /u)`},
		{"caddy responded with error: HTTP 502: bad gateway", "bad gateway (502 from DELETE /u)"},
		{"performing request: dial tcp 127.0.0.1:2999: connect: connection refused",
			"admin endpoint 127.0.0.1:2999 unreachable"},
	} {
		if got := c.requestError(http.MethodDelete, "/u", errors.New(tc.in)).Error(); !strings.HasPrefix(got, tc.want) {
			t.Errorf("requestError(%q) = %q; want it to start with %q", tc.in, got, tc.want)
		}
	}
}

func TestWatchServices(t *testing.T) {
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := gets.Add(1)
		orders := `,{"name":"orders","version":"v1","endpoints":[]}`
		if r.URL.Path == "/service_registry/services/users" {
			orders = ""
		}
		fmt.Fprintf(w, `{"synced":true,"services":[{"name":"users","version":"v1","endpoints":[{"address":"127.0.0.1:%d","weight":1,"healthy":true}]}%s]}`, 9090+n, orders)
	}))
	defer srv.Close()
	c := adminClient{addr: strings.TrimPrefix(srv.URL, "http://")}

	for _, terminal := range []bool{false, true} {
		var b strings.Builder
		code, err := watchServices(context.Background(), c, []string{"users"}, time.Millisecond, 3, &b, terminal)
		out := b.String()
		if code != 0 || err != nil {
			t.Fatalf("watch: %d, %v", code, err)
		}
		if n := strings.Count(out, "\x1b[H\x1b[2J"); (n == 3) != terminal || (n == 0) == terminal {
			t.Errorf("terminal %v: %d screen clears:\n%q", terminal, n, out)
		}
		if strings.Count(out, "--- ") != 3 || strings.Count(out, "SERVICE") != 3 || strings.Contains(out, "orders") {
			t.Errorf("terminal %v: want 3 stamped tables of users only:\n%s", terminal, out)
		}
	}

	// A cancelled watch ends after its first drawing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var b strings.Builder
	if code, err := watchServices(ctx, c, nil, time.Hour, 0, &b, false); code != 0 || err != nil || strings.Count(b.String(), "--- ") != 1 {
		t.Errorf("cancelled watch: %d, %v\n%s", code, err, b.String())
	}
}

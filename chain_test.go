package svcreg

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(stubTransport{})
}

// stubTransport answers every request 200 "ok" at once, so that a
// benchmark measures Caddy's handler chain without a network.
type stubTransport struct{}

func (stubTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.svcreg_stub",
		New: func() caddy.Module { return new(stubTransport) },
	}
}

func (stubTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"text/plain"}}, Body: io.NopCloser(strings.NewReader("ok")),
		ContentLength: 2, Request: r,
	}, nil
}

func (*stubTransport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return nil
}

// chainConfigs are the two configurations the handler-chain benchmark
// compares: Caddy's own reverse_proxy with static upstreams (round_robin,
// lb_retries 2, as BENCHMARKS' throughput runs), and service_proxy with its
// defaults; both with the stub transport.
var chainConfigs = []struct{ name, global, site string }{
	{"reverse_proxy", "", `reverse_proxy 127.0.0.1:9001 127.0.0.1:9002 {
		lb_policy round_robin
		lb_retries 2
		transport svcreg_stub
	}`},
	{"service_proxy", `service_registry {
		service users v1 127.0.0.1:9001 127.0.0.1:9002
	}`, `service_proxy {
		transport svcreg_stub
	}`},
}

// loadChain runs a Caddy config in this process and returns its HTTP
// server's handler, stopped when the benchmark ends.
func loadChain(b *testing.B, global, site string) (http.Handler, string) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	caddyfileText := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage file_system %s\n\t%s\n}\n\nhttp://%s {\n\t%s\n}\n", b.TempDir(), global, addr, site)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = caddy.Stop() })
	app, err := caddy.ActiveContext().App("http")
	if err != nil {
		b.Fatal(err)
	}
	for _, srv := range app.(*caddyhttp.App).Servers {
		return srv, addr
	}
	b.Fatal("no server")
	return nil, ""
}

// BenchmarkHandlerChain sends GET /users/v1/list through each
// configuration's whole handler chain, in process (no network, a stub
// transport): what Caddy spends per request besides the connections.
// Compare the two in one run, interleaved: -count 5 runs them in turn.
func BenchmarkHandlerChain(b *testing.B) {
	for _, c := range chainConfigs {
		b.Run(c.name, func(b *testing.B) { benchChain(b, c.global, c.site) })
	}
}

// BenchmarkHandlerChainNet is BenchmarkHandlerChain with each
// configuration's own transport (Caddy's http, and service_http) to a
// real backend on 127.0.0.1 (two listeners of one Go HTTP server): the
// handler chain plus the transport's work per request, keep-alive
// connections and all.
func BenchmarkHandlerChainNet(b *testing.B) {
	backend := func() string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "ok")
		}))
		b.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	a, c := backend(), backend()
	registry := fmt.Sprintf(`service_registry {
		service users v1 %s %s
	}`, a, c)
	// Between the two, for a breakdown: reverse_proxy with static
	// upstreams and service_http; and with the registry's upstream source
	// and selection policy, over Caddy's http transport.
	configs := []struct{ name, global, site string }{
		{"reverse_proxy", "", fmt.Sprintf(`reverse_proxy %s %s {
		lb_policy round_robin
		lb_retries 2
	}`, a, c)},
		{"rp_service_http", registry, fmt.Sprintf(`reverse_proxy %s %s {
		lb_policy round_robin
		lb_retries 2
		transport service_http
	}`, a, c)},
		{"rp_registry_source", registry, `reverse_proxy {
		dynamic service_registry users v1
		lb_policy service_failover round_robin
		lb_retries 2
	}`},
		{"service_proxy", registry, `service_proxy`},
		{"service_proxy_hedge_off", registry, `service_proxy {
		transport service_http {
			hedge off
		}
	}`},
	}
	for _, cfg := range configs {
		b.Run(cfg.name, func(b *testing.B) { benchChain(b, cfg.global, cfg.site) })
	}
}

// benchChain loads a config and sends GET /users/v1/list through its
// handler chain b.N times.
func benchChain(b *testing.B, global, site string) {
	h, addr := loadChain(b, global, site)
	req := httptest.NewRequest(http.MethodGet, "http://"+addr+"/users/v1/list", nil)
	req.RemoteAddr = "127.0.0.1:40000"
	w := &discardWriter{header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.header)
		w.status = 0
		req.URL.Path, req.URL.RawPath = "/users/v1/list", "" // the strip rewrote it
		h.ServeHTTP(w, req)
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
}

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.header }
func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// proxy is one configuration under test.
type proxy struct {
	// Name identifies the configuration in the results.
	Name string
	// Desc is the relevant part of its config, for the report.
	Desc string
	// start runs it in front of backends and returns it; nil when the
	// configuration needs a program that is not installed.
	start func(e *env, backends []string) (*runningProxy, error)
}

// runningProxy is a started proxy.
type runningProxy struct {
	addr  string // host:port the load goes to
	path  string // request path
	proc  *proc  // nil for "direct"
	admin string // Caddy's admin address; "" for other proxies
}

func (r *runningProxy) stop() {
	if r.proc != nil {
		r.proc.stop(syscall.SIGTERM)
	}
}

// caddyProxy is Caddy with the given global options and site body; {b} in
// either stands for the backend addresses.
func caddyProxy(name, desc, global, site, path string) proxy {
	return proxy{Name: name, Desc: desc, start: func(e *env, backends []string) (*runningProxy, error) {
		b := strings.Join(backends, " ")
		r, err := startCaddy(e, name, strings.ReplaceAll(global, "{b}", b), strings.ReplaceAll(site, "{b}", b))
		if err != nil {
			return nil, err
		}
		r.path = path
		return r, nil
	}}
}

// startCaddy runs Caddy with the given global options and site body on
// fresh loopback ports and returns once its admin endpoint answers and its
// site listens.
func startCaddy(e *env, name, global, site string) (*runningProxy, error) {
	dir, err := os.MkdirTemp(e.tmp, name+"-")
	if err != nil {
		return nil, err
	}
	port, admin := freePort(), freePort()
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	storage file_system %s
	%s
}

:%d {
	%s
}
`, admin, filepath.Join(dir, "storage"), global, port, site)
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := start(name, dir, e.proxyCommand(e.caddy, "run", "--config", file, "--adapter", "caddyfile")...)
	if err != nil {
		return nil, err
	}
	r := &runningProxy{addr: fmt.Sprintf("127.0.0.1:%d", port), proc: p, admin: fmt.Sprintf("127.0.0.1:%d", admin)}
	err = waitHTTP("http://"+r.admin+"/config/", 60*time.Second)
	if err == nil {
		err = waitTCP(r.addr, 30*time.Second)
	}
	if err != nil {
		p.stop(syscall.SIGKILL)
		return nil, fmt.Errorf("%s: %w\n%s", name, err, p.out.String())
	}
	return r, nil
}

const benchPath = "/bench/v1/x"

var (
	serviceProxy = caddyProxy("service_proxy", "`service_proxy` with its defaults",
		"service_registry {\n\t\tservice bench v1 {b}\n\t}", "service_proxy", benchPath)
	serviceProxyNoHedge = caddyProxy("service_proxy_hedge_off", "`service_proxy { transport service_http { hedge off } }`: the defaults without hedged tries",
		"service_registry {\n\t\tservice bench v1 {b}\n\t}", "service_proxy {\n\t\ttransport service_http {\n\t\t\thedge off\n\t\t}\n\t}", benchPath)
	serviceProxyH2C = caddyProxy("service_proxy_h2c", "`service_proxy { transport http { versions h2c } }`: the same over HTTP/2 without TLS to the hosts",
		"service_registry {\n\t\tservice bench v1 {b}\n\t}", "service_proxy {\n\t\ttransport http {\n\t\t\tversions h2c\n\t\t}\n\t}", benchPath)
	caddyPlain = caddyProxy("caddy_round_robin", "`reverse_proxy {b} { lb_policy round_robin }` (static upstreams)",
		"", "reverse_proxy {b} {\n\t\tlb_policy round_robin\n\t}", benchPath)
	caddyDefault = caddyProxy("caddy_default", "`reverse_proxy {b}`: Caddy's defaults (random, no retries)",
		"", "reverse_proxy {b}", benchPath)
	caddyRetries = caddyProxy("caddy_lb_retries_2", "`reverse_proxy {b} { lb_retries 2 }`",
		"", "reverse_proxy {b} {\n\t\tlb_retries 2\n\t}", benchPath)
	caddyTryDuration = caddyProxy("caddy_lb_try_duration_2s", "`reverse_proxy {b} { lb_try_duration 2s }` (250 ms between tries)",
		"", "reverse_proxy {b} {\n\t\tlb_try_duration 2s\n\t}", benchPath)
	caddyTimeouts = caddyProxy("caddy_tuned", "`reverse_proxy {b} { lb_retries 2; fail_duration 10s; transport http { response_header_timeout 1s; dial_timeout 1s } }`",
		"", "reverse_proxy {b} {\n\t\tlb_retries 2\n\t\tfail_duration 10s\n\t\ttransport http {\n\t\t\tresponse_header_timeout 1s\n\t\t\tdial_timeout 1s\n\t\t}\n\t}", benchPath)
	caddyPassive = caddyProxy("caddy_passive_health", "`reverse_proxy {b} { lb_retries 2; fail_duration 10s }` (passive health, max_fails 1)",
		"", "reverse_proxy {b} {\n\t\tlb_retries 2\n\t\tfail_duration 10s\n\t}", benchPath)
)

// direct sends the load straight to the first backend.
var direct = proxy{Name: "direct", Desc: "no proxy: straight to one backend", start: func(e *env, backends []string) (*runningProxy, error) {
	return &runningProxy{addr: backends[0], path: benchPath}, nil
}}

// nginxProxy is nginx from the distribution with an upstream block,
// keep-alive to the backends and its default retry on errors.
var nginxProxy = proxy{Name: "nginx", Desc: "nginx: `upstream` round robin, `keepalive 64`, `proxy_next_upstream error timeout`, `max_fails=1 fail_timeout=10s`", start: func(e *env, backends []string) (*runningProxy, error) {
	if e.nginx == "" {
		return nil, nil
	}
	dir, err := os.MkdirTemp(e.tmp, "nginx-")
	if err != nil {
		return nil, err
	}
	port := freePort()
	var servers strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&servers, "\t\tserver %s max_fails=1 fail_timeout=10s;\n", b)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	cfg := fmt.Sprintf(`%s
worker_processes auto;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	upstream bench {
%[3]s		keepalive 64;
	}
	server {
		listen 127.0.0.1:%[4]d;
		location / {
			proxy_pass http://bench;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_next_upstream error timeout;
			proxy_connect_timeout 1s;
		}
	}
}
`, user, dir, servers.String(), port)
	file := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := start("nginx", dir, e.proxyCommand(e.nginx, "-p", dir, "-c", file)...)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitTCP(addr, 10*time.Second); err != nil {
		p.stop(syscall.SIGKILL)
		return nil, fmt.Errorf("nginx: %w\n%s", err, p.out.String())
	}
	return &runningProxy{addr: addr, path: benchPath, proc: p}, nil
}}

// haproxyProxy is HAProxy from the distribution, round robin with active
// checks every second, two retries and redispatch to another server.
var haproxyProxy = proxy{Name: "haproxy", Desc: "HAProxy: `balance roundrobin`, `retries 2`, `option redispatch 1`, `check inter 1s fall 1 rise 1`", start: func(e *env, backends []string) (*runningProxy, error) {
	if e.haproxy == "" {
		return nil, nil
	}
	dir, err := os.MkdirTemp(e.tmp, "haproxy-")
	if err != nil {
		return nil, err
	}
	port := freePort()
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "\tserver b%d %s check inter 1s fall 1 rise 1\n", i+1, b)
	}
	cfg := fmt.Sprintf(`global
	maxconn 8192
defaults
	mode http
	timeout connect 1s
	timeout client 30s
	timeout server 30s
	retries 2
	option redispatch 1
	option http-keep-alive
frontend fe
	bind 127.0.0.1:%d
	default_backend be
backend be
	balance roundrobin
%s`, port, servers.String())
	file := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := start("haproxy", dir, e.proxyCommand(e.haproxy, "-f", file, "-db")...)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitTCP(addr, 10*time.Second); err != nil {
		p.stop(syscall.SIGKILL)
		return nil, fmt.Errorf("haproxy: %w\n%s", err, p.out.String())
	}
	return &runningProxy{addr: addr, path: benchPath, proc: p}, nil
}}

// backendSet is the benchmark's backend processes.
type backendSet struct {
	e     *env
	addrs []string
	procs []*proc
	delay time.Duration
}

func startBackends(e *env, n int, delay time.Duration) (*backendSet, error) {
	s := &backendSet{e: e, delay: delay}
	for i := range n {
		s.addrs = append(s.addrs, fmt.Sprintf("127.0.0.1:%d", freePort()))
		if err := s.startOne(i); err != nil {
			s.stopAll()
			return nil, err
		}
	}
	return s, nil
}

// startOne (re)starts backend i on its address.
func (s *backendSet) startOne(i int) error {
	if len(s.procs) <= i {
		s.procs = append(s.procs, nil)
	}
	name := fmt.Sprintf("b%d", i+1)
	// -h2c: the backends also take HTTP/2 without TLS, for service_proxy_h2c
	args := []string{s.e.backend, "-listen", s.addrs[i], "-name", name, "-delay", s.delay.String(), "-h2c"}
	if s.e.read {
		args = append(args, "-read-body")
	}
	p, err := start(name, s.e.tmp, args...)
	if err != nil {
		return err
	}
	s.procs[i] = p
	return waitTCP(s.addrs[i], 10*time.Second)
}

func (s *backendSet) stopAll() {
	for _, p := range s.procs {
		if p != nil {
			p.stop(syscall.SIGKILL)
		}
	}
}

package svcreg

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/svcreg/caddy-svcreg/registry"
)

// adapt turns a Caddyfile into JSON, decoded for comparison.
func adapt(t *testing.T, filename, caddyfile string) (any, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": filename})
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("adapter output is not JSON: %v", err)
	}
	return v, nil
}

// TestCaddyfileAdapt compares every testdata/caddyfile/*.caddytest input
// (above the ---------- line) with its expected JSON (below).
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile/*.caddytest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			input, expected, ok := strings.Cut(string(data), "\n----------\n")
			if !ok {
				t.Fatalf("%s has no ---------- line", f)
			}
			if !caddytest.CompareAdapt(t, f, input+"\n", "caddyfile", strings.TrimSpace(expected)) {
				t.Errorf("%s: adapted JSON differs", f)
			}
		})
	}
}

// flattenHandle replaces, in an adapted config, a subroute that holds a
// single route without matchers that ends in reverse_proxy by that route's
// handlers: what a handle block adds around its directives, and
// service_proxy leaves out.
func flattenHandle(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if handlers, ok := x["handle"].([]any); ok && len(handlers) == 1 {
			if sub, ok := handlers[0].(map[string]any); ok && sub["handler"] == "subroute" {
				if routes, ok := sub["routes"].([]any); ok && len(routes) == 1 {
					if inner, ok := routes[0].(map[string]any); ok && inner["match"] == nil && len(inner) == 1 && proxies(inner["handle"]) {
						x["handle"] = inner["handle"]
					}
				}
			}
		}
		delete(x, "group") // handle blocks are grouped; one alone changes nothing
		for k, e := range x {
			x[k] = flattenHandle(e)
		}
	case []any:
		for i, e := range x {
			x[i] = flattenHandle(e)
		}
	}
	return v
}

// proxies reports whether a list of handlers ends in reverse_proxy: the
// service routes flattenHandle compares.
func proxies(handle any) bool {
	handlers, ok := handle.([]any)
	if !ok || len(handlers) == 0 {
		return false
	}
	last, ok := handlers[len(handlers)-1].(map[string]any)
	return ok && last["handler"] == "reverse_proxy"
}

// editObjects calls edit on every JSON object in v, depth first, and
// reports whether any call did (returned true).
func editObjects(v any, edit func(map[string]any) bool) bool {
	found := false
	switch x := v.(type) {
	case map[string]any:
		found = edit(x)
		for _, e := range x {
			found = editObjects(e, edit) || found
		}
	case []any:
		for _, e := range x {
			found = editObjects(e, edit) || found
		}
	}
	return found
}

// dropOwnErrors removes, in an adapted config, what makes service_proxy's
// route answer its own errors (the service_errors handler first, the
// matcher's unknown match mode), and reports whether there was both; the
// handler's strip_prefix becomes the rewrite handler it stands for.
func dropOwnErrors(v any) bool {
	return editObjects(v, func(x map[string]any) bool {
		match, _ := x["match"].([]any)
		handlers, _ := x["handle"].([]any)
		if len(match) != 1 || len(handlers) == 0 {
			return false
		}
		set, _ := match[0].(map[string]any)
		sv, _ := set["service_version"].(map[string]any)
		first, _ := handlers[0].(map[string]any)
		strip := first["strip_prefix"] == true
		if sv == nil || sv["unknown"] != "match" || first["handler"] != "service_errors" || len(first) != map[bool]int{false: 1, true: 2}[strip] {
			return false
		}
		delete(sv, "unknown")
		x["handle"] = handlers[1:]
		if strip {
			// what uri strip_prefix {svc.prefix} does
			x["handle"] = append([]any{map[string]any{"handler": "rewrite", "strip_path_prefix": "{svc.prefix}"}}, handlers[1:]...)
		}
		return true
	})
}

// dropErrorRoutes removes the servers' error routes from an adapted
// config, and reports whether there were any.
func dropErrorRoutes(v any) bool {
	return editObjects(v, func(x map[string]any) bool {
		if _, ok := x["errors"]; !ok {
			return false
		}
		delete(x, "errors")
		return true
	})
}

// TestServiceProxyIsLongForm checks that service_proxy adapts to the long
// form that README.md documents, but for the handle block's subroute and
// its errors answered in its route (service_errors) rather than by
// handle_errors.
func TestServiceProxyIsLongForm(t *testing.T) {
	for _, tc := range []struct{ name, short, long string }{
		{
			name:  "defaults",
			short: "service_proxy",
			long: `@svc service_version
	handle @svc {
		uri strip_prefix {svc.prefix}
		reverse_proxy {
			dynamic service_registry
			lb_policy service_failover peak_ewma
			lb_retries 16
			lb_retry_match {
				method GET HEAD OPTIONS
			}
			lb_retry_match {
				header Idempotency-Key *
			}
			lb_retry_match {
				header X-Idempotency-Key *
			}
			request_buffers 1MiB
			transport service_http {
				dial_timeout 1s
			}
		}
	}
	handle_errors {
		@svc_error not vars {svc.error} ""
		respond @svc_error "{svc.error}" {http.error.status_code}
		@svc_failed not vars {svc.name} ""
		respond @svc_failed ` + "`" + `no host of service "{svc.name}" version "{svc.version}" answered` + "`" + ` {http.error.status_code}
	}`,
		},
		{
			name: "options",
			short: `service_proxy {
		prefix /api
		lb_policy service_failover p2c
		retries 3
		strip_prefix off
		header_up X-Service {svc.name}
		lb_retry_match {
			method GET PUT
		}
		transport http {
			keepalive 30s
		}
	}`,
			long: `@svc service_version {
		prefix /api
	}
	handle @svc {
		reverse_proxy {
			dynamic service_registry
			lb_policy service_failover p2c
			lb_retries 3
			lb_retry_match {
				method GET PUT
			}
			lb_retry_match {
				method GET HEAD OPTIONS
			}
			lb_retry_match {
				header Idempotency-Key *
			}
			lb_retry_match {
				header X-Idempotency-Key *
			}
			header_up X-Service {svc.name}
			request_buffers 1MiB
			transport service_http {
				keepalive 30s
				dial_timeout 1s
			}
		}
	}
	handle_errors {
		@svc_error not vars {svc.error} ""
		respond @svc_error "{svc.error}" {http.error.status_code}
		@svc_failed not vars {svc.name} ""
		respond @svc_failed ` + "`" + `no host of service "{svc.name}" version "{svc.version}" answered` + "`" + ` {http.error.status_code}
	}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			short, err := adapt(t, "short", ":9090 {\n\t"+tc.short+"\n}\n")
			if err != nil {
				t.Fatal(err)
			}
			long, err := adapt(t, "long", ":9090 {\n\t"+tc.long+"\n}\n")
			if err != nil {
				t.Fatal(err)
			}
			if !dropOwnErrors(short) {
				t.Errorf("service_proxy's route does not answer its own errors (service_errors first, matcher in unknown match mode)")
			}
			if !dropErrorRoutes(long) {
				t.Errorf("the long form has no error routes")
			}
			long = flattenHandle(long)
			if !reflect.DeepEqual(short, long) {
				s, _ := json.MarshalIndent(short, "", "  ")
				l, _ := json.MarshalIndent(long, "", "  ")
				t.Errorf("short form:\n%s\n\nlong form:\n%s", s, l)
			}
		})
	}
}

// TestExamplesAdapt checks that every example's Caddyfile adapts to the
// JSON config shipped beside it.
func TestExamplesAdapt(t *testing.T) {
	dirs, err := filepath.Glob("examples/*/Caddyfile")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, cf := range dirs {
		dir := filepath.Dir(cf)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			input, err := os.ReadFile(cf)
			if err != nil {
				t.Fatal(err)
			}
			got, err := adapt(t, cf, string(input))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(filepath.Join(dir, "caddy.json"))
			if err != nil {
				t.Fatalf("example without its JSON config: %v", err)
			}
			var want any
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatalf("caddy.json: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				g, _ := json.MarshalIndent(got, "", "\t")
				t.Errorf("%s adapts to\n%s\nwhich differs from caddy.json", cf, g)
			}
		})
	}
}

func TestCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		line        int
		want        string
	}{
		{"unknown registry subdirective", "{\n\tservice_registry {\n\t\tbogus 1\n\t}\n}\n:80 {\n}\n", 3, `service_registry: unknown subdirective "bogus"`},
		{"service without version", "{\n\tservice_registry {\n\t\tservice users\n\t}\n}\n", 3, "service: want <name> <version>"},
		{"bad service name", "{\n\tservice_registry {\n\t\tservice us/ers v1\n\t}\n}\n", 3, `service: invalid service name "us/ers"`},
		{"bad seed address", "{\n\tservice_registry {\n\t\tservice users v1 127.0.0.1\n\t}\n}\n", 3, "service users v1: invalid address"},
		{"recovery_grace: bad duration", "{\n\tservice_registry {\n\t\trecovery_grace soon\n\t}\n}\n", 3, `recovery_grace: want a positive duration, got "soon" (or off)`},
		{"recovery_grace: twice", "{\n\tservice_registry {\n\t\trecovery_grace 1s\n\t\trecovery_grace 2s\n\t}\n}\n", 4, "recovery_grace: specified more than once"},
		{"recovery_grace: two values", "{\n\tservice_registry {\n\t\trecovery_grace 1s 2s\n\t}\n}\n", 3, "wrong argument count"},
		{"backend twice", "{\n\tservice_registry {\n\t\tbackend memory\n\t\tbackend memory\n\t}\n}\n", 4, "backend: specified more than once"},
		{"unknown backend", "{\n\tservice_registry {\n\t\tbackend nosuch\n\t}\n}\n", 3, "getting module named 'service_registry.backends.nosuch'"},
		{"unknown memory option", "{\n\tservice_registry {\n\t\tbackend memory {\n\t\t\tpath /x\n\t\t}\n\t}\n}\n", 4, `memory backend: unknown subdirective "path"`},
		{"matcher: too many args", ":80 {\n\t@s service_version a b c\n\trespond @s 200\n}\n", 2, "service_version: want [<service> [<version>]], got 3"},
		{"matcher: bad name", ":80 {\n\t@s service_version us*ers\n\trespond @s 200\n}\n", 2, `service_version: invalid service name "us*ers"`},
		{"matcher: bad prefix", ":80 {\n\t@s service_version {\n\t\tprefix api\n\t}\n\trespond @s 200\n}\n", 3, `service_version: prefix "api" must start with /`},
		{"matcher: unknown subdirective", ":80 {\n\t@s service_version {\n\t\tfoo bar\n\t}\n\trespond @s 200\n}\n", 3, `service_version: unknown subdirective "foo"`},
		{"policy: bad name", ":80 {\n\treverse_proxy {\n\t\tdynamic service_registry\n\t\tlb_policy service_failover fastest\n\t}\n}\n", 4, `service_failover: unknown balancing algorithm "fastest"`},
		{"source: one arg", ":80 {\n\treverse_proxy {\n\t\tdynamic service_registry users\n\t}\n}\n", 3, "dynamic service_registry: want no arguments or <service> <version>"},
		{"service_proxy: argument", ":80 {\n\tservice_proxy users\n}\n", 2, `service_proxy: unexpected argument "users"`},
		{"service_proxy: bad policy", ":80 {\n\tservice_proxy {\n\t\tlb_policy fastest\n\t}\n}\n", 3, `service_proxy: lb_policy: unknown balancing algorithm "fastest"`},
		{"service_proxy: missing argument", ":80 {\n\tservice_proxy {\n\t\tretries\n\t}\n}\n", 3, "wrong argument count"},
		{"service_proxy: bad retries", ":80 {\n\tservice_proxy {\n\t\tretries -1\n\t}\n}\n", 3, "service_proxy: retries: want a number of at least 0"},
		{"service_proxy: bad strip_prefix", ":80 {\n\tservice_proxy {\n\t\tstrip_prefix maybe\n\t}\n}\n", 3, "service_proxy: strip_prefix: want on or off"},
		{"service_proxy: repeated option", ":80 {\n\tservice_proxy {\n\t\tretries 1\n\t\tretries 2\n\t}\n}\n", 4, "service_proxy: retries specified more than once"},
		{"service_proxy: static upstreams", ":80 {\n\tservice_proxy {\n\t\tto 127.0.0.1:1\n\t}\n}\n", 3, "service_proxy: to is not allowed"},
		{"service_proxy: lb_retries", ":80 {\n\tservice_proxy {\n\t\tlb_retries 2\n\t}\n}\n", 3, "service_proxy: use retries instead of lb_retries"},
		{"service_proxy: bad passthrough", ":80 {\n\tservice_proxy {\n\t\theader_up\n\t\tbogus_option 1\n\t}\n}\n", 3, "wrong argument count"},
		{"health_check: unknown option", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\tpaht /x\n\t\t}\n\t}\n}\n", 4, `health_check: unknown subdirective "paht"`},
		{"health_check: bad duration", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\tinterval soon\n\t\t}\n\t}\n}\n", 4, "health_check: interval: want a positive duration"},
		{"health_check: bad status", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\tstatus 2x\n\t\t}\n\t}\n}\n", 4, `health_check: invalid status "2x"`},
		{"health_check: missing value", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\trise\n\t\t}\n\t}\n}\n", 4, "wrong argument count"},
		{"health_check: zero rise", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\trise 0\n\t\t}\n\t}\n}\n", 4, `health_check: rise: want a whole number from 1 to 1000, got "0"`},
		{"health_check: port out of range", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\tport 70000\n\t\t}\n\t}\n}\n", 4, "health_check: port: want a whole number from 1 to 65535"},
		{"health_check: zero percent", "{\n\tservice_registry {\n\t\thealth_check users {\n\t\t\tmax_ejected_percent 0\n\t\t}\n\t}\n}\n", 4, "max_ejected_percent: want a whole number from 1 to 100"},
		{"health_check: global twice", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t}\n\t\thealth_check {\n\t\t}\n\t}\n}\n", 6, "health_check: specified more than once"},
		{"health_check: twice", "{\n\tservice_registry {\n\t\thealth_check users {\n\t\t}\n\t\thealth_check users {\n\t\t}\n\t}\n}\n", 6, "health_check users: specified more than once"},
		{"health_check: tls option", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\ttls {\n\t\t\t\tcert x\n\t\t\t}\n\t\t}\n\t}\n}\n", 5, `health_check: tls: unknown subdirective "cert"`},
		{"health_check: tls option twice", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\ttls {\n\t\t\t\tca a\n\t\t\t\tca b\n\t\t\t}\n\t\t}\n\t}\n}\n", 6, "health_check: tls: ca specified more than once"},
		{"health_check: tls argument", "{\n\tservice_registry {\n\t\thealth_check {\n\t\t\ttls on\n\t\t}\n\t}\n}\n", 4, "wrong argument count"},
		{"health_check: bad service name", "{\n\tservice_registry {\n\t\thealth_check us/ers {\n\t\t}\n\t}\n}\n", 3, `health_check: invalid service name "us/ers"`},
		{"service_http: bad try_timeout", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\ttry_timeout soon\n\t\t}\n\t}\n}\n", 4, `service_http: try_timeout "soon": want auto, off or a positive duration`},
		{"service_http: bad retry_status", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\tretry_status 404\n\t\t}\n\t}\n}\n", 4, "service_http: retry_status 404: want a status from 500 to 507"},
		{"service_http: bad retry_budget", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\tretry_budget 20\n\t\t}\n\t}\n}\n", 4, `service_http: retry_budget: want a percentage such as 20%, got "20"`},
		{"service_http: bad hedge", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\thedge soon\n\t\t}\n\t}\n}\n", 4, `service_http: hedge "soon": want auto, off or a positive duration`},
		{"service_http: hedge twice", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\thedge off\n\t\t\thedge 1s\n\t\t}\n\t}\n}\n", 5, "service_http: hedge specified more than once"},
		{"service_http: hedge without value", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\thedge\n\t\t}\n\t}\n}\n", 4, "wrong argument count"},
		{"service_http: min over max", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\ttry_timeout_min 5s\n\t\t\ttry_timeout_max 1s\n\t\t}\n\t}\n}\n", 5, "want 0 < min <= max"},
		{"service_http: repeated", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\ttry_timeout 1s\n\t\t\ttry_timeout 2s\n\t\t}\n\t}\n}\n", 5, "service_http: try_timeout specified more than once"},
		{"service_http: http option error", ":80 {\n\tservice_proxy {\n\t\ttransport service_http {\n\t\t\ttry_timeout 1s\n\t\t\tbogus_opt 1\n\t\t}\n\t}\n}\n", 5, "bogus_opt"},
		{"etcd: unknown option", "{\n\tservice_registry {\n\t\tbackend etcd {\n\t\t\tendpoint x:1\n\t\t}\n\t}\n}\n", 4, `etcd backend: unknown subdirective "endpoint"`},
		{"etcd: bad timeout", "{\n\tservice_registry {\n\t\tbackend etcd {\n\t\t\tdial_timeout -1s\n\t\t}\n\t}\n}\n", 4, "dial_timeout: want a positive duration"},
		{"traffic: no service", "{\n\tservice_registry {\n\t\ttraffic {\n\t\t}\n\t}\n}\n", 3, "traffic: want a service name"},
		{"traffic: odd split", "{\n\tservice_registry {\n\t\ttraffic users {\n\t\t\tsplit v1 90 v2\n\t\t}\n\t}\n}\n", 4, "traffic users: split: want <version> <weight> pairs"},
		{"traffic: bad weight", "{\n\tservice_registry {\n\t\ttraffic users {\n\t\t\tsplit v1 ninety\n\t\t}\n\t}\n}\n", 4, `traffic users: split: weight of v1 "ninety": want 0 to 100`},
		{"traffic: weight over 100", "{\n\tservice_registry {\n\t\ttraffic users {\n\t\t\tsplit v1 101\n\t\t}\n\t}\n}\n", 3, `split weight of "v1" is 101: want 0 to 100`},
		{"traffic: unknown option", "{\n\tservice_registry {\n\t\ttraffic users {\n\t\t\tweights v1 1\n\t\t}\n\t}\n}\n", 4, `traffic users: unknown option "weights"`},
		{"traffic: bad sticky", "{\n\tservice_registry {\n\t\ttraffic users {\n\t\t\tsticky header\n\t\t}\n\t}\n}\n", 4, "traffic users: sticky: want cookie, header <name>, ip or off"},
		{"traffic: repeated", "{\n\tservice_registry {\n\t\ttraffic users {\n\t\t\theader A\n\t\t\theader B\n\t\t}\n\t}\n}\n", 5, "traffic users: header specified more than once"},
		{"traffic: twice", "{\n\tservice_registry {\n\t\ttraffic users {\n\t\t}\n\t\ttraffic users {\n\t\t}\n\t}\n}\n", 6, "traffic users: specified more than once"},
		{"traffic: bad alias", "{\n\tservice_registry {\n\t\ttraffic users {\n\t\t\talias st/able v1\n\t\t}\n\t}\n}\n", 3, `alias "st/able": not a valid name`},
		{"zookeeper: unknown option", "{\n\tservice_registry {\n\t\tbackend zookeeper {\n\t\t\tserver x:1\n\t\t}\n\t}\n}\n", 4, `zookeeper backend: unknown subdirective "server"`},
		{"zookeeper: bad timeout", "{\n\tservice_registry {\n\t\tbackend zookeeper {\n\t\t\tsession_timeout soon\n\t\t}\n\t}\n}\n", 4, `zookeeper backend: session_timeout: want a positive duration, got "soon"`},
		{"zookeeper: repeated", "{\n\tservice_registry {\n\t\tbackend zookeeper {\n\t\t\tbase_path /a\n\t\t\tbase_path /b\n\t\t}\n\t}\n}\n", 5, "zookeeper backend: base_path specified more than once"},
		{"service_proxy: unknown passthrough", ":80 {\n\tservice_proxy {\n\t\tretries 1\n\n\t\tbogus_option 1\n\t}\n}\n", 5, "unrecognized subdirective bogus_option"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adapt(t, "Caddyfile", tc.input)
			at := fmt.Sprintf("at Caddyfile:%d", tc.line)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasSuffix(err.Error(), at) {
				t.Errorf("error = %v\nwant it to contain %q and end with %q", err, tc.want, at)
			}
		})
	}
}

// TestParseDurationAsCaddy checks that the core's Duration, which cannot
// import Caddy, reads every duration string as caddy.ParseDuration does.
func TestParseDurationAsCaddy(t *testing.T) {
	inputs := []string{"", "0", "1s", "1.5m", "-2h", "+3m", "1d", "1d12h", "1h1d", "0.5d", "d", "1dd", "5s+5d", "0h+5d",
		"1d5d", ".0d2d", "0.000000d1d", "1e3d", "-1.5d", "2d-3h", "x1d", "1d x", "100000000000d", "soon", "1µs1d"}
	for i := range 300 { // and some made of the characters that matter
		var b strings.Builder
		for j := range 1 + i%6 {
			b.WriteByte("0123456789.+-dhms"[(i*7+j*13)%17])
		}
		inputs = append(inputs, b.String())
	}
	for _, in := range inputs {
		want, wantErr := caddy.ParseDuration(in)
		var got registry.Duration
		err := got.UnmarshalJSON([]byte(`"` + in + `"`))
		if err != nil {
			got = 0
		}
		if time.Duration(got) != want || (err == nil) != (wantErr == nil) {
			t.Errorf("Duration %q = %v, %v; Caddy says %v, %v", in, time.Duration(got), err, want, wantErr)
		}
	}
}

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
)

// cliRun runs `caddy service-registry args...` and returns its stdout,
// stderr and exit code.
func cliRun(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(caddyBin, append([]string{"service-registry"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	default:
		t.Fatalf("running caddy service-registry %q: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// cliOK runs the command against c and fails the test unless it exits 0.
func cliOK(t *testing.T, c *caddy, args ...string) string {
	t.Helper()
	out, errOut, code := cliRun(t, append(args, "--address", c.Admin)...)
	if code != 0 {
		t.Fatalf("service-registry %q: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

// cliFails runs the command and fails the test unless it exits 1 with
// one plain line on stderr, "Error: ...", mentioning every one of
// mentions.
func cliFails(t *testing.T, args []string, mentions ...string) {
	t.Helper()
	out, errOut, code := cliRun(t, args...)
	if code != 1 {
		t.Fatalf("service-registry %q: exit %d, want 1\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	if !strings.HasPrefix(errOut, "Error: ") || strings.Count(errOut, "\n") != 1 || strings.Contains(errOut, `"level"`) {
		t.Errorf("service-registry %q: stderr %q, want one plain line starting with Error: ", args, errOut)
	}
	for _, m := range mentions {
		if !strings.Contains(errOut, m) {
			t.Errorf("service-registry %q: exit %d, stderr %q; want it to mention %q", args, code, errOut, m)
		}
	}
}

// tableRows returns the lines of a table whose first cell is not empty,
// header first, and checks that every column starts where its header
// does.
func tableRows(t *testing.T, out string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	var header string
	var rows []string
	for _, l := range lines {
		if strings.HasPrefix(l, "SERVICE ") {
			header = l
		}
		if header != "" {
			rows = append(rows, l)
		}
	}
	if header == "" {
		t.Fatalf("no table header in:\n%s", out)
	}
	want := []string{"SERVICE", "VERSION", "ADDRESS", "WEIGHT", "HEALTH", "IN-FLIGHT", "REQUESTS", "FAILURES", "LATENCY", "METADATA"}
	if got := strings.Fields(header); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("header %q, want columns %q", header, want)
	}
	for _, col := range want[:4] { // the columns before HEALTH hold no spaces
		at := strings.Index(header, col)
		for _, r := range rows[1:] {
			if len(r) <= at || r[at] == ' ' || (at > 0 && r[at-1] != ' ') {
				t.Errorf("column %s (at %d) not aligned in row %q\n%s", col, at, r, out)
			}
		}
	}
	return rows
}

func TestCLI(t *testing.T) {
	a, b, v2, extra := startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "v2"), startBackend(t, "extra")
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s %s
		service users v2 %s
		service orders v1 %s
	}`, a.Addr, b.Addr, v2.Addr, a.Addr), `{http} {
	service_proxy
}`, caddyOpts{})
	if status, _, _ := c.Get("/users/v1/"); status != http.StatusOK {
		t.Fatalf("GET /users/v1/: %d", status)
	}

	t.Run("list", func(t *testing.T) {
		rows := tableRows(t, cliOK(t, c, "list"))
		if len(rows) != 5 {
			t.Fatalf("list: %d rows, want header and 4:\n%s", len(rows), strings.Join(rows, "\n"))
		}
		for _, want := range []string{"orders v1 " + a.Addr, "users v1 " + a.Addr, "users v1 " + b.Addr, "users v2 " + v2.Addr} {
			if !slicesContainsPrefix(rows, want) {
				t.Errorf("list has no row %q:\n%s", want, strings.Join(rows, "\n"))
			}
		}
	})

	t.Run("list by service and version", func(t *testing.T) {
		rows := tableRows(t, cliOK(t, c, "list", "users"))
		if len(rows) != 4 || slicesContainsPrefix(rows, "orders") {
			t.Errorf("list users:\n%s", strings.Join(rows, "\n"))
		}
		rows = tableRows(t, cliOK(t, c, "list", "users", "v2"))
		if len(rows) != 2 || !slicesContainsPrefix(rows, "users v2 "+v2.Addr+" 1 in ") {
			t.Errorf("list users v2:\n%s", strings.Join(rows, "\n"))
		}
	})

	t.Run("list JSON", func(t *testing.T) {
		var list serviceList
		out := cliOK(t, c, "list", "users", "--json")
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Services) != 2 {
			t.Errorf("list users --json: %v, %d services:\n%s", err, len(list.Services), out)
		}
	})

	t.Run("config finds the admin address", func(t *testing.T) {
		out, errOut, code := cliRun(t, "list", "orders", "--config", c.config, "--adapter", "caddyfile")
		if code != 0 || !strings.Contains(out, "orders") {
			t.Errorf("list --config: exit %d\n%s\n%s", code, out, errOut)
		}
	})

	t.Run("add then list", func(t *testing.T) {
		out := cliOK(t, c, "add", "users", "v2", extra.Addr, "--weight", "3", "--meta", "zone=b")
		if !strings.Contains(out, "added "+extra.Addr+" to users v2") {
			t.Errorf("add: %s", out)
		}
		rows := tableRows(t, cliOK(t, c, "list", "users", "v2"))
		if !slicesContainsPrefix(rows, "users v2 "+extra.Addr+" 3 in (not tried) 0 0 0 - zone=b") {
			t.Errorf("list after add: want weight 3, not tried yet, metadata zone=b:\n%s", strings.Join(rows, "\n"))
		}
		if out := cliOK(t, c, "add", "users", "v2", extra.Addr, "--weight", "3"); !strings.Contains(out, "updated") {
			t.Errorf("add again: %s", out)
		}
	})

	t.Run("weight 0 drains", func(t *testing.T) {
		// HAProxy's "set weight 0": registered, shown, sent nothing
		if out := cliOK(t, c, "add", "users", "v2", extra.Addr, "--weight", "0"); !strings.Contains(out, "updated") {
			t.Errorf("add --weight 0: %s", out)
		}
		rows := tableRows(t, cliOK(t, c, "list", "users", "v2"))
		if !slicesContainsPrefix(rows, "users v2 "+extra.Addr+" 0 drained, in") {
			t.Errorf("list after --weight 0: want weight 0 and drained:\n%s", strings.Join(rows, "\n"))
		}
		before := extra.arrived.Load()
		for range 20 {
			if status, _, _ := c.Get("/users/v2/"); status != http.StatusOK {
				t.Fatalf("GET /users/v2/ with one host drained: %d", status)
			}
		}
		if n := extra.arrived.Load() - before; n != 0 {
			t.Errorf("the drained host got %d of 20 requests, want 0", n)
		}
		// every host drained: no available host, as a version without one
		cliOK(t, c, "add", "users", "v2", v2.Addr, "--weight", "0")
		if status, body, h := c.Get("/users/v2/"); status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
			t.Errorf("GET /users/v2/ with every host drained: %d %q, want 503 with Retry-After", status, body)
		}
		cliOK(t, c, "add", "users", "v2", v2.Addr, "--weight", "1")
		if status, _, _ := c.Get("/users/v2/"); status != http.StatusOK {
			t.Errorf("GET /users/v2/ after undraining: %d", status)
		}
		if out := cliOK(t, c, "list", "users", "--json"); !strings.Contains(out, `"drained": true`) {
			t.Errorf("list --json shows no drained endpoint:\n%s", out)
		}
	})

	t.Run("remove prints the drain", func(t *testing.T) {
		out := cliOK(t, c, "remove", "users", "v2", extra.Addr)
		if !strings.HasPrefix(out, "removed "+extra.Addr+" from users v2; drained after ") || !strings.HasSuffix(out, ", 0 requests in flight\n") {
			t.Errorf("remove: %s", out)
		}
		if got := c.Services(); slicesContainsPrefix(got, "users v2 "+v2.Addr+",") {
			t.Errorf("after remove: %q", got)
		}
	})

	t.Run("traffic", func(t *testing.T) {
		out := cliOK(t, c, "traffic", "users", "--split", "v1=90,v2=10", "--alias", "stable=v1",
			"--sticky", "header:X-User", "--fallback", "v1")
		for _, want := range []string{"v1=90,v2=10", "stable=v1", "header:X-User", "X-Service-Version"} {
			if !strings.Contains(out, want) {
				t.Errorf("traffic set: %q missing in\n%s", want, out)
			}
		}
		if shown := cliOK(t, c, "traffic", "users"); shown != out {
			t.Errorf("traffic show:\n%s\nwant what the set printed:\n%s", shown, out)
		}
		if all := cliOK(t, c, "traffic"); !strings.Contains(all, "users") || !strings.Contains(all, "v1=90,v2=10") {
			t.Errorf("traffic of every service:\n%s", all)
		}
		if out := cliOK(t, c, "traffic", "users", "--delete"); !strings.Contains(out, "deleted the traffic policy of users") {
			t.Errorf("traffic delete: %s", out)
		}
		cliFails(t, []string{"traffic", "users", "--address", c.Admin}, "404", "has no traffic policy")
		cliFails(t, []string{"traffic", "users", "--split", "v1=50,v9=50", "--address", c.Admin}, "400", "v9")
	})

	t.Run("watch", func(t *testing.T) {
		out := cliOK(t, c, "watch", "users", "--count", "2", "--interval", "50ms")
		if n := strings.Count(out, "--- "); n != 2 {
			t.Errorf("watch --count 2: %d timestamp lines, want 2:\n%s", n, out)
		}
		if n := strings.Count(out, "SERVICE "); n != 2 || !strings.Contains(out, v2.Addr) || strings.Contains(out, "\x1b") {
			t.Errorf("watch --count 2 (not a terminal): want 2 tables, no escape codes:\n%q", out)
		}
	})

	t.Run("errors", func(t *testing.T) {
		adm := []string{"--address", c.Admin}
		for _, tc := range []struct {
			name     string
			args     []string
			mentions []string
		}{
			{"add missing address", []string{"add", "users", "v1"}, []string{"want <service> <version> <address>", "got 2 arguments"}},
			{"remove no arguments", []string{"remove"}, []string{"want <service> <version> <address>"}},
			{"list too many", []string{"list", "a", "b", "c"}, []string{"at most"}},
			{"unknown subcommand", []string{"frobnicate"}, []string{"unknown command"}},
			{"bad split", []string{"traffic", "users", "--split", "v1=ninety"}, []string{"--split", "ninety"}},
			{"bad sticky", []string{"traffic", "users", "--sticky", "header:"}, []string{"--sticky"}},
			{"bad meta", []string{"add", "users", "v1", a.Addr, "--meta", "zone"}, []string{"--meta", "key=value"}},
			{"bad address", []string{"add", "users", "v1", "not-an-address"}, []string{"400", "want host:port"}},
			{"bad address in remove", []string{"remove", "users", "v1", "not-an-address"}, []string{"400", "want host:port"}},
			{"unknown version on remove", []string{"remove", "users", "v7", a.Addr}, []string{"404", `unknown version "v7" of service "users"`}},
			{"unknown service on remove", []string{"remove", "nosuch", "v1", a.Addr}, []string{"404", `unknown service "nosuch"`}},
			{"unknown endpoint on remove", []string{"remove", "users", "v1", extra.Addr}, []string{"404", `unknown endpoint "` + extra.Addr + `" of version "v1" of service "users"`}},
			{"unknown service in list", []string{"list", "payments"}, []string{"404", `unknown service "payments"`}},
			{"unknown version in list", []string{"list", "users", "v7"}, []string{"404", `unknown version "v7" of service "users"`}},
			{"unknown service in traffic", []string{"traffic", "nosuch", "--split", "v1=100"}, []string{"404", `unknown service "nosuch"`}},
			{"unknown service's traffic", []string{"traffic", "nosuch"}, []string{"404", `unknown service "nosuch"`}},
			{"unknown version in traffic", []string{"traffic", "users", "--split", "v1=50,v9=50"}, []string{"400", `unknown version "v9" of service "users"`}},
			{"weight out of range", []string{"add", "users", "v1", a.Addr, "--weight", "101"}, []string{"--weight 101", "0 (drained) to 100"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				cliFails(t, append(tc.args, adm...), tc.mentions...)
			})
		}
		if got := c.Services(); len(got) != 3 {
			t.Errorf("failed commands changed the registry: %q", got)
		}
	})

	t.Run("unreachable admin endpoint", func(t *testing.T) {
		dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		for _, args := range [][]string{
			{"list"},
			{"add", "users", "v1", a.Addr},
			{"remove", "users", "v1", a.Addr},
			{"traffic", "users"},
			{"watch", "--count", "1"},
		} {
			cliFails(t, append(args, "--address", dead), dead, "unreachable")
		}
	})
}

// slicesContainsPrefix reports whether a line of lines, its fields
// joined by single spaces, starts with prefix.
func slicesContainsPrefix(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(strings.Join(strings.Fields(l), " "), prefix) {
			return true
		}
	}
	return false
}

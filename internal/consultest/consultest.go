// Package consultest runs a real Consul agent for tests, and keeps a fake
// one for the faults a real agent cannot be made to show.
//
// Start runs `consul agent -dev` (a server and agent in one process,
// in-memory catalog) on 127.0.0.1 with every port free and non-default,
// DNS and gRPC off, and a temporary data directory, waits until it has a
// leader and answers, and stops it by PID when the test ends. The binary
// is $SVCREG_CONSUL, else the one scripts/consul-build.sh builds
// (Consul v1.16.1, the last release under the MPL-2.0, in
// ${SVCREG_CACHE:-~/.cache/svcreg}/consul-v1.16.1/consul), else consul on
// PATH. Without one the tests that need it are skipped with a message
// saying how to build it, unless SVCREG_REQUIRE_CONSUL is set (CI sets
// it), in which case they fail.
//
// StartFake runs the fake (see Fake): an HTTP server with the endpoints
// the consul backend reads, for what an agent cannot show on demand: a
// query of one service answering 500, a query that hangs, an index that
// goes backwards on connections that stay open.
package consultest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
)

// Version is the Consul release the tests run against, and that
// scripts/consul-build.sh builds.
const Version = "v1.16.1"

// Agent is a running Consul agent in dev mode.
type Agent struct {
	// Addr is its HTTP API, 127.0.0.1:port, the same across restarts.
	Addr string
	// Token is the ACL token of the helper's own requests (StartACL).
	Token string

	t     testing.TB
	bin   string
	dir   string
	ports [4]int // serf LAN, serf WAN, server RPC, HTTP
	extra []string
	http  *http.Client

	proc testutil.Process
	log  testutil.Log // what it printed
}

// Binary returns the Consul binary the tests use, or an error saying how
// to get one.
func Binary() (string, error) {
	if bin := os.Getenv("SVCREG_CONSUL"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("SVCREG_CONSUL: %w", err)
		}
		return bin, nil
	}
	cache := os.Getenv("SVCREG_CACHE")
	if cache == "" {
		dir, err := os.UserCacheDir()
		if err == nil {
			cache = filepath.Join(dir, "svcreg")
		}
	}
	if cache != "" {
		bin := filepath.Join(cache, "consul-"+Version, "consul")
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	if bin, err := exec.LookPath("consul"); err == nil {
		return bin, nil
	}
	return "", errors.New("no consul binary: build Consul " + Version + " with scripts/consul-build.sh (about 10 minutes, once), or set SVCREG_CONSUL to a consul binary")
}

// Start starts a Consul agent in dev mode with extra command-line
// arguments (such as -hcl fragments), and waits until it has a leader
// and its catalog answers. It is stopped when the test ends.
func Start(t testing.TB, extra ...string) *Agent {
	t.Helper()
	a := StartLater(t, extra...)
	a.Restart()
	return a
}

// StartACL starts an agent as Start does, with ACLs on, everything
// denied by default, and token as its management token (also the agent's
// own, and Token).
func StartACL(t testing.TB, token string) *Agent {
	t.Helper()
	a := StartLater(t, "-hcl", fmt.Sprintf(`acl { enabled = true
		default_policy = "deny"
		tokens { initial_management = %q
			agent = %q } }`, token, token))
	a.Token = token
	a.Restart()
	return a
}

// StartLater reserves the ports of an agent that Restart starts later,
// for tests of a backend that starts before Consul does.
func StartLater(t testing.TB, extra ...string) *Agent {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv("SVCREG_REQUIRE_CONSUL") != "" {
			t.Fatalf("%v; SVCREG_REQUIRE_CONSUL is set", err)
		}
		t.Skip("skipping: " + err.Error())
	}
	// no keep-alive: the helper holds no connection between requests
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	a := &Agent{t: t, bin: bin, dir: t.TempDir(), extra: extra, http: client}
	for i := range a.ports {
		a.ports[i] = testutil.FreePort(t)
	}
	a.Addr = fmt.Sprintf("127.0.0.1:%d", a.ports[3])
	t.Cleanup(a.Stop)
	return a
}

// Restart starts the agent again after StartLater, Stop or Kill, on the
// same ports and data directory. Its catalog starts empty, at a low
// index (dev mode keeps it in memory); the services registered through
// the agent come back as the agent registers them again, as a real
// agent's do.
func (a *Agent) Restart() {
	a.t.Helper()
	p := func(n int) string { return strconv.Itoa(n) }
	args := append([]string{"agent", "-dev",
		"-node", "svcreg-test",
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-serf-lan-port", p(a.ports[0]), "-serf-wan-port", p(a.ports[1]), "-server-port", p(a.ports[2]),
		"-http-port", p(a.ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-data-dir", a.dir,
		"-log-level", "warn",
		"-hcl", "disable_update_check = true",
		"-hcl", "connect { enabled = false }",
	}, a.extra...)
	cmd := exec.Command(a.bin, args...)
	cmd.Stdout, cmd.Stderr = &a.log, &a.log
	if err := a.proc.Start(cmd); err != nil {
		a.t.Fatalf("starting consul: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !a.ready() {
		if time.Now().After(deadline) {
			a.t.Fatalf("consul did not elect itself leader and answer in 60s:\n%s", a.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ready reports whether the agent knows its leader and its catalog lists
// the consul service (the leader registered itself).
func (a *Agent) ready() bool {
	var leader string
	if err := a.get("/v1/status/leader", &leader); err != nil || leader == "" {
		return false
	}
	var services map[string][]string
	if err := a.get("/v1/catalog/services", &services); err != nil {
		return false
	}
	_, ok := services["consul"]
	return ok
}

// get decodes the JSON that a GET of path answers into v.
func (a *Agent) get(path string, v any) error {
	req, err := http.NewRequest(http.MethodGet, "http://"+a.Addr+path, nil)
	if err != nil {
		return err
	}
	if a.Token != "" {
		req.Header.Set("X-Consul-Token", a.Token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Client returns a client of the agent's HTTP API.
func (a *Agent) Client() *api.Client {
	a.t.Helper()
	c, err := api.NewClient(&api.Config{Address: a.Addr, HttpClient: a.http, Token: a.Token})
	if err != nil {
		a.t.Fatal(err)
	}
	return c
}

// Register registers a service instance through the agent
// (/v1/agent/service/register), as services register themselves.
func (a *Agent) Register(reg *api.AgentServiceRegistration) {
	a.t.Helper()
	if err := a.Client().Agent().ServiceRegister(reg); err != nil {
		a.t.Fatalf("registering %s with consul: %v", reg.ID, err)
	}
}

// Deregister deregisters a service instance through the agent.
func (a *Agent) Deregister(id string) {
	a.t.Helper()
	if err := a.Client().Agent().ServiceDeregister(id); err != nil {
		a.t.Fatalf("deregistering %s from consul: %v", id, err)
	}
}

// SetStatus sets the status of the TTL check of the instance serviceID,
// registered with TTL: passing, warning or critical.
func (a *Agent) SetStatus(serviceID, status string) {
	a.t.Helper()
	if err := a.Client().Agent().UpdateTTL("service:"+serviceID, "", status); err != nil {
		a.t.Fatalf("setting the check of %s to %s: %v", serviceID, status, err)
	}
}

// Maintenance puts the agent's node in maintenance mode, or takes it
// out: a critical check of the node itself, failing every instance on it.
func (a *Agent) Maintenance(on bool) {
	a.t.Helper()
	var err error
	if on {
		err = a.Client().Agent().EnableNodeMaintenance("svcreg test")
	} else {
		err = a.Client().Agent().DisableNodeMaintenance()
	}
	if err != nil {
		a.t.Fatalf("setting node maintenance to %v: %v", on, err)
	}
}

// TTL returns a TTL check that starts with status and stays so until
// SetStatus: it never expires within a test.
func TTL(status string) *api.AgentServiceCheck {
	return &api.AgentServiceCheck{TTL: "1h", Status: status}
}

// Pause freezes the agent (SIGSTOP) until Resume, and returns once it is
// frozen: queries hang.
func (a *Agent) Pause() { a.proc.Pause() }

// Resume lets a paused agent go on (SIGCONT).
func (a *Agent) Resume() { a.proc.Resume() }

// Kill kills the agent (SIGKILL), as a crash does.
func (a *Agent) Kill() { a.proc.Stop(syscall.SIGKILL) }

// Stop stops the agent (SIGTERM) and waits for it to exit.
func (a *Agent) Stop() { a.proc.Stop(syscall.SIGTERM) }

// Log returns what the agent printed.
func (a *Agent) Log() string { return a.log.String() }

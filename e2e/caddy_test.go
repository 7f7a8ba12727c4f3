// Package e2e runs the real Caddy binary built from ./cmd/caddy against
// real backends on 127.0.0.1. TestMain builds the binary once; every
// process a test starts is stopped by PID when the test ends.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binaries TestMain built: Caddy with the plugin, and the etcd
// self-registration program.
var caddyBin, selfregBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "svcreg-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	caddyBin = filepath.Join(dir, "caddy")
	selfregBin = filepath.Join(dir, "selfreg")
	for bin, pkg := range map[string]string{
		caddyBin:   "github.com/svcreg/caddy-svcreg/cmd/caddy",
		selfregBin: "github.com/svcreg/caddy-svcreg/selfreg/cmd/selfreg",
	} {
		// Build with the same race setting as this test binary, so that
		// the packages compiled for the tests are reused.
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		build := exec.Command("go", append(args, pkg)...)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg+":", err)
			return 1
		}
	}
	return m.Run()
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
var freePort = testutil.FreePort

// caddy is a running Caddy process.
type caddy struct {
	t       testing.TB
	Admin   string // host:port of the admin endpoint
	HTTP    string // host:port of the site
	dir     string // config, storage and home of this instance
	config  string // path of the Caddyfile
	cmd     *exec.Cmd
	logMu   sync.Mutex
	log     bytes.Buffer
	stopped bool
}

// caddyOpts sets up a Caddy instance.
type caddyOpts struct {
	// Dir keeps storage between instances (a restart); default: a new temp dir.
	Dir string
	// Admin and HTTP ports; default: free ports.
	AdminPort, HTTPPort int
}

// startCaddy writes a Caddyfile made of the global options, the given
// global block body and site body, starts Caddy with it, and waits until
// the admin endpoint answers. {http} in site stands for the site address.
func startCaddy(t testing.TB, globalBody, site string, opts caddyOpts) *caddy {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.AdminPort == 0 {
		opts.AdminPort = freePort(t)
	}
	if opts.HTTPPort == 0 {
		opts.HTTPPort = freePort(t)
	}
	c := &caddy{
		t:      t,
		Admin:  fmt.Sprintf("127.0.0.1:%d", opts.AdminPort),
		HTTP:   fmt.Sprintf("127.0.0.1:%d", opts.HTTPPort),
		dir:    opts.Dir,
		config: filepath.Join(opts.Dir, "Caddyfile"),
	}
	c.writeConfig(globalBody, site)
	c.start()
	return c
}

// caddyfile renders the full Caddyfile.
func (c *caddy) caddyfile(globalBody, site string) string {
	return fmt.Sprintf(`{
	admin %s
	storage file_system %s
	persist_config off
	auto_https off
	%s
	%s
}

%s
`, c.Admin, filepath.Join(c.dir, "storage"), debugOption(), globalBody, strings.ReplaceAll(site, "{http}", "http://"+c.HTTP))
}

func (c *caddy) writeConfig(globalBody, site string) {
	c.t.Helper()
	if err := os.WriteFile(c.config, []byte(c.caddyfile(globalBody, site)), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

func (c *caddy) Write(p []byte) (int, error) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return c.log.Write(p)
}

// Log returns what Caddy printed so far.
func (c *caddy) Log() string {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return c.log.String()
}

func (c *caddy) start() {
	c.t.Helper()
	c.cmd = exec.Command(caddyBin, "run", "--config", c.config, "--adapter", "caddyfile")
	c.cmd.Env = append(os.Environ(),
		"HOME="+c.dir,
		"XDG_CONFIG_HOME="+filepath.Join(c.dir, "config"),
		"XDG_DATA_HOME="+filepath.Join(c.dir, "data"),
	)
	c.cmd.Stdout, c.cmd.Stderr = c, c
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.stopped = false
	c.t.Cleanup(func() {
		c.Stop()
		if c.t.Failed() {
			c.t.Logf("caddy (pid %d) log:\n%s", c.cmd.Process.Pid, collapsePolls(c.Log()))
			c.t.Logf("(end of the log of caddy pid %d; %s failed)", c.cmd.Process.Pid, c.t.Name())
		}
	})
	waitFor(c.t, 30*time.Second, "caddy admin endpoint "+c.Admin, func() bool {
		resp, err := http.Get("http://" + c.Admin + "/config/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// collapsePolls shortens a Caddy log for reading: of each run of admin
// API GET requests for one URI (a test polling), only the first line is
// kept, followed by how many more there were.
func collapsePolls(log string) string {
	var b strings.Builder
	uri, more := "", 0
	flush := func() {
		if more > 0 {
			fmt.Fprintf(&b, "(%d more admin GET %s)\n", more, uri)
		}
		uri, more = "", 0
	}
	for line := range strings.Lines(log) {
		var l struct{ Logger, Msg, Method, URI string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Logger == "admin.api" && l.Msg == "received request" && l.Method == http.MethodGet {
			if l.URI == uri {
				more++
				continue
			}
			flush()
			uri = l.URI
		} else {
			flush()
		}
		b.WriteString(line)
	}
	flush()
	return b.String()
}

// debugOption turns on Caddy's debug log when SVCREG_DEBUG_LOG is set.
func debugOption() string {
	if os.Getenv("SVCREG_DEBUG_LOG") != "" {
		return "debug"
	}
	return ""
}

// Stop ends the process gracefully (SIGTERM, then SIGKILL after 10 s).
func (c *caddy) Stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		_ = c.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// Restart stops the process and starts a new one on the same config,
// ports and storage.
func (c *caddy) Restart() {
	c.t.Helper()
	c.Stop()
	c.start()
}

// Reload rewrites the config and applies it with `caddy reload`.
func (c *caddy) Reload(globalBody, site string) {
	c.t.Helper()
	if out, err := c.TryReload(globalBody, site); err != nil {
		c.t.Fatalf("caddy reload: %v\n%s", err, out)
	}
}

// TryReload is Reload for a config that may be refused: it returns the
// error and the output of `caddy reload`.
func (c *caddy) TryReload(globalBody, site string, flags ...string) (string, error) {
	c.t.Helper()
	c.writeConfig(globalBody, site)
	args := append([]string{"reload", "--config", c.config, "--adapter", "caddyfile", "--address", c.Admin}, flags...)
	out, err := exec.Command(caddyBin, args...).CombinedOutput()
	return string(out), err
}

// AdminDo sends a request to the admin API and returns status and body.
func (c *caddy) AdminDo(method, path, contentType, body string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, "http://"+c.Admin+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(c.t, http.DefaultClient, req)
}

// Get fetches path from the site.
func (c *caddy) Get(path string) (int, string, http.Header) {
	c.t.Helper()
	resp, err := http.Get("http://" + c.HTTP + path)
	if err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func do(t testing.TB, client *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, body := doResponse(t, client, req)
	return resp.StatusCode, body
}

// doResponse sends req and returns its response, its body read whole
// (and its trailers with it).
func doResponse(t testing.TB, client *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// serviceList is the admin API's GET /service_registry/services answer.
type serviceList struct {
	Synced   bool            `json:"synced"`
	Services []serviceStatus `json:"services"`
}

type serviceStatus struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	Endpoints []struct {
		Address string `json:"address"`
		Weight  int    `json:"weight"`
		Healthy bool   `json:"healthy"`
	} `json:"endpoints"`
}

// Services lists the registry through the admin API as
// "name version addr,addr" lines.
func (c *caddy) Services() []string {
	c.t.Helper()
	status, body := c.AdminDo(http.MethodGet, "/service_registry/services", "", "")
	if status != http.StatusOK {
		c.t.Fatalf("listing services: %d %s", status, body)
	}
	var list serviceList
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		c.t.Fatalf("decoding %s: %v", body, err)
	}
	var out []string
	for _, s := range list.Services {
		var addrs []string
		for _, ep := range s.Endpoints {
			addrs = append(addrs, ep.Address)
		}
		out = append(out, s.Name+" "+s.Version+" "+strings.Join(addrs, ","))
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes
// (testutil.Eventually, under the name these tests have always used).
var waitFor = testutil.Eventually

func TestCollapsePolls(t *testing.T) {
	get := `{"level":"info","logger":"admin.api","msg":"received request","method":"GET","uri":"/service_registry/services"}` + "\n"
	post := `{"level":"info","logger":"admin.api","msg":"received request","method":"POST","uri":"/service_registry/services/a/v1"}` + "\n"
	other := `{"level":"info","logger":"service_registry","msg":"zookeeper reachable; registry synced"}` + "\n"
	log := "not json\n" + get + get + get + post + post + get + other + get + get
	want := "not json\n" + get + "(2 more admin GET /service_registry/services)\n" + post + post + get + other + get + "(1 more admin GET /service_registry/services)\n"
	if got := collapsePolls(log); got != want {
		t.Errorf("collapsePolls:\n%s\nwant:\n%s", got, want)
	}
}

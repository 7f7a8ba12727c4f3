package e2e

// The documents' own checks: every Caddyfile in README.md and docs/ adapts,
// every JSON block parses, and every shell command shown is either run here
// against the built Caddy and real backends, or named in coveredElsewhere
// with what runs it. A command that is neither fails the test, so a new
// command cannot slip into the documents unchecked.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// coveredElsewhere lists the commands the documents show that this test
// does not run, each with what does.
var coveredElsewhere = []struct {
	command *regexp.Regexp
	by      string
}{
	{regexp.MustCompile(`^make demo$`), "examples/quickstart/run.sh --check, which make test runs"},
	{regexp.MustCompile(`^make test$`), "CI (.ci/run runs make test)"},
	{regexp.MustCompile(`^go install github\.com/caddyserver/xcaddy/cmd/xcaddy@v0\.4\.5$`), "scripts/xcaddy-build.sh, which installs this version (make test)"},
	{regexp.MustCompile(`^xcaddy build v2\.11\.9 --with github\.com/svcreg/caddy-svcreg@v0\.0\.0=\.$`), "scripts/xcaddy-build.sh, which builds this way and checks the modules (make test)"},
	{regexp.MustCompile(`^xcaddy build v2\.11\.9 --with github\.com/svcreg/caddy-svcreg$`), "nothing: it needs the module published; scripts/xcaddy-build.sh builds the same from the checkout"},
	{regexp.MustCompile(`^go build -o caddy \./cmd/caddy$`), "TestMain, which builds ./cmd/caddy"},
	{regexp.MustCompile(`^go test -run '\^\$' -fuzz '\^Fuzz(ConnectionReuse|ResponseFraming)\$' -fuzztime 30m \./internal/h1$`), "scripts/test.sh, which runs it with -fuzztime 5s (make test)"},
	{regexp.MustCompile(`^go test -run '\^\$' -fuzz '\^FuzzMatchServiceVersion\$' -fuzztime 30m \.$`), "go test, which runs its seed corpus; not fuzzed by make test"},
}

// docFiles are the documents whose blocks are checked.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs: %v", err)
	}
	return append([]string{filepath.Join("..", "README.md")}, files...)
}

// docBlock is a fenced block of a document.
type docBlock struct {
	file string
	line int    // of the opening fence
	info string // the fence's info string: "sh", "caddyfile site", ...
	text string
}

func (b docBlock) String() string { return fmt.Sprintf("%s:%d (%s)", b.file, b.line, b.info) }

var fence = regexp.MustCompile("^```")

func readBlocks(t *testing.T, file string) []docBlock {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []docBlock
	var cur *docBlock
	var body []string
	for i, line := range strings.Split(string(raw), "\n") {
		if !fence.MatchString(line) {
			if cur != nil {
				body = append(body, line)
			}
			continue
		}
		if cur == nil {
			cur = &docBlock{file: filepath.Base(file), line: i + 1, info: strings.TrimSpace(strings.TrimPrefix(line, "```"))}
			body = nil
			continue
		}
		cur.text = strings.Join(body, "\n")
		blocks = append(blocks, *cur)
		cur = nil
	}
	if cur != nil {
		t.Fatalf("%s: block at line %d is not closed", file, cur.line)
	}
	return blocks
}

// TestDocsBlocks checks that every block has a kind this test knows, that
// every Caddyfile adapts with the built Caddy and every JSON block parses.
func TestDocsBlocks(t *testing.T) {
	dir := t.TempDir()
	n := 0
	for _, file := range docFiles(t) {
		for _, b := range readBlocks(t, file) {
			switch b.info {
			case "sh", "console", "text":
				continue
			case "json":
				if !json.Valid([]byte(b.text)) {
					t.Errorf("%s: not valid JSON", b)
				}
				continue
			}
			var cfg string
			switch b.info {
			case "caddyfile":
				cfg = b.text
			case "caddyfile site":
				cfg = ":9090 {\n" + b.text + "\n}\n"
			case "caddyfile service_registry":
				cfg = "{\n\tservice_registry {\n" + b.text + "\n\t}\n}\n"
			default:
				t.Errorf("%s: a block of a kind this test does not check; use sh, console, caddyfile [site|service_registry], json or text", b)
				continue
			}
			n++
			path := filepath.Join(dir, fmt.Sprintf("Caddyfile.%d", n))
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(caddyBin, "adapt", "--config", path, "--adapter", "caddyfile").CombinedOutput(); err != nil {
				t.Errorf("%s: caddy adapt: %v\n%s\n%s", b, err, out, cfg)
			}
		}
	}
	if n == 0 {
		t.Fatal("no Caddyfile found in the documents")
	}
}

// docWorld is what a block's commands run against: free ports in place of
// the documents' fixed ones.
type docWorld struct {
	admin, site string
	backends    [4]string // in place of 127.0.0.1:9091-9094
	dir         string
}

func newDocWorld(t *testing.T) *docWorld {
	w := &docWorld{
		admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		site:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		dir:   t.TempDir(),
	}
	for i := range w.backends {
		w.backends[i] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	}
	return w
}

// rewrite puts the world's addresses in place of the documents'.
func (w *docWorld) rewrite(s string) string {
	pairs := []string{
		"localhost:2019", w.admin, "127.0.0.1:2019", w.admin,
		"localhost:9090", w.site, "127.0.0.1:9090", w.site,
	}
	for i, b := range w.backends {
		pairs = append(pairs, fmt.Sprintf("127.0.0.1:909%d", i+1), b)
	}
	return strings.NewReplacer(pairs...).Replace(s)
}

// config writes a copy of the Caddyfile at path (from the repository root)
// with the world's addresses, its admin endpoint and its storage, and
// returns where.
func (w *docWorld) config(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Fatalf("a document runs Caddy with %s: %v", path, err)
	}
	cfg := w.rewrite(string(raw))
	cfg = strings.ReplaceAll(cfg, ":9090 {", ":"+strings.TrimPrefix(w.site, "127.0.0.1:")+" {")
	i := strings.Index(cfg, "\n{\n")
	if !strings.HasPrefix(cfg, "{\n") && i < 0 {
		t.Fatalf("%s has no global options block", path)
	}
	global := fmt.Sprintf("{\n\tadmin %s\n\tstorage file_system %s\n", w.admin, filepath.Join(w.dir, "storage"))
	if strings.HasPrefix(cfg, "{\n") {
		cfg = global + cfg[2:]
	} else {
		cfg = cfg[:i+1] + global + cfg[i+3:]
	}
	out := filepath.Join(w.dir, strings.ReplaceAll(path, "/", "_"))
	if err := os.WriteFile(out, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

var (
	backendOnce sync.Once
	backendBin  string
	backendErr  error
)

// exampleBackend builds examples/backend (bin/backend in the documents).
func exampleBackend(t *testing.T) string {
	t.Helper()
	backendOnce.Do(func() {
		dir, err := os.MkdirTemp("", "svcreg-docs-")
		if err != nil {
			backendErr = err
			return
		}
		backendBin = filepath.Join(dir, "backend")
		out, err := exec.Command("go", "build", "-o", backendBin, "github.com/svcreg/caddy-svcreg/examples/backend").CombinedOutput()
		if err != nil {
			backendErr = fmt.Errorf("building examples/backend: %v\n%s", err, out)
		}
	})
	if backendErr != nil {
		t.Fatal(backendErr)
	}
	return backendBin
}

var (
	caddyRun   = regexp.MustCompile(`^(?:bin/)?caddy run --config (\S+)( &)?$`)
	cliCommand = regexp.MustCompile(`^(?:bin/)?caddy service-registry\b`)
	statusNote = regexp.MustCompile(`#\s*(\d{3})\b`)
)

// commands returns the commands of a sh or console block: continuation
// lines joined, a console block's output left out.
func commands(b docBlock) []string {
	var out []string
	lines := strings.Split(b.text, "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if b.info == "console" {
			if !strings.HasPrefix(line, "$ ") {
				continue
			}
			line = strings.TrimPrefix(line, "$ ")
		}
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(lines[i])
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		out = append(out, line)
	}
	return out
}

// splitComment cuts a trailing comment (a # after a space, outside quotes).
func splitComment(cmd string) (string, string) {
	var quote rune
	for i, r := range cmd {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || cmd[i-1] == ' '):
			return strings.TrimSpace(cmd[:i]), cmd[i:]
		}
	}
	return strings.TrimSpace(cmd), ""
}

// docsCurl runs curl and checks the status: the one the document's
// comment names (# 404 ...), else below 400. A curl whose output the
// document redirects itself runs as written.
const docsCurl = `docs_curl() {
	local want=$1; shift
	local out code
	out=$(mktemp)
	code=$(curl -sS -o "$out" -w '%{http_code}' "$@")
	cat "$out"; echo; rm -f "$out"
	if [ -n "$want" ]; then
		[ "$code" = "$want" ] || { echo "docs check: curl $*: status $code, the document says $want" >&2; return 1; }
	elif [ "$code" -ge 400 ]; then
		echo "docs check: curl $*: status $code" >&2; return 1
	fi
}
`

// script turns a block into a bash script in w, or returns "" when none of
// its commands is run here.
func script(t *testing.T, w *docWorld, b docBlock) string {
	t.Helper()
	var body []string
	ownCaddy := false
	for _, full := range commands(b) {
		cmd, comment := splitComment(full)
		if cmd == "" {
			continue
		}
		covered := false
		for _, c := range coveredElsewhere {
			if c.command.MatchString(cmd) {
				t.Logf("%s: %q is checked by %s", b, cmd, c.by)
				covered = true
			}
		}
		if covered {
			continue
		}
		switch first := strings.Fields(cmd)[0]; {
		case cmd == "make build":
			// The binaries are built already (TestMain, exampleBackend).
			body = append(body, ":")
		case caddyRun.MatchString(cmd):
			m := caddyRun.FindStringSubmatch(cmd)
			ownCaddy = true
			body = append(body, fmt.Sprintf("%s run --config %s --adapter caddyfile%s", caddyBin, w.config(t, m[1]), m[2]))
		case cliCommand.MatchString(cmd):
			rest := w.rewrite(cliCommand.ReplaceAllString(cmd, ""))
			if !strings.Contains(rest, "--address") {
				rest += " --address " + w.admin
			}
			body = append(body, caddyBin+" service-registry"+rest)
		case first == "bin/backend":
			body = append(body, exampleBackend(t)+w.rewrite(strings.TrimPrefix(cmd, "bin/backend")))
		case first == "curl" && !strings.ContainsAny(cmd, "|;&") && !strings.Contains(cmd, " -o ") && !strings.Contains(cmd, " -w "):
			want := ""
			if m := statusNote.FindStringSubmatch(comment); m != nil {
				want = m[1]
			}
			body = append(body, fmt.Sprintf("docs_curl %q %s", want, w.rewrite(strings.TrimPrefix(cmd, "curl "))))
		case first == "curl" || first == "for" || first == "until" || first == "kill":
			body = append(body, w.rewrite(cmd))
		default:
			t.Errorf("%s: %q is neither run by this test nor in coveredElsewhere", b, cmd)
		}
	}
	if len(body) == 0 {
		return ""
	}
	var s strings.Builder
	s.WriteString("set -eo pipefail\n" + docsCurl)
	if !ownCaddy {
		// The demo, as make demo starts it.
		for i := range 3 {
			fmt.Fprintf(&s, "%s -listen %s -name backend-909%d &\n", exampleBackend(t), w.backends[i], i+1)
		}
		fmt.Fprintf(&s, "%s run --config %s --adapter caddyfile &\n", caddyBin, w.config(t, "examples/quickstart/Caddyfile"))
		fmt.Fprintf(&s, "until curl -fsS -o /dev/null http://%s/config/; do sleep 0.1; done\n", w.admin)
	}
	s.WriteString(strings.Join(body, "\n") + "\n")
	// Stop what the block left running, so that its output ends.
	s.WriteString("kill $(jobs -p) 2>/dev/null || true\nwait 2>/dev/null || true\n")
	return s.String()
}

// TestDocsCommands runs the commands of every sh and console block of
// README.md and docs/, block by block, each against its own Caddy: the
// quickstart demo's (three backends and examples/quickstart/Caddyfile), or
// the one the block starts itself, with free ports in place of 2019, 9090
// and 9091-9094.
func TestDocsCommands(t *testing.T) {
	ran := 0
	for _, file := range docFiles(t) {
		for _, b := range readBlocks(t, file) {
			if b.info != "sh" && b.info != "console" {
				continue
			}
			w := newDocWorld(t)
			s := script(t, w, b)
			if s == "" {
				continue
			}
			ran++
			t.Run(fmt.Sprintf("%s:%d", b.file, b.line), func(t *testing.T) {
				runDocScript(t, w, s)
			})
		}
	}
	if ran == 0 {
		t.Fatal("no command of the documents ran")
	}
}

// runDocScript runs s with bash from the repository root, in a process
// group of its own that is killed at the end (the backends and Caddy it
// started with it).
func runDocScript(t *testing.T, w *docWorld, s string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.Command("bash", "-c", s)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "HOME="+w.dir, "XDG_DATA_HOME="+filepath.Join(w.dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(w.dir, "config"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A script that failed before it stopped its processes leaves them
	// holding its output: stop waiting for it soon after bash exits.
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if ctx.Err() != nil {
		<-done
	}
	if err != nil {
		t.Errorf("%v\nscript:\n%s\noutput:\n%s", err, s, out.String())
	}
}

// TestDocsMetrics checks that every series docs/metrics.md lists is served
// by the built Caddy, and that it lists every svcreg series served.
func TestDocsMetrics(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile("`(caddy_service_registry_[a-z_]+)`").FindAllStringSubmatch(string(raw), -1) {
		listed[m[1]] = true
	}
	if len(listed) == 0 {
		t.Fatal("docs/metrics.md lists no series")
	}
	be := startBackend(t, "v1")
	c := startCaddy(t, fmt.Sprintf("service_registry {\n\t\tservice users v1 %s\n\t\ttraffic users {\n\t\t\tsplit v1 100\n\t\t}\n\t}", be.Addr), "{http} {\n\tservice_proxy\n}", caddyOpts{})
	if status, body, _ := c.Get("/users/hello"); status != 200 {
		t.Fatalf("GET /users/hello: %d %q", status, body)
	}
	resp, err := http.Get("http://" + c.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (caddy_service_registry_[a-z_]+) `).FindAllStringSubmatch(string(b), -1) {
		served[m[1]] = true
	}
	for name := range listed {
		if !served[name] {
			t.Errorf("docs/metrics.md lists %s, which Caddy does not serve", name)
		}
	}
	for name := range served {
		if !listed[name] {
			t.Errorf("Caddy serves %s, which docs/metrics.md does not list", name)
		}
	}
}

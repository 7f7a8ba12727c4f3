package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
)

// browser is a headless Chromium driven over the DevTools protocol on a
// pipe (--remote-debugging-pipe: NUL-terminated JSON messages, Chromium
// reading fd 3 and writing fd 4), which needs nothing beyond the standard
// library. It has one page.
type browser struct {
	t       testing.TB
	cmd     *exec.Cmd
	toChrom *os.File
	replies chan cdpMessage
	session string
	id      int
	log     testutil.Log
}

type cdpMessage struct {
	ID     int             `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// chromium returns the path of Debian's chromium. Without it the test
// fails when SVCREG_REQUIRE_CHROMIUM is set (CI sets it), and skips
// otherwise.
func chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("SVCREG_REQUIRE_CHROMIUM") != "" {
		t.Fatal("chromium is not on PATH and SVCREG_REQUIRE_CHROMIUM is set: apt-get install chromium")
	}
	t.Skip("chromium is not on PATH (apt-get install chromium); set SVCREG_REQUIRE_CHROMIUM=1 to fail instead")
	return ""
}

// chromiumFlags are the flags of every headless run: no sandbox (CI runs
// as root), and no traffic of its own.
func chromiumFlags(userDataDir string) []string {
	return []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--disable-features=MediaRouter,DialMediaRouteProvider",
		"--user-data-dir=" + userDataDir,
	}
}

// startBrowser starts Chromium and opens url in its page, as if following
// a link from referrer (if not "").
func startBrowser(t testing.TB, url, referrer string) *browser {
	t.Helper()
	bin := chromium(t)
	// Chromium reads commands from fd 3 and writes replies to fd 4.
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fromChrom, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, replies: make(chan cdpMessage, 64), toChrom: cmdW}
	b.cmd = exec.Command(bin, append(chromiumFlags(t.TempDir()), "--remote-debugging-pipe", "about:blank")...)
	b.cmd.ExtraFiles = []*os.File{cmdR, outW}
	b.cmd.Stdout, b.cmd.Stderr = &b.log, &b.log
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmdR.Close()
	outW.Close()
	go b.read(fromChrom)
	t.Cleanup(func() {
		b.toChrom.Close()
		_ = b.cmd.Process.Kill()
		_ = b.cmd.Wait()
		fromChrom.Close()
		if t.Failed() {
			t.Logf("chromium (pid %d) output:\n%s", b.cmd.Process.Pid, b.log.String())
		}
	})

	var target struct{ TargetID string }
	b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var attached struct{ SessionID string }
	b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached)
	b.session = attached.SessionID
	nav := map[string]any{"url": url}
	if referrer != "" {
		nav["referrer"] = referrer
	}
	b.call(b.session, "Page.navigate", nav, nil)
	return b
}

// read passes the replies to commands on; events are dropped.
func (b *browser) read(r *os.File) {
	defer close(b.replies)
	br := bufio.NewReader(r)
	for {
		msg, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(msg[:len(msg)-1], &m) == nil && m.ID != 0 {
			b.replies <- m
		}
	}
}

// call sends a command and decodes its result into result (if not nil).
func (b *browser) call(session, method string, params, result any) {
	b.t.Helper()
	b.id++
	msg := map[string]any{"id": b.id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	data, err := json.Marshal(msg)
	if err != nil {
		b.t.Fatal(err)
	}
	if _, err := b.toChrom.Write(append(data, 0)); err != nil {
		b.t.Fatalf("sending %s to chromium: %v", method, err)
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m, ok := <-b.replies:
			if !ok {
				b.t.Fatalf("%s: chromium closed its pipe", method)
			}
			if m.ID != b.id {
				continue
			}
			if m.Error != nil {
				b.t.Fatalf("%s: %s", method, m.Error.Message)
			}
			if result != nil {
				if err := json.Unmarshal(m.Result, result); err != nil {
					b.t.Fatalf("%s: decoding %s: %v", method, m.Result, err)
				}
			}
			return
		case <-timeout:
			b.t.Fatalf("%s: no answer from chromium in 30s", method)
		}
	}
}

// Eval evaluates a JavaScript expression in the page and decodes its
// value (which must be JSON) into v.
func (b *browser) Eval(expr string, v any) {
	b.t.Helper()
	var out struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	b.call(b.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &out)
	if out.ExceptionDetails != nil {
		b.t.Fatalf("evaluating %s: %s", expr, out.ExceptionDetails.Text)
	}
	if err := json.Unmarshal(out.Result.Value, v); err != nil {
		b.t.Fatalf("evaluating %s: decoding %s: %v", expr, out.Result.Value, err)
	}
}

// Text returns the text of the first element matching a CSS selector, or
// "" when none does.
func (b *browser) Text(selector string) string {
	b.t.Helper()
	var s string
	b.Eval(fmt.Sprintf(`(document.querySelector(%q) || {textContent: ""}).textContent`, selector), &s)
	return s
}

// SetViewport makes the page lay out as on a phone of the given width
// in CSS pixels (touch, device scale 3), as Chrome's device mode does.
func (b *browser) SetViewport(width, height int) {
	b.t.Helper()
	b.call(b.session, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": height, "deviceScaleFactor": 3, "mobile": true,
	}, nil)
}

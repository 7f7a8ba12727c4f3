package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/svcreg/caddy-svcreg/internal/testutil"
)

// pageRowsJS lists the endpoint rows of the status page as
// "service version address health" lines.
const pageRowsJS = `JSON.stringify([...document.querySelectorAll('table[data-service] tbody tr[data-address]')].map(tr =>
	[tr.closest('table').dataset.service, tr.closest('table').dataset.version, tr.dataset.address, tr.querySelector('td.health').textContent].join(' ')))`

// pageRows returns the page's endpoint rows, as pageRowsJS lists them.
func pageRows(b *browser) []string {
	var s string
	b.Eval(pageRowsJS, &s)
	var rows []string
	if err := jsonUnmarshal(s, &rows); err != nil {
		b.t.Fatal(err)
	}
	return rows
}

// hasRow says whether rows hold exactly this line.
func hasRow(rows []string, want string) bool {
	for _, r := range rows {
		if r == want {
			return true
		}
	}
	return false
}

// The status page, in a real headless browser against a running Caddy:
// it lists the services and their endpoints, counts requests, and shows
// a host going out of rotation within 2 s of its health check failing,
// and coming back, all without a reload.
func TestStatusPageInBrowser(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	c := startCaddy(t, healthRegistry("path /healthz\n\t\t\tinterval 100ms\n\t\t\ttimeout 500ms\n\t\t\tfall 2\n\t\t\trise 2", a, b), roundRobinSite, caddyOpts{})
	if status, body := c.AdminDo("POST", "/service_registry/services/orders/v2", "application/json", `{"address":"`+a.Addr+`"}`); status != http.StatusCreated {
		t.Fatalf("adding orders v2: %d %s", status, body)
	}
	if status, body := c.AdminDo("PUT", "/service_registry/traffic/users", "application/json", `{"split":{"v1":100}}`); status != http.StatusOK {
		t.Fatalf("setting a traffic policy: %d %s", status, body)
	}

	// Caddy's admin endpoint refuses a browser's request that carries
	// neither Origin nor Referer (a URL typed in the address bar), before
	// any route: the page is opened as if from a link on the same origin.
	pageURL := "http://" + c.Admin + "/service_registry/"
	page := startBrowser(t, pageURL, pageURL)
	want := []string{
		"users v1 " + a.Addr + " in rotation",
		"users v1 " + b.Addr + " in rotation",
		"orders v2 " + a.Addr + " in rotation",
	}
	var rows []string
	waitFor(t, 30*time.Second, "the page to list every endpoint in rotation", func() bool {
		rows = pageRows(page)
		for _, w := range want {
			if !hasRow(rows, w) {
				return false
			}
		}
		return true
	})
	if got := page.Text(`section[data-service="users"] .policy`); !strings.HasPrefix(got, "Traffic policy: split v1 100%;") {
		t.Errorf("users' traffic policy on the page: %q", got)
	}
	if got := page.Text(`table[data-service="users"] caption`); got != "users v1 — 2 of 2 in rotation" {
		t.Errorf("users v1 caption: %q", got)
	}
	var pollMs int
	page.Eval(`Number(document.body.dataset.pollMs)`, &pollMs)
	if pollMs <= 0 || pollMs > 1000 {
		t.Errorf("the page polls every %d ms; want at most 1000", pollMs)
	}
	var refs []string
	page.Eval(`[...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))`, &refs)
	for _, r := range refs {
		if strings.Contains(r, "//") {
			t.Errorf("the page loads %q from elsewhere", r)
		}
	}

	// Requests through the site show up as requests/s.
	trafficSplit(t, c, 20)
	rpsCell := fmt.Sprintf(`table[data-service="users"] tr[data-address=%q] td:nth-of-type(3)`, a.Addr)
	waitFor(t, 10*time.Second, "requests/s of "+a.Addr+" on the page", func() bool {
		s := page.Text(rpsCell)
		return s != "" && s != "…" && s != "0.0"
	})

	// b fails its health check: the page shows it out within 2 s of the
	// registry taking it out (the check's verdict), with no reload.
	b.health.Store(503)
	outRow := "users v1 " + b.Addr + " out: probe"
	var outAt, shownAt time.Time
	waitFor(t, 20*time.Second, "b out of rotation, on the admin API and then on the page", func() bool {
		if outAt.IsZero() {
			if ep := endpointState(t, c, b.Addr); ep["out_of_rotation"] == "probe" {
				outAt = time.Now()
			}
		}
		if hasRow(pageRows(page), outRow) {
			shownAt = time.Now()
			if outAt.IsZero() {
				outAt = shownAt
			}
			return true
		}
		return false
	})
	t.Logf("the page showed %s out %v after the admin API did", b.Addr, shownAt.Sub(outAt))
	if d := shownAt.Sub(outAt); d > 2*time.Second {
		t.Errorf("the page showed %s out %v after its health check failed; want within 2s", b.Addr, d)
	}
	if got := page.Text(`table[data-service="users"] caption`); got != "users v1 — 1 of 2 in rotation" {
		t.Errorf("users v1 caption with b out: %q", got)
	}
	waitFor(t, 5*time.Second, "the ejection in the page's event list", func() bool {
		return strings.Contains(page.Text("#events tbody"), b.Addr+"ejected (probe)")
	})

	// b answers again: back in rotation, and readmitted in the list.
	b.health.Store(0)
	waitFor(t, 20*time.Second, "b back in rotation on the page", func() bool {
		return hasRow(pageRows(page), "users v1 "+b.Addr+" in rotation")
	})
	waitFor(t, 5*time.Second, "the readmission in the page's event list", func() bool {
		return strings.Contains(page.Text("#events tbody"), b.Addr+"readmitted")
	})

	// A policy pointing at a version whose last endpoint left: the page
	// says so, and where its requests go.
	if status, body := c.AdminDo("PUT", "/service_registry/traffic/orders", "application/json", `{"split":{"v2":100}}`); status != http.StatusOK {
		t.Fatalf("setting orders' traffic policy: %d %s", status, body)
	}
	if status, body := c.AdminDo("DELETE", "/service_registry/services/orders/v2/"+a.Addr, "", ""); status != http.StatusOK {
		t.Fatalf("removing orders v2's endpoint: %d %s", status, body)
	}
	waitFor(t, 10*time.Second, "the page to say orders' policy points at v2, which has no host", func() bool {
		return strings.HasSuffix(page.Text(`section[data-service="orders"] .policy`), "no host: v2 (503)")
	})
}

// The handler module serves the same page on a site, under any prefix,
// read-only.
func TestStatusHandlerOnSite(t *testing.T) {
	a := startBackend(t, "a")
	c := startCaddy(t, healthRegistry("path /healthz\n\t\t\tinterval 100ms", a), `{http} {
	handle_path /ops/status* {
		service_registry_status
	}
	service_proxy
}`, caddyOpts{})

	// without the slash: redirected to the page's URL, whose relative
	// links find the data
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.HTTP+"/ops/status?x=1", nil)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if resp, err := noFollow.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "/ops/status/?x=1" {
		t.Errorf("GET /ops/status: %d, Location %q; want 308 to /ops/status/?x=1", resp.StatusCode, resp.Header.Get("Location"))
	}

	status, body, h := c.Get("/ops/status/")
	if status != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(body, "<title>Service registry status</title>") {
		t.Fatalf("GET /ops/status/: %d %q %.200s", status, h.Get("Content-Type"), body)
	}
	if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Error("the page has an absolute URL")
	}
	status, body, _ = c.Get("/ops/status/status.json")
	if status != http.StatusOK || !strings.Contains(body, `"address": "`+a.Addr+`"`) {
		t.Fatalf("GET /ops/status/status.json: %d %.300s", status, body)
	}
	resp, err := http.Post("http://"+c.HTTP+"/ops/status/", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /ops/status/: %d, Allow %q; want 405, GET, HEAD", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if status, body, _ := c.Get("/users/v1/x"); status != http.StatusOK {
		t.Errorf("the rest of the site: %d %q", status, body)
	}

	// In a browser, under the prefix, the page finds its data.
	page := startBrowser(t, "http://"+c.HTTP+"/ops/status/", "")
	waitFor(t, 30*time.Second, "the page under /ops/status/ to list "+a.Addr, func() bool {
		return hasRow(pageRows(page), "users v1 "+a.Addr+" in rotation")
	})
}

// phoneLayoutJS lists what is cut off or hidden on the page: the page
// wider than the screen, a cell or caption reaching past either edge, a
// hidden cell, an endpoint address broken over two lines.
const phoneLayoutJS = `(() => {
	const w = document.documentElement.clientWidth, problems = [];
	if (document.documentElement.scrollWidth > w) problems.push('page scrolls sideways: ' + document.documentElement.scrollWidth + ' > ' + w);
	for (const e of document.querySelectorAll('main caption, main th, main td')) {
		if (e.closest('thead')) continue;
		const r = e.getBoundingClientRect();
		if (getComputedStyle(e).display === 'none' || r.width === 0) problems.push('hidden: ' + (e.dataset.label || e.textContent));
		else if (r.left < 0 || r.right > w + 0.5) problems.push('cut off: ' + (e.dataset.label || '') + ' ' + e.textContent + ' at ' + r.left + '-' + r.right);
	}
	for (const th of document.querySelectorAll('tr[data-address] th[scope=row]')) {
		const range = document.createRange();
		range.selectNodeContents(th);
		if (range.getClientRects().length !== 1) problems.push('address wraps: ' + th.textContent);
	}
	return JSON.stringify({width: w, problems});
})()`

// The status page on a phone, 390 CSS pixels wide, in headless Chromium:
// every column of every endpoint shows (latency and weight included),
// nothing reaches past the screen's edge, addresses stay on one line; a
// drained endpoint (weight 0) shows as drained, one that nothing has
// tried yet as not tried, and metadata shows.
func TestStatusPageOnPhone(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	nobody := testutil.RefusedAddr(t)
	c := startCaddy(t, fmt.Sprintf(`service_registry {
		service users v1 %s
		service orders v1 %s
	}`, a.Addr, nobody), `{http} {
	service_proxy
}`, caddyOpts{})
	if status, body := c.AdminDo("POST", "/service_registry/services/users/v1", "application/json",
		`{"address":"`+b.Addr+`","weight":0,"metadata":{"zone":"eu-west-1a","rack":"r17"}}`); status != http.StatusCreated {
		t.Fatalf("adding a drained endpoint: %d %s", status, body)
	}
	if status, body := c.AdminDo("PUT", "/service_registry/traffic/users", "application/json", `{"split":{"v1":100},"aliases":{"stable":"v1"},"fallback":"v1"}`); status != http.StatusOK {
		t.Fatalf("setting a traffic policy: %d %s", status, body)
	}
	for range 5 {
		if status, _, _ := c.Get("/users/v1/x"); status != http.StatusOK {
			t.Fatalf("GET /users/v1/x: %d", status)
		}
	}
	if n := b.arrived.Load(); n != 0 {
		t.Errorf("the drained endpoint got %d requests", n)
	}

	pageURL := "http://" + c.Admin + "/service_registry/"
	page := startBrowser(t, pageURL, pageURL)
	page.SetViewport(390, 844)
	want := []string{
		"users v1 " + a.Addr + " in rotation",
		"users v1 " + b.Addr + " drained (weight 0): no new requests",
		"orders v1 " + nobody + " not tried yet",
	}
	waitFor(t, 30*time.Second, "the page to list every endpoint", func() bool {
		rows := pageRows(page)
		for _, w := range want {
			if !hasRow(rows, w) {
				return false
			}
		}
		return page.Text(`table[data-service="users"] tr[data-address="`+a.Addr+`"] td[data-label="Latency"]`) != "–"
	})
	var layout struct {
		Width    int
		Problems []string
	}
	var raw string
	page.Eval(phoneLayoutJS, &raw)
	if err := jsonUnmarshal(raw, &layout); err != nil {
		t.Fatal(err)
	}
	if layout.Width != 390 {
		t.Fatalf("the page is %d CSS pixels wide, want the phone's 390", layout.Width)
	}
	for _, p := range layout.Problems {
		t.Errorf("at 390 px: %s", p)
	}
	if got := page.Text(`tr[data-address="` + b.Addr + `"] td[data-label="Weight"]`); got != "0" {
		t.Errorf("the drained endpoint's weight on the page: %q, want 0", got)
	}
	if got := page.Text(`tr[data-address="` + b.Addr + `"] td[data-label="Metadata"]`); got != "rack=r17, zone=eu-west-1a" {
		t.Errorf("the drained endpoint's metadata on the page: %q", got)
	}
	if got := page.Text(`table[data-service="users"] caption`); got != "users v1 — 1 of 2 in rotation" {
		t.Errorf("users v1 caption with one endpoint drained: %q", got)
	}
	if got := page.Text(`section[data-service="users"] .source`); !strings.Contains(got, "set through the admin API") {
		t.Errorf("users' policy, set through the admin API, not shown as stored: %q", got)
	}
}

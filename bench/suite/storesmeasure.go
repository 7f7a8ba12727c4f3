package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
)

// StoreSample is one poll of the store and of both instances' admin API:
// how many endpoints the store holds and each instance lists (-1: no
// answer), what an instance lists that the store does not (+) and the
// other way round (-), and the TCP connections each holds to the store.
type StoreSample struct {
	AtMs float64 `json:"at_ms"`
	// StoreMs is how long reading the store took.
	StoreMs float64   `json:"store_ms"`
	Store   int       `json:"store"`
	Listed  [2]int    `json:"listed"`
	Diff    [2]string `json:"diff,omitempty"`
	Conns   [2]int    `json:"conns"`
}

// storePoll is a poll with the sets themselves; a set equal to the
// previous poll's is the same map.
type storePoll struct {
	at    time.Duration // the store read's start
	end   time.Duration // and end
	store content       // nil: the store did not answer
	inst  [2]map[string]bool
	conns [2]int
}

// poll reads the store, then both instances' listings, every interval
// until ctx is done.
func (c *cell) poll(ctx context.Context, every time.Duration) {
	_, portText, _ := net.SplitHostPort(c.storeAddr)
	var prev storePoll
	for ctx.Err() == nil {
		began := time.Now()
		p := storePoll{at: c.since()}
		if held, err := c.st.Content(2 * time.Second); err == nil {
			p.store = same(held, prev.store)
		}
		p.end = c.since()
		for i, r := range c.caddys {
			if listed, _, err := listing(r.admin, time.Second); err == nil {
				p.inst[i] = same(listed, prev.inst[i])
			}
			p.conns[i] = connsTo(r.proc.cmd.Process.Pid, portText)
		}
		c.mu.Lock()
		c.raw = append(c.raw, p)
		c.mu.Unlock()
		prev = p
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(began.Add(every))):
		}
	}
}

// same returns prev when it equals set, else set.
func same[M ~map[string]V, V comparable](set, prev M) M {
	if prev != nil && maps.Equal(set, prev) {
		return prev
	}
	return set
}

// sameKeys reports whether a and b have the same keys.
func sameKeys[A ~map[string]V, B ~map[string]W, V, W any](a A, b B) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

// listing returns the endpoints an instance's admin API lists, as
// "service/version/address", and whether it says it is synced.
func listing(admin string, timeout time.Duration) (map[string]bool, bool, error) {
	client := &http.Client{Timeout: timeout}
	resp, err := client.Get("http://" + admin + "/service_registry/services")
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, false, fmt.Errorf("listing: %s", resp.Status)
	}
	var list struct {
		Synced   bool `json:"synced"`
		Services []struct {
			Name      string `json:"name"`
			Version   string `json:"version"`
			Endpoints []struct {
				Address string `json:"address"`
			} `json:"endpoints"`
		} `json:"services"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, false, err
	}
	listed := map[string]bool{}
	for _, s := range list.Services {
		for _, ep := range s.Endpoints {
			listed[s.Name+"/"+s.Version+"/"+ep.Address] = true
		}
	}
	return listed, list.Synced, nil
}

// connsTo counts the established TCP connections of process pid to port
// on the loopback.
func connsTo(pid int, port string) int {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	var p int
	fmt.Sscan(port, &p)
	suffix := fmt.Sprintf(":%04X", p)
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local remote state ... inode (the tenth field)
			if len(fields) > 9 && fields[3] == "01" && strings.HasSuffix(fields[2], suffix) && inodes[fields[9]] {
				n++
			}
		}
		f.Close()
	}
	return n
}

// matches reports whether instance i's listing at poll k is what the
// store held at that poll or a neighbour (the store is read just before
// the instances: a change between the two reads is not a difference).
func (c *cell) matches(i, k int) bool {
	listed := c.raw[k].inst[i]
	if listed == nil {
		return false
	}
	for _, j := range []int{k, k + 1, k - 1} {
		if j >= 0 && j < len(c.raw) && c.raw[j].store != nil && sameKeys(listed, c.raw[j].store) {
			return true
		}
	}
	return false
}

// settled reports whether, in the last window of polls after the fault,
// the store answered and both instances listed what it held.
func (c *cell) settled(window time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	from := c.since() - window
	n := 0
	for k := len(c.raw) - 1; k >= 0 && c.raw[k].at >= from; k-- {
		if c.raw[k].at < c.faultEnd || c.raw[k].store == nil || !c.matches(0, k) || !c.matches(1, k) {
			return false
		}
		n++
	}
	return n >= 5
}

// converge returns the time from the fault's end until instance i lists
// what the store holds for good; -1 if it does not at the end.
func (c *cell) converge(i int) time.Duration {
	last := -1 // the last poll after the fault's end where it did not
	for k, p := range c.raw {
		if p.at >= c.faultEnd && p.store != nil && !c.matches(i, k) {
			last = k
		}
	}
	if last < 0 {
		return 0
	}
	for k := last + 1; k < len(c.raw); k++ {
		if c.raw[k].store != nil {
			return c.raw[k].at - c.faultEnd
		}
	}
	return -1
}

// heldThrough reports whether the store held an endpoint whose key begins
// with prefix from before from to after to: one that the last poll the
// store answered at or before from and the first at or after to both
// list, under the same registration (not deleted and registered again in
// between, when the store may have held none). With no poll before, the
// store is taken to hold it; with none after, the last one before says.
func (c *cell) heldThrough(from, to time.Duration, prefix string) bool {
	var before, after content
	for _, p := range c.raw {
		if p.store == nil {
			continue
		}
		if p.end <= from {
			before = p.store
		} else if p.at >= to {
			after = p.store
			break
		}
	}
	if before == nil {
		return true
	}
	if after == nil {
		after = before
	}
	for k, id := range after {
		if strings.HasPrefix(k, prefix) && before[k] == id {
			return true
		}
	}
	return false
}

// unlisted reports what the store's reads say of addr from before from to
// after to: known when a read that ended by from and one that began at
// or after to answered, listed when one of them, or one in between,
// listed addr as a host of service bench.
func (c *cell) unlisted(from, to time.Duration, addr string) (known, listed bool) {
	first := -1 // the last read that ended by from
	for k, p := range c.raw {
		if p.store != nil && p.end <= from {
			first = k
		}
	}
	if first < 0 {
		return false, false
	}
	for _, p := range c.raw[first:] {
		if p.store == nil {
			continue
		}
		listed = listed || lists(p.store, addr)
		if p.at >= to {
			return true, listed
		}
	}
	return false, listed
}

// addedThrough reports whether host name was added through the admin
// API (answered 201) before from, and not deleted (answered 200) before
// to: the store held it then, whether or not a read of the store fell in
// between (on a busy machine the reads can be seconds apart).
func (c *cell) addedThrough(name string, from, to time.Duration) bool {
	if name != c.hosts[3].name {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var added, deleted time.Duration = -1, -1
	for _, w := range c.writes {
		end := time.Duration((w.AtMs + w.Ms) * float64(time.Millisecond))
		switch {
		case w.Method == http.MethodPost && w.Status == http.StatusCreated:
			added = end
		case w.Method == http.MethodDelete && w.Status == http.StatusOK:
			deleted = end // drained of its requests in flight, then gone
		}
	}
	return added >= 0 && added <= from && (deleted < 0 || to <= deleted)
}

// lists reports whether set holds addr as a host of service bench.
func lists(set content, addr string) bool {
	for k := range set {
		if strings.HasPrefix(k, "bench/") && strings.HasSuffix(k, "/"+addr) {
			return true
		}
	}
	return false
}

// summarize computes the cell's figures from the polls and the load's
// timelines.
func (c *cell) summarize(run *StoreRun) {
	bucket := 100 * time.Millisecond
	held := "bench/v1/"
	if c.f.split {
		held = "bench/"
	}
	addrOf := map[string]string{}
	for _, h := range c.hosts {
		addrOf[h.name] = h.addr
	}
	run.Hosts = addrOf
	run.StaleByHost = map[string]int{}
	for i := range c.caddys {
		converged := c.converge(i) // stale answers after this miss the target
		for j, b := range run.Timeline[i] {
			start := time.Duration(j) * bucket
			if b.Failed > 0 {
				if c.heldThrough(start, start+bucket, held) {
					run.FailedHeld += b.Failed
				}
			}
			if start < c.faultEnd {
				continue
			}
			for name, n := range b.Backends {
				if c.addedThrough(name, start, start+bucket) {
					continue // the store held it: the admin API said so
				}
				known, listed := c.unlisted(start-2*bucket, start+bucket, addrOf[name])
				if known && !listed {
					run.Stale += n
					run.StaleByHost[name] += n
					if converged < 0 || start >= c.faultEnd+converged+2*bucket {
						run.StaleLate += n
					}
				}
			}
		}
		run.ConvergeMs[i] = -1
		if converged >= 0 {
			run.ConvergeMs[i] = ms(converged)
		}
	}
	for _, p := range c.raw {
		s := StoreSample{AtMs: ms(p.at), StoreMs: ms(p.end - p.at), Store: -1, Conns: p.conns}
		if p.store != nil {
			s.Store = len(p.store)
		}
		for i, listed := range p.inst {
			s.Listed[i] = -1
			if listed != nil {
				s.Listed[i] = len(listed)
				if p.store != nil {
					s.Diff[i] = diff(listed, p.store)
				}
			}
			if p.at >= c.faultEnd {
				run.StoreConns[i] = max(run.StoreConns[i], p.conns[i])
			}
		}
		run.Samples = append(run.Samples, s)
	}
	run.Writes = c.writes
	run.WritesCheck = c.checkWrites()
	run.Reregistered = c.rereg
	run.Notes = c.notes
}

// diff says what listed has that held has not (+) and the other way round
// (-), the first three of each.
func diff(listed map[string]bool, held content) string {
	var plus, minus []string
	for k := range listed {
		if _, ok := held[k]; !ok {
			plus = append(plus, "+"+k)
		}
	}
	for k := range held {
		if !listed[k] {
			minus = append(minus, "-"+k)
		}
	}
	slices.Sort(plus)
	slices.Sort(minus)
	var parts []string
	for _, l := range [][]string{plus, minus} {
		if len(l) > 3 {
			l = append(l[:3], fmt.Sprintf("(%d more)", len(l)-3))
		}
		parts = append(parts, l...)
	}
	return strings.Join(parts, " ")
}

// checkWrites tells from the store's polls whether the admin writes'
// answers were true: a 503 changed nothing, a 2xx applied, a DELETE's 200
// or 404 left the endpoint gone, and it appeared at most once (never
// applied twice).
func (c *cell) checkWrites() string {
	var post, del *AdminWrite
	for i := range c.writes {
		switch c.writes[i].Method {
		case http.MethodPost:
			post = &c.writes[i]
		case http.MethodDelete:
			del = &c.writes[i]
		}
	}
	if post == nil || del == nil {
		return "writes missing"
	}
	key := c.hosts[3].key()
	appeared, present, before, between := 0, false, false, false
	for _, p := range c.raw {
		if p.store == nil {
			continue
		}
		_, there := p.store[key]
		if ms(p.end) < post.AtMs {
			before = there
			continue
		}
		if ms(p.at) < post.AtMs {
			continue // read while the POST was sent
		}
		if there && !present {
			appeared++
		}
		present = there
		between = between || ms(p.at) >= post.AtMs+post.Ms && ms(p.end) <= del.AtMs
	}
	var problems []string
	unchecked := false
	if before {
		problems = append(problems, "the endpoint was in the store before the POST")
	}
	for _, w := range []*AdminWrite{post, del} {
		if w.Status == 0 {
			problems = append(problems, fmt.Sprintf("%s got no answer: %s", w.Method, w.Answer))
		}
	}
	switch {
	case post.Status == http.StatusServiceUnavailable && appeared > 0:
		problems = append(problems, "POST answered 503 but the endpoint appeared in the store")
	case (post.Status == http.StatusCreated || post.Status == http.StatusOK) && appeared == 0 && between:
		problems = append(problems, fmt.Sprintf("POST answered %d but the store never showed the endpoint", post.Status))
	case (post.Status == http.StatusCreated || post.Status == http.StatusOK) && appeared == 0:
		unchecked = true

	case post.Status >= 400 && post.Status < 500 && appeared > 0:
		problems = append(problems, fmt.Sprintf("POST answered %d but the endpoint appeared in the store", post.Status))
	}
	// A POST answered 504 may still apply (so the admin API says): a
	// DELETE answered before it did is true when answered, and the
	// endpoint there at the end is the POST's outcome, not the DELETE's.
	unsettled := post.Status == http.StatusGatewayTimeout
	if del.Status == http.StatusOK && present && !unsettled {
		problems = append(problems, "DELETE answered 200 but the endpoint is in the store at the end")
	}
	if del.Status == http.StatusNotFound && present && !unsettled {
		problems = append(problems, "DELETE answered 404 (gone either way) but the endpoint is in the store at the end")
	}
	if del.Status == http.StatusServiceUnavailable && appeared > 0 && !present {
		problems = append(problems, "DELETE answered 503 but the endpoint was deleted")
	}
	if appeared > 1 {
		problems = append(problems, fmt.Sprintf("applied twice: the endpoint appeared in the store %d times", appeared))
	}
	if len(problems) > 0 {
		return "wrong: " + strings.Join(problems, "; ")
	}
	switch {
	case unchecked:
		return "unchecked: no read of the store fell between the POST's answer and the DELETE"

	case appeared == 0:
		return "ok: never applied"
	case present:
		return "ok: applied once, still registered (a 504 may still apply)"
	default:
		return "ok: applied once, then deleted"
	}
}

// caddyLog returns the lines Caddy logged from fromMs to toMs after t0: the
// registry's at any level, and other loggers' warnings and errors but the
// access log's; at most 100.
func caddyLog(out string, t0 time.Time, fromMs, toMs float64) []LogLine {
	var lines []LogLine
	dropped := 0
	for line := range strings.SplitSeq(out, "\n") {
		var m map[string]any
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		ts, _ := m["ts"].(float64)
		at := (ts - float64(t0.UnixNano())/1e9) * 1000
		level, _ := m["level"].(string)
		logger, _ := m["logger"].(string)
		msg, _ := m["msg"].(string)
		registry := strings.HasPrefix(logger, "service_registry")
		if at < fromMs || at > toMs || !(registry || (level != "info" && level != "debug" && !strings.HasPrefix(logger, "http.log.access"))) {
			continue
		}
		if len(lines) == 100 {
			dropped++
			continue
		}
		for _, k := range []string{"ts", "level", "logger", "msg"} {
			delete(m, k)
		}
		fields, _ := json.Marshal(m)
		l := LogLine{AtMs: float64(int(at)), Level: level, Logger: logger, Msg: msg}
		if len(m) > 0 {
			l.Fields = shorten(string(fields), 400)
		}
		lines = append(lines, l)
	}
	if dropped > 0 {
		lines = append(lines, LogLine{Msg: fmt.Sprintf("(%d more lines)", dropped)})
	}
	return lines
}

// secondsText shows a convergence time.
func secondsText(ms float64) string {
	if ms < 0 {
		return "not by the end"
	}
	return fmt.Sprintf("%.1f s", ms/1000)
}

// writesText shows the admin writes' answers, such as "POST 503, DELETE 404".
func writesText(ws []AdminWrite) string {
	var parts []string
	for _, w := range ws {
		status := fmt.Sprint(w.Status)
		if w.Status == 0 {
			status = "no answer"
		}
		if !w.DuringFault {
			status += " (after the fault)"
		}
		parts = append(parts, w.Method+" "+status)
	}
	return strings.Join(parts, ", ")
}

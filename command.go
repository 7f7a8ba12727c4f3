package svcreg

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "service-registry",
		Usage: "list|add|remove|traffic|watch [--address <admin>]",
		Short: "Lists and changes the service registry of a running Caddy",
		Long: `
Talks to the service registry of a running Caddy through its admin API,
as 'caddy reload' does: the admin endpoint is --address, else the one the
config given with --config (and --adapter) names, else localhost:2019.

  list [<service> [<version>]]    endpoints, health and counters as a table
  add <service> <version> <addr>  adds an endpoint, or changes its weight
                                  (--weight 0 drains it) and metadata
  remove <service> <version> <addr>
                                  removes an endpoint, and says how its drain went
  traffic [<service>]             shows a traffic policy, or sets (--split ...)
                                  or deletes (--delete) one
  watch [<service>]               the list, redrawn every --interval
`,
		CobraFunc: serviceRegistryCommand,
	})
}

// serviceRegistryCommand builds `caddy service-registry` and its
// subcommands.
func serviceRegistryCommand(cmd *cobra.Command) {
	cmd.PersistentFlags().StringP("address", "", "", "The address of the admin API endpoint (default: from --config, else localhost:2019)")
	cmd.PersistentFlags().StringP("config", "c", "", "Configuration file whose admin address to use")
	cmd.PersistentFlags().StringP("adapter", "a", "", "Name of config adapter to apply to --config")
	cmd.Args = cobra.NoArgs // an unknown subcommand is an error, not help
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }

	list := &cobra.Command{
		Use:   "list [<service> [<version>]]",
		Short: "Lists service versions, their endpoints, health and counters",
		RunE:  runWithArgs(cmdList),
	}
	list.Flags().Bool("json", false, "Print the admin API's JSON")
	cmd.AddCommand(list)

	add := &cobra.Command{
		Use:   "add <service> <version> <address>",
		Short: "Adds an endpoint to a service version",
		RunE:  runWithArgs(cmdAdd),
	}
	add.Flags().Int("weight", 1, "Weight of the endpoint, 1 to 100, or 0 to drain it (registered, sent no new request)")
	add.Flags().String("ttl", "", "Time to live of the registration, with the etcd backend (e.g. 30s)")
	add.Flags().StringArray("meta", nil, "Metadata key=value (repeatable), shown by list")
	cmd.AddCommand(add)

	cmd.AddCommand(&cobra.Command{
		Use:   "remove <service> <version> <address>",
		Short: "Removes an endpoint, after draining its requests in flight",
		RunE:  runWithArgs(cmdRemove),
	})

	traffic := &cobra.Command{
		Use:   "traffic [<service>] [--split v1=90,v2=10 ...] [--delete]",
		Short: "Shows, sets or deletes the traffic policy of a service",
		Long: `
Without flags, shows the service's traffic policy (every service's
without <service>). With --split and the others, sets the service's
whole policy: a flag left out takes its default, it is not kept from
the policy before. --delete removes the policy set through the admin
API, so that the config's applies again.
`,
		RunE: runWithArgs(cmdTraffic),
	}
	traffic.Flags().String("split", "", "Weights of versions, e.g. v1=90,v2=10")
	traffic.Flags().StringArray("alias", nil, "An alias of a version, e.g. stable=v1 (repeatable)")
	traffic.Flags().String("header", "", "Request header that names a version (default X-Service-Version)")
	traffic.Flags().String("cookie", "", "Cookie that names a version (default svc_version)")
	traffic.Flags().String("sticky", "", "What keeps a client on its version: cookie, ip, off or header:<name> (default cookie)")
	traffic.Flags().String("fallback", "", "Version to use when the chosen one has no available host")
	traffic.Flags().Bool("delete", false, "Delete the policy set through the admin API")
	traffic.Flags().Bool("json", false, "Print the admin API's JSON")
	cmd.AddCommand(traffic)

	watch := &cobra.Command{
		Use:   "watch [<service>]",
		Short: "Shows the list, redrawn every --interval until interrupted",
		RunE:  runWithArgs(cmdWatch),
	}
	watch.Flags().Duration("interval", time.Second, "Time between two refreshes")
	watch.Flags().Int("count", 0, "Stop after this many refreshes (default: never)")
	cmd.AddCommand(watch)
}

// runWithArgs runs f with the command's flags and arguments. An error is
// one plain line on stderr, "Error: <what went wrong>", as cobra prints a
// bad flag, and exit status 1: a command line tool's error, not a log
// line of the server.
func runWithArgs(f func(caddycmd.Flags, []string) (int, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		_, err := f(caddycmd.Flags{FlagSet: cmd.Flags()}, args)
		if err == nil {
			return nil
		}
		var uerr usageError
		if errors.As(err, &uerr) {
			err = fmt.Errorf("%s: %s (usage: %s)", cmd.CommandPath(), uerr.problem, cmd.UseLine())
		}
		cmd.SilenceUsage = true
		return err // cobra prints "Error: " and the message; caddy exits 1
	}
}

// usageError is a bad argument or flag.
type usageError struct{ problem string }

func (e usageError) Error() string { return e.problem }

func usagef(format string, args ...any) (int, error) {
	return caddy.ExitCodeFailedStartup, usageError{fmt.Sprintf(format, args...)}
}

// adminClient sends requests to the admin API of a running Caddy.
type adminClient struct {
	addr string
}

// newAdminClient finds the admin endpoint as `caddy reload` does.
func newAdminClient(fl caddycmd.Flags) (adminClient, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return adminClient{}, fmt.Errorf("couldn't determine admin API address: %v", err)
	}
	return adminClient{addr: addr}, nil
}

// do sends the request and returns the answer's body; an error answer
// becomes its message, a failure to connect names the endpoint.
func (c adminClient) do(method, uri string, body any) ([]byte, int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, 0, err
		}
		rd = bytes.NewReader(b)
	}
	resp, err := caddycmd.AdminAPIRequest(c.addr, method, uri, nil, rd)
	if err != nil {
		return nil, 0, c.requestError(method, uri, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, 0, fmt.Errorf("reading answer of %s %s from admin endpoint %s: %v", method, uri, c.addr, err)
	}
	return b, resp.StatusCode, nil
}

// requestError rewords an error of caddycmd.AdminAPIRequest: an error
// answer ("caddy responded with error: HTTP 400: {"error":"..."}") becomes
// its status and message, anything else is the endpoint not answering.
func (c adminClient) requestError(method, uri string, err error) error {
	msg := err.Error()
	const answered = "caddy responded with error: "
	if rest, ok := strings.CutPrefix(msg, answered); ok {
		status, body, _ := strings.Cut(rest, ": ")
		var apiErr struct {
			Error string `json:"error"`
		}
		if json.Unmarshal([]byte(body), &apiErr) == nil && apiErr.Error != "" {
			body = apiErr.Error
		}
		return fmt.Errorf("%s (%s from %s %s)", strings.TrimSpace(body), strings.TrimPrefix(status, "HTTP "), method, uri)
	}
	return fmt.Errorf("admin endpoint %s unreachable (is Caddy running there? see --address): %s %s: %v", c.addr, method, uri, err)
}

// getJSON GETs uri and decodes its JSON answer into v; raw is the body.
func (c adminClient) getJSON(uri string, v any) (raw []byte, err error) {
	raw, _, err = c.do(http.MethodGet, uri, nil)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("decoding answer of GET %s: %v", uri, err)
	}
	return raw, nil
}

func servicesPath(segs ...string) string {
	p := "/service_registry/services"
	for _, s := range segs {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// fetchServices gets the service versions args (none, a service, or a
// service and version) select, and the JSON to print for --json.
func (c adminClient) fetchServices(args []string) ([]serviceStatus, []byte, error) {
	if len(args) == 2 {
		var st serviceStatus
		raw, err := c.getJSON(servicesPath(args...), &st)
		return []serviceStatus{st}, raw, err
	}
	var all servicesStatus
	raw, err := c.getJSON(servicesPath(args...), &all)
	return all.Services, raw, err
}

func cmdList(fl caddycmd.Flags, args []string) (int, error) {
	if len(args) > 2 {
		return usagef("want at most <service> and <version>, got %d arguments", len(args))
	}
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	services, raw, err := c.fetchServices(args)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		os.Stdout.Write(bytes.TrimSpace(raw))
		fmt.Println()
		return caddy.ExitCodeSuccess, nil
	}
	return caddy.ExitCodeSuccess, writeEndpointTable(os.Stdout, services)
}

// writeEndpointTable writes the endpoints of services as an aligned table; a
// version without endpoints gets a row of its own.
func writeEndpointTable(w io.Writer, services []serviceStatus) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVERSION\tADDRESS\tWEIGHT\tHEALTH\tIN-FLIGHT\tREQUESTS\tFAILURES\tLATENCY\tMETADATA")
	for _, svc := range services {
		if len(svc.Endpoints) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\n", svc.Name, svc.Version)
		}
		for _, ep := range svc.Endpoints {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%s\t%s\n", svc.Name, svc.Version, ep.Address, ep.Weight,
				cliHealth(ep), ep.InFlight, ep.Requests, ep.Failures, cliDash(ep.Latency), cliDash(cliJoinPairs(ep.Metadata)))
		}
	}
	return tw.Flush()
}

// cliHealth is "in", or "out" and why, with "drained" first for an
// endpoint of weight 0 (registered, sent no new request), and "not tried"
// for one that no request or check has reached yet.
func cliHealth(ep endpointStatus) string {
	h := "out"
	switch {
	case ep.Healthy && ep.Held:
		h = "in (held)"
	case ep.Healthy && ep.NotTried:
		h = "in (not tried)"
	case ep.Healthy:
		h = "in"
	case ep.OutOfRotation != "":
		h = "out (" + ep.OutOfRotation + ")"
	}
	if ep.Drained {
		return "drained, " + h
	}
	return h
}

func cliDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdAdd(fl caddycmd.Flags, args []string) (int, error) {
	if len(args) != 3 {
		return usagef("want <service> <version> <address>, got %d arguments", len(args))
	}
	body := map[string]any{"address": args[2]}
	if fl.Changed("weight") {
		w := fl.Int("weight")
		if w < 0 || w > 100 {
			return usagef("--weight %d: want 0 (drained) to 100", w)
		}
		body["weight"] = w // 0 included: it drains
	}
	if ttl := fl.String("ttl"); ttl != "" {
		body["ttl"] = ttl
	}
	metas, _ := fl.GetStringArray("meta")
	if len(metas) > 0 {
		meta, err := parseCLIPairs("--meta", metas)
		if err != nil {
			return usagef("%v", err)
		}
		body["metadata"] = meta
	}
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	raw, status, err := c.do(http.MethodPost, servicesPath(args[0], args[1]), body)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	what := "added"
	if status == http.StatusOK {
		what = "updated (it was there already)"
	}
	fmt.Printf("%s %s to %s %s\n", what, args[2], args[0], args[1])
	var st serviceStatus
	if json.Unmarshal(raw, &st) == nil && st.Name != "" {
		return caddy.ExitCodeSuccess, writeEndpointTable(os.Stdout, []serviceStatus{st})
	}
	fmt.Println(strings.TrimSpace(string(raw))) // added, and removed again since
	return caddy.ExitCodeSuccess, nil
}

func cmdRemove(fl caddycmd.Flags, args []string) (int, error) {
	if len(args) != 3 {
		return usagef("want <service> <version> <address>, got %d arguments", len(args))
	}
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	raw, _, err := c.do(http.MethodDelete, servicesPath(args...), nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	var res struct {
		Address  string `json:"address"`
		Drained  bool   `json:"drained"`
		Waited   string `json:"waited"`
		InFlight int    `json:"in_flight"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("decoding answer of DELETE: %v", err)
	}
	drain := "drained after " + res.Waited
	if !res.Drained {
		drain = "not drained: gave up after " + res.Waited
	}
	fmt.Printf("removed %s from %s %s; %s, %d requests in flight\n", res.Address, args[0], args[1], drain, res.InFlight)
	return caddy.ExitCodeSuccess, nil
}

// parseCLIPairs parses key=value items, each key once.
func parseCLIPairs(flag string, items []string) (map[string]string, error) {
	out := map[string]string{}
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%s %q: want key=value", flag, it)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s: %q given twice", flag, k)
		}
		out[k] = v
	}
	return out, nil
}

// parseSplit parses --split: comma-separated version=weight, weights
// 0-100 (the admin API checks the versions and the sum).
func parseSplit(s string) (map[string]int, error) {
	pairs, err := parseCLIPairs("--split", strings.Split(s, ","))
	if err != nil {
		return nil, err
	}
	split := make(map[string]int, len(pairs))
	for v, w := range pairs {
		n, err := strconv.Atoi(w)
		if err != nil || n < 0 || n > 100 {
			return nil, fmt.Errorf("--split: weight %q of %s: want a whole number from 0 to 100", w, v)
		}
		split[v] = n
	}
	return split, nil
}

// parseSticky parses --sticky into the policy's sticky and sticky_header.
func parseSticky(s string) (sticky, header string, err error) {
	switch {
	case s == "cookie" || s == "ip" || s == "off":
		return s, "", nil
	case strings.HasPrefix(s, "header:") && len(s) > len("header:"):
		return "header", strings.TrimPrefix(s, "header:"), nil
	}
	return "", "", fmt.Errorf("--sticky %q: want cookie, ip, off or header:<name>", s)
}

// trafficFlags are the flags that set a policy.
var trafficFlags = []string{"split", "alias", "header", "cookie", "sticky", "fallback"}

// policyFromFlags builds the body of a traffic PUT.
func policyFromFlags(fl caddycmd.Flags) (map[string]any, error) {
	p := map[string]any{}
	if s := fl.String("split"); s != "" {
		split, err := parseSplit(s)
		if err != nil {
			return nil, err
		}
		p["split"] = split
	}
	if aliases, _ := fl.GetStringArray("alias"); len(aliases) > 0 {
		m, err := parseCLIPairs("--alias", aliases)
		if err != nil {
			return nil, err
		}
		p["aliases"] = m
	}
	for _, f := range []string{"header", "cookie", "fallback"} {
		if v := fl.String(f); v != "" {
			p[f] = v
		}
	}
	if s := fl.String("sticky"); s != "" {
		sticky, header, err := parseSticky(s)
		if err != nil {
			return nil, err
		}
		p["sticky"] = sticky
		if header != "" {
			p["sticky_header"] = header
		}
	}
	return p, nil
}

func cmdTraffic(fl caddycmd.Flags, args []string) (int, error) {
	if len(args) > 1 {
		return usagef("want at most one <service>, got %d arguments", len(args))
	}
	setting := slices.ContainsFunc(trafficFlags, func(f string) bool { return fl.Changed(f) })
	del := fl.Bool("delete")
	switch {
	case (setting || del) && len(args) == 0:
		return usagef("setting or deleting a policy needs a <service>")
	case setting && del:
		return usagef("--delete goes with no other policy flag")
	}
	var body map[string]any
	if setting {
		var err error
		if body, err = policyFromFlags(fl); err != nil {
			return usagef("%v", err)
		}
	}
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	uri := "/service_registry/traffic"
	if len(args) == 1 {
		uri += "/" + url.PathEscape(args[0])
	}
	method := http.MethodGet
	switch {
	case del:
		method = http.MethodDelete
	case setting:
		method = http.MethodPut
	}
	var send any // a nil map would be sent as null
	if body != nil {
		send = body
	}
	raw, _, err := c.do(method, uri, send)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		fmt.Println(strings.TrimSpace(string(raw)))
		return caddy.ExitCodeSuccess, nil
	}
	return caddy.ExitCodeSuccess, printTraffic(os.Stdout, method, raw)
}

// printTraffic shows the answer of a traffic request.
func printTraffic(w io.Writer, method string, raw []byte) error {
	if method == http.MethodDelete {
		var res struct {
			Service string          `json:"service"`
			Now     json.RawMessage `json:"now"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return fmt.Errorf("decoding answer of DELETE: %v", err)
		}
		fmt.Fprintf(w, "deleted the traffic policy of %s set through the admin API\n", res.Service)
		if len(res.Now) == 0 {
			return nil
		}
		fmt.Fprintln(w, "the config's applies again:")
		var now trafficStatus
		if err := json.Unmarshal(res.Now, &now); err != nil {
			return fmt.Errorf("decoding answer of DELETE: %v", err)
		}
		now.Service = res.Service
		return writePolicyTable(w, []trafficStatus{now})
	}
	var policies []trafficStatus
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("[")) {
		if err := json.Unmarshal(raw, &policies); err != nil {
			return fmt.Errorf("decoding traffic policies: %v", err)
		}
	} else {
		var p trafficStatus
		if err := json.Unmarshal(raw, &p); err != nil {
			return fmt.Errorf("decoding traffic policy: %v", err)
		}
		policies = append(policies, p)
	}
	return writePolicyTable(w, policies)
}

// writePolicyTable writes traffic policies as an aligned table.
func writePolicyTable(w io.Writer, policies []trafficStatus) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSPLIT\tALIASES\tHEADER\tCOOKIE\tSTICKY\tFALLBACK\tNO HOST\tSOURCE")
	for _, p := range policies {
		sticky := p.Sticky
		if sticky == "header" {
			sticky += ":" + p.StickyHeader
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Service, cliDash(cliJoinPairs(p.Split)), cliDash(cliJoinPairs(p.Aliases)),
			cliDash(p.Header), cliDash(p.Cookie), cliDash(sticky), cliDash(p.Fallback), cliDash(strings.Join(p.NoHost, ",")), cliSource(p.Source))
	}
	return tw.Flush()
}

// cliSource shows where a policy comes from: "stored" (set through the
// admin API, wins over the config's) or "config".
func cliSource(s string) string {
	if s == "stored" {
		return "stored (overrides config)"
	}
	return cliDash(s)
}

// cliJoinPairs shows a map as k=v,k=v in the order of its keys.
func cliJoinPairs[V any](m map[string]V) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, m[k])
	}
	return strings.Join(parts, ",")
}

func cmdWatch(fl caddycmd.Flags, args []string) (int, error) {
	if len(args) > 1 {
		return usagef("want at most one <service>, got %d arguments", len(args))
	}
	interval, err := fl.GetDuration("interval")
	if err != nil || interval <= 0 {
		return usagef("--interval must be above 0")
	}
	count := fl.Int("count")
	if count < 0 {
		return usagef("--count must not be negative")
	}
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return watchServices(ctx, c, args, interval, count, os.Stdout, cliIsTerminal(os.Stdout))
}

// watchServices draws the list every interval, count times (0: until ctx ends).
// On a terminal each drawing replaces the last; else they follow one
// another, each after a timestamp line. An error before the first
// drawing ends it; a later one is shown in place of the table.
func watchServices(ctx context.Context, c adminClient, args []string, interval time.Duration, count int, w io.Writer, terminal bool) (int, error) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for n := 1; ; n++ {
		services, _, err := c.fetchServices(args)
		if err != nil && n == 1 {
			return caddy.ExitCodeFailedStartup, err
		}
		if terminal {
			fmt.Fprint(w, "\x1b[H\x1b[2J") // cursor home, clear screen
		}
		fmt.Fprintf(w, "--- %s  admin %s  every %s\n", time.Now().Format(time.RFC3339), c.addr, interval)
		if err != nil {
			fmt.Fprintf(w, "error: %v\n", err)
		} else if err := writeEndpointTable(w, services); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		if count > 0 && n >= count {
			return caddy.ExitCodeSuccess, nil
		}
		select {
		case <-ctx.Done():
			return caddy.ExitCodeSuccess, nil
		case <-tick.C:
		}
	}
}

// cliIsTerminal reports whether f is a character device (a terminal).
func cliIsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

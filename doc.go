// Package svcreg is a Caddy plugin that routes /<service>/<version>/...
// to the hosts registered for that service and version, balances every
// request, and retries a request that fails on a host it has not tried.
//
// The registry itself, its backends' interface, health and balancing are
// in the Caddy-free package registry; the backends (memory, etcd,
// zookeeper, consul) are packages of their own. This package is the Caddy
// glue, one concept per file, in the order a request meets them:
//
//   - app.go: the service_registry app, which owns the registry and its
//     backend;
//   - matcher.go: the service_version matcher, which finds the service
//     version of a request (by path, or by its traffic policy); boxed.go:
//     the values of its placeholders, made once per version and policy;
//     service_state.go: what the proxy keeps per service version while it
//     stays registered (those values, its counters, its retry budget);
//   - errors_handler.go: service_errors, which answers what the route's
//     handlers fail with; body.go: service_no_body;
//   - selection.go: the service_registry upstream source and the
//     service_failover selection policy, which hand the version's
//     endpoints to reverse_proxy and fail over; attempt.go: what one
//     request has tried;
//   - transport.go: the service_http transport, a try and its outcome;
//     watchdog.go: a try's deadline and silence check; hedge.go: hedged
//     tries; h1.go: which requests its own HTTP/1.1 client sends;
//     conn.go: the connections that count what is written on them;
//     replay.go: which requests and bodies can be sent again;
//   - caddyfile.go: service_proxy and the other Caddyfile syntax;
//   - admin.go, command.go, status.go and metrics.go: the admin API, the
//     CLI, the status page and the metrics.
package svcreg

// Placeholders and variables the matcher sets.
const (
	varName    = "svc_name"
	varVersion = "svc_version"

	placeholderName    = "svc.name"
	placeholderVersion = "svc.version"
	placeholderPrefix  = "svc.prefix"
	// placeholderVersionFrom says why the request went to its version:
	// path, alias, header, cookie, sticky, split or fallback.
	placeholderVersionFrom = "svc.version_from"
	// varSticky holds the stickyCookie to set on the answer, if any.
	varSticky = "svc_sticky"
	// placeholderError holds the short text Caddy answers with when the
	// request fails with an unknown service (404) or no available host
	// (503). service_proxy's error route writes it, or, for a matched
	// request no host answered, a text made of {svc.name} and {svc.version}.
	placeholderError = "svc.error"
	// varUnknown is set (true) on a request the matcher matched, in
	// Unknown "match" mode, although it names an unknown service or
	// version: service_errors answers it 404 with {svc.error}.
	varUnknown = "svc_unknown"
)

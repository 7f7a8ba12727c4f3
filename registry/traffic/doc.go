// Package traffic chooses the version of a service that a request goes
// to when it names none, or names an alias (docs/traffic.md): a Policy
// is what the config, the admin API and the stores hold; Policy.Compile
// checks it and returns its Rules, which choose a version for a Request
// without allocating. It imports nothing of Caddy, nor the registry: the
// registry keeps each service's Rules in its snapshots, with the split's
// versions resolved to their hosts.
package traffic

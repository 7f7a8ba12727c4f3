// Package registry is the core of svcreg: a registry of the endpoints
// (host:port) of every version of every service, that a proxy reads on
// every request without locks or I/O, and that keeps each endpoint's
// health. It imports nothing of Caddy; the Caddy modules of
// github.com/svcreg/caddy-svcreg are thin glue around it, and any Go
// program can use it the same way.
//
// The parts:
//
//   - ServiceKey names a service version; ValidName and ParseAddress say
//     what names and addresses are, and Endpoint.Normalize makes an
//     endpoint canonical.
//   - The registry holds its endpoints as an immutable Snapshot of Services,
//     each with its sorted Endpoints and weighted round-robin Rotation.
//     Readers load the snapshot atomically; writers publish a new one.
//   - A Backend (memory, etcd, ...) stores the endpoints and feeds the
//     registry through a Feed: the backend only lists, watches and writes
//     its store and hands the Feed what the store holds (Changes beside
//     the configuration's seeds); the Feed merges the seeds in, publishes,
//     holds what a store drops while out of reach (Feed.Reachable) and
//     logs its reachability. See the backends directory; the memory
//     backend's store, backends/memory/memstore, imports nothing of Caddy.
//   - Registry ties a Backend, its snapshots and a health checker
//     together and offers Add, Delete (which drains the endpoint first),
//     Failure (passive health) and Lookup.
//   - A HealthPolicy, built from HealthCheck entries, configures active
//     checks, rise and fall, slow start, the ejection limit and the drain
//     timeout; the probe is an HTTP check, or a TCP connect.
//   - Tries balance a request over a Service's endpoints and fail over,
//     never trying an endpoint twice; the balancing algorithms themselves
//     (round_robin, random, least_conn, p2c, peak_ewma) are in the
//     balance package, registry/balance, which a proxy also uses over
//     its own pool of hosts.
//   - A service's traffic policy (package registry/traffic: canary
//     splits, aliases, sticky clients) is stored by the Backend
//     (PutTraffic) and kept in each Snapshot as its Rules, with the
//     split's versions resolved to their Service (Versions.Routing).
//
// A program that balances its own calls over a registry and fails over,
// here with the memory backend's store (memstore, which imports nothing of
// Caddy either) saving to storage, any registry.Storage
// (example_test.go runs this):
//
//	backend := &memstore.Store{StorageKey: "registry.json"}
//	reg := registry.New(backend, registry.Options{})
//	if err := reg.Start(registry.BackendEnv{Seeds: seeds, Storage: storage}, nil, nil); err != nil {
//		return err
//	}
//	defer reg.Stop()
//
//	svc, err := reg.Lookup(registry.ServiceKey{Service: "users", Version: "v1"})
//	if err != nil {
//		return err // unknown service or version, or not synced yet
//	}
//	tries := registry.NewTries(svc)
//	for ep := tries.Next(balance.RoundRobin); ep != nil; ep = tries.Next(balance.RoundRobin) {
//		ep.Sent()
//		if err := call(ep.Address); err == nil {
//			return nil
//		}
//		reg.Failure(svc.Key(), ep.Address) // out of rotation until it answers
//	}
//	return svc.Unavailable()
package registry

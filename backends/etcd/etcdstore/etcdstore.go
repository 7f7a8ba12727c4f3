// Package etcdstore is the etcd backend's store without Caddy: the
// registry in etcd, shared by every instance on the same prefix, watched so
// that no etcd call is made on the request path. The Caddy module
// service_registry.backends.etcd is a thin wrapper around it; a Go program
// can hand a Store to registry.New directly.
package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/svcreg/caddy-svcreg/backends/etcd/etcdkv"
	"github.com/svcreg/caddy-svcreg/registry"
	"github.com/svcreg/caddy-svcreg/registry/traffic"
)

// Timing of the etcd backend.
var (
	etcdRetryMin     = 100 * time.Millisecond // first wait after a failed sync
	etcdRetryMax     = 5 * time.Second        // longest wait between syncs
	etcdHealthPeriod = time.Second            // how often reachability is checked
	etcdApplyTimeout = 10 * time.Second       // how long Add and Delete wait to see their write
)

// Store keeps the registry in etcd, so that several instances share it
// and services can register themselves under leases.
//
// Layout: one key per endpoint, <prefix><service>/<version>/<address>
// (address in canonical host:port form), with a small JSON value such as
// {"weight":2,"metadata":{"zone":"a"}}; an empty value or {} means the
// defaults. Anything else under the prefix (a bad key, bad JSON, a bad
// address) is skipped with one warning naming the key. A service's
// traffic policy is <prefix>@traffic/<service>, its value the policy's
// JSON (as the admin API takes it); it replaces the config's policy of
// that service on every instance on the prefix.
//
// One initial Get, then a Watch from the next revision: every change
// updates the in-memory snapshot, and no etcd call is made on the request
// path. The admin API writes to etcd, so every instance on the same prefix
// sees its changes. Seeds from the config are this instance's own: they are
// merged with what etcd holds and are not written to etcd.
//
// Faults: if etcd is unreachable at start, Start still returns and
// registry-routed requests get 503 until the first sync, retried with
// backoff; if it is lost later, routing keeps the last snapshot; when the
// connection is back, everything is listed again (one read), so that an
// etcd wiped, replaced or restored from an older snapshot in between is
// followed even when it has the same cluster ID and its revision has
// passed the old one's; that case is logged as "etcd went back in time".
// Each change of reachability is logged once.
type Store struct {
	prefix      string                     // the registry's key prefix, as etcdkv.Prefix makes it
	dialTimeout time.Duration              // bounds each request the store makes
	logger      atomic.Pointer[zap.Logger] // the latest config's
	config      clientv3.Config

	ctx    context.Context // ends at Stop
	cancel context.CancelFunc
	done   sync.WaitGroup

	mu      sync.Mutex // guards everything below
	stopped bool
	client  *clientv3.Client
	feed    *registry.Feed
	seeds   map[registry.ServiceKey][]registry.Endpoint        // for CheckDelete; the feed merges them
	stored  map[registry.ServiceKey]map[string]registry.Change // what etcd holds
	// the traffic policies etcd holds
	trafficStored map[string]traffic.Policy
	synced        bool
	reachable     bool
	applied       int64         // etcd revision the table reflects; 0 while a re-list is due
	appliedCh     chan struct{} // closed and replaced whenever applied moves
	// What identifies the etcd history the table reflects: its cluster ID
	// and the highest raft term seen. A revision below applied, a term
	// below term or another cluster ID means etcd was replaced or restored
	// from an older snapshot: everything is listed again.
	clusterID uint64
	term      uint64
	// seen is the highest revision a linearizable response reported (a
	// list, a write, the monitor's check): etcd's revision never goes
	// below it while its history goes on, even when the prefix holds no
	// key that changed lately (other programs' writes move it too).
	seen int64
	// revs is the modification revision of every key under the prefix
	// that the table reflects. When the connection to etcd is lost,
	// resume is the revision the table reflected then, and resumeRevs
	// revs then: the list after the reconnection reads the prefix as of
	// resume too, which holds exactly resumeRevs unless etcd's history
	// was rewritten in between (wiped and written again, restored from an
	// older snapshot). 0: no such check due.
	revs        map[string]int64
	resume      int64
	resumeRevs  map[string]int64
	wentBack    int                // times observe logged etcd going back in time
	epoch       int                // counts the lists; a watch applies only in its own
	watchCancel context.CancelFunc // ends the current watch
	warned      map[string]int64
	leases      map[string]*etcdLease // by key, for endpoints added with a TTL
}

// New returns a store on the etcd that config reaches, under prefix
// (etcdkv.Prefix makes it canonical; "" is /svcreg/). config.DialTimeout,
// if set, bounds each request the store makes as well as connecting
// (default: 5s); config.Logger is set from the registry's logger at Start.
// logger is for what the store logs until then.
func New(config clientv3.Config, prefix string, logger *zap.Logger) *Store {
	if config.DialTimeout <= 0 {
		config.DialTimeout = DefaultDialTimeout
	}
	e := &Store{prefix: etcdkv.Prefix(prefix), dialTimeout: config.DialTimeout, config: config}
	if logger == nil {
		logger = zap.NewNop()
	}
	e.logger.Store(logger)
	return e
}

// DefaultDialTimeout bounds connecting to etcd and each request a Store
// makes, by default.
const DefaultDialTimeout = 5 * time.Second

// etcdLease is a lease this store keeps alive for one endpoint.
type etcdLease struct {
	id     clientv3.LeaseID
	cancel context.CancelFunc
	// what to write again under a new lease if this one is lost
	value   string
	seconds int64
}

// safely runs f, turning a panic into a logged error, so that a bug in
// handling one response does not end a goroutine the registry depends on:
// the caller goes on as after any other failure.
func (e *Store) safely(what string, f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic %s: %v", what, p)
			e.log().Error("panic "+what, zap.String("backend", "etcd"), zap.Any("panic", p), zap.Stack("stack"))
		}
	}()
	return f()
}

// log returns the logger of the config that started last.
func (e *Store) log() *zap.Logger { return e.logger.Load() }

// Start begins syncing in the background; it never waits for etcd.
func (e *Store) Start(feed *registry.Feed, env registry.BackendEnv) error {
	e.logger.Store(env.Logger)
	config := e.config
	config.Logger = env.Logger.Named("etcd_client").WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel))
	seeds := env.Seeds
	client, err := clientv3.New(config)
	if err != nil {
		return fmt.Errorf("creating etcd client: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.mu.Lock()
	e.client, e.feed, e.seeds, e.ctx, e.cancel = client, feed, seeds, ctx, cancel
	e.feed.Configure(env)
	e.stored = map[registry.ServiceKey]map[string]registry.Change{}
	e.trafficStored = map[string]traffic.Policy{}
	e.appliedCh = make(chan struct{})
	e.warned = map[string]int64{}
	e.revs = map[string]int64{}
	e.leases = map[string]*etcdLease{}
	e.reachable = true // until shown otherwise, so that a first failure is logged
	e.mu.Unlock()
	e.done.Go(func() { e.sync(ctx) })
	e.done.Go(func() { e.monitor(ctx) })
	e.done.Go(func() { e.followConnection(ctx) })
	return nil
}

// Reconfigure takes a newer config's seeds and logger, and republishes
// the registry once synced. The etcd client keeps the logger it started with.
func (e *Store) Reconfigure(env registry.BackendEnv) error {
	e.logger.Store(env.Logger)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seeds = env.Seeds
	e.feed.Configure(env)
	if e.synced {
		e.feed.Publish(e.stored, false)
		e.feed.PublishTraffic(e.trafficStored)
	}
	return nil
}

// Stop ends the sync, the monitor and every lease keepalive, and closes
// the client. Leases are left to expire, TTL after this.
func (e *Store) Stop() error {
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		return nil
	}
	e.stopped = true
	e.mu.Unlock()
	e.cancel()
	e.done.Wait()
	return e.client.Close()
}

// sync lists the prefix and watches it until ctx is done, listing again
// after a failure or a compacted watch.
func (e *Store) sync(ctx context.Context) {
	wait := etcdRetryMin
	for ctx.Err() == nil {
		var rev int64
		var epoch int
		err := e.safely("listing etcd", func() (err error) {
			rev, epoch, err = e.list(ctx)
			return err
		})
		if err != nil {
			e.setReachable(false, err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, etcdRetryMax)
			continue
		}
		wait = etcdRetryMin
		e.setReachable(true, nil)
		watchCtx, cancel := context.WithCancel(ctx)
		e.mu.Lock()
		e.watchCancel = cancel
		if e.epoch != epoch {
			cancel() // observe asked for a re-list since this list
		}
		e.mu.Unlock()
		err = e.safely("watching etcd", func() error { return e.watch(watchCtx, rev+1, epoch) })
		relist := watchCtx.Err() != nil // observe ended the watch
		cancel()
		if ctx.Err() != nil {
			return
		}
		if relist {
			continue // observe logged why
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			e.log().Info("etcd watch revision was compacted; listing everything again", zap.String("backend", "etcd"))
		} else {
			e.log().Warn("etcd watch ended; listing everything again", zap.String("backend", "etcd"), zap.Error(err))
		}
	}
}

// list reads the whole prefix and publishes it, and returns its revision
// and the epoch it began.
func (e *Store) list(ctx context.Context) (rev int64, epoch int, err error) {
	ctx, cancel := context.WithTimeout(ctx, e.dialTimeout)
	defer cancel()
	e.mu.Lock()
	seen, resume, resumeRevs, told := e.seen, e.resume, e.resumeRevs, e.wentBack
	e.mu.Unlock()
	resp, err := e.client.Get(ctx, e.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, 0, err
	}
	rewritten, err := e.rewritten(ctx, resp, seen, resume, resumeRevs)
	if err != nil {
		return 0, 0, err
	}
	stored := map[registry.ServiceKey]map[string]registry.Change{}
	policies := map[string]traffic.Policy{}
	e.mu.Lock()
	defer e.mu.Unlock()
	if rewritten && e.wentBack == told { // else observe logged it meanwhile
		e.log().Warn("etcd went back in time (wiped, replaced or restored from an older snapshot); listed everything again",
			zap.String("backend", "etcd"), zap.Int64("revision", resp.Header.Revision), zap.Int64("highest_revision_seen", max(seen, resume)))
		e.wentBack++ // answers to requests sent before are of the old history
	}
	e.resume, e.resumeRevs = 0, nil
	e.revs = make(map[string]int64, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e.revs[string(kv.Key)] = kv.ModRevision
		if _, ok := etcdkv.ParseTrafficKey(e.prefix, string(kv.Key)); ok {
			if service, p, ok := e.parseTraffic(kv); ok {
				policies[service] = p
			}
			continue
		}
		key, ep, ok := e.parse(kv)
		if !ok {
			continue
		}
		if stored[key] == nil {
			stored[key] = map[string]registry.Change{}
		}
		stored[key][ep.Address] = registry.Change{Endpoint: ep}
	}
	e.stored, e.trafficStored = stored, policies
	e.synced = true
	e.feed.Publish(e.stored, false)
	e.feed.PublishTraffic(e.trafficStored)
	e.clusterID, e.term = resp.Header.ClusterId, resp.Header.RaftTerm
	if rewritten {
		e.seen = resp.Header.Revision // the history listed is the one that goes on
	} else {
		e.seen = max(e.seen, resp.Header.Revision)
	}
	e.epoch++
	e.setApplied(resp.Header.Revision)
	return resp.Header.Revision, e.epoch, nil
}

// rewritten reports whether a list (resp) shows that etcd's history
// changed since this backend last read it: its revision is below seen,
// the highest revision seen before the list was sent; or, after a
// reconnection, the prefix as of resume (the revision the table reflected
// when the connection was lost) is not what the table held then (revs).
// A history compacted past resume cannot be compared, and is taken as
// unchanged: the list makes the table right either way.
func (e *Store) rewritten(ctx context.Context, resp *clientv3.GetResponse, seen, resume int64, revs map[string]int64) (bool, error) {
	if resp.Header.Revision < seen {
		return true, nil
	}
	if resume == 0 {
		return false, nil // no reconnection, or one whose reason was logged
	}
	if resp.Header.Revision < resume {
		return true, nil
	}
	past, err := e.client.Get(ctx, e.prefix, clientv3.WithPrefix(), clientv3.WithRev(resume), clientv3.WithKeysOnly())
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return false, nil
	case errors.Is(err, rpctypes.ErrFutureRev):
		return true, nil
	case err != nil:
		return false, err
	}
	if len(past.Kvs) != len(revs) {
		return true, nil
	}
	for _, kv := range past.Kvs {
		if rev, ok := revs[string(kv.Key)]; !ok || rev != kv.ModRevision {
			return true, nil
		}
	}
	return false, nil
}

// observe checks the header of an etcd response against the history the
// table reflects. If etcd went back in time (restored from an older
// snapshot, or wiped and started afresh) or is another cluster, what the
// table holds may be stale and the watch may wait for revisions that
// never come: observe ends the watch, so that everything is listed again,
// and holds back writers until then. It returns whether it did.
//
// A linearizable response (a read or write, not a watch's) comes with
// floor, the highest revision seen before its request was sent: its
// revision is never below that while etcd's history goes on (revisions
// move with every write, the prefix's or not). Requests in flight at the
// same time may be answered in any order, so floor is taken before the
// request, not when its answer comes. A watch's response (epoch, else -1)
// is checked against the revision the table reflects, unless a list has
// begun since the watch's (its answers are stale then, and ignored).
func (e *Store) observe(h *etcdserverpb.ResponseHeader, f floor, epoch int) bool {
	if h == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.synced || e.applied == 0 || (epoch >= 0 && epoch != e.epoch) {
		return false // not listed yet, a re-list is already due, or a stale watch
	}
	if f.rev >= 0 && f.history != e.wentBack {
		return false // sent before etcd's history was found to have changed
	}
	back := h.ClusterId != e.clusterID || h.RaftTerm < e.term ||
		(epoch >= 0 && h.Revision < e.applied) || (f.rev >= 0 && h.Revision < f.rev)
	if !back {
		e.term = h.RaftTerm
		if f.rev >= 0 {
			e.seen = max(e.seen, h.Revision)
		}
		return false
	}
	e.log().Warn("etcd went back in time (wiped, replaced or restored from an older snapshot); listing everything again",
		zap.String("backend", "etcd"), zap.Int64("revision", h.Revision), zap.Int64("highest_revision_seen", max(e.seen, e.applied)),
		zap.Uint64("raft_term", h.RaftTerm), zap.Uint64("last_raft_term", e.term),
		zap.Bool("other_cluster", h.ClusterId != e.clusterID))
	// logged: the list need not say it again; the history it lists is new
	e.resume, e.resumeRevs, e.seen = 0, nil, 0
	e.wentBack++
	e.relistLocked()
	return true
}

// floor is the highest revision linearizable responses reported before a
// request was sent, in the history (wentBack) of that moment; see observe.
type floor struct {
	rev     int64
	history int
}

// noFloor goes with a watch's response.
var noFloor = floor{rev: -1}

// floor returns the floor of a request sent now.
func (e *Store) floor() floor {
	e.mu.Lock()
	defer e.mu.Unlock()
	return floor{rev: e.seen, history: e.wentBack}
}

// relistLocked ends the watch and has everything listed again; writers
// wait for the list. The caller holds e.mu.
func (e *Store) relistLocked() {
	e.applied = 0 // writers wait for the re-list
	e.epoch++     // the old watch applies nothing more
	if e.watchCancel != nil {
		e.watchCancel()
	}
}

// followConnection lists everything again whenever the client's
// connection to etcd comes back after it was lost. etcd's client resumes
// a watch by itself on a new connection, from the revision it stood at;
// if etcd was wiped or restored from an older snapshot in between, with
// the same configuration (so the same cluster ID and raft term) and
// written to since (so its revision is not lower either), nothing in its
// answers would tell, and the watch would wait for revisions of a history
// that is gone. Every such change of etcd needs the connection to break,
// and a list after each reconnection is one read.
func (e *Store) followConnection(ctx context.Context) {
	conn := e.client.ActiveConnection()
	if conn == nil {
		return
	}
	ready := false
	var lostAt int64 // the revision the table reflected when the connection was lost; 0: not lost
	var lostRevs map[string]int64
	for state := conn.GetState(); ; state = conn.GetState() {
		e.mu.Lock()
		back, lost := false, false
		switch {
		case state == connectivity.Ready && lostAt != 0:
			if e.synced && e.applied != 0 && !e.stopped { // else a list is due anyway
				e.log().Warn("etcd connection lost and back; listing everything again", zap.String("backend", "etcd"))
				e.resume, e.resumeRevs = lostAt, lostRevs
				e.relistLocked()
			}
			lostAt, lostRevs, ready, back = 0, nil, true, true
		case state == connectivity.Ready:
			ready = true
		case ready && e.applied != 0:
			ready, lostAt, lostRevs, lost = false, e.applied, maps.Clone(e.revs), true
		}
		e.mu.Unlock()
		// What the list after a reconnection drops is held a moment, as
		// after any outage: an etcd restarted from nothing, or that
		// revoked leases it could not renew, has lost registrations that
		// their owners make again once they see it.
		switch {
		case lost:
			e.feed.Reachable(false, false, nil, "", "")
		case back:
			e.feed.Reachable(true, false, nil, "", "")
		}
		if !conn.WaitForStateChange(ctx, state) {
			return // ctx is done
		}
	}
}

// watch applies changes from revision rev on until the watch fails, as
// long as epoch is current.
func (e *Store) watch(ctx context.Context, rev int64, epoch int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range e.client.Watch(ctx, e.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithProgressNotify()) {
		if err := resp.Err(); err != nil {
			return err
		}
		if e.observe(&resp.Header, noFloor, epoch) {
			return nil
		}
		e.apply(resp.Events, resp.Header.Revision, epoch)
	}
	return ctx.Err()
}

// apply folds watch events into the table, unless a re-list has begun
// since the watch's list (epoch).
func (e *Store) apply(events []*clientv3.Event, rev int64, epoch int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if epoch != e.epoch {
		return
	}
	changed := map[registry.ServiceKey]bool{}
	trafficChanged := false
	for _, ev := range events {
		if ev.Type == mvccpb.DELETE {
			delete(e.revs, string(ev.Kv.Key))
		} else {
			e.revs[string(ev.Kv.Key)] = ev.Kv.ModRevision
		}
		if service, ok := etcdkv.ParseTrafficKey(e.prefix, string(ev.Kv.Key)); ok {
			_, had := e.trafficStored[service]
			if ev.Type == mvccpb.DELETE {
				delete(e.trafficStored, service)
			} else if _, p, valid := e.parseTraffic(ev.Kv); valid {
				e.trafficStored[service] = p
			} else {
				delete(e.trafficStored, service) // rewritten with a bad value
			}
			_, has := e.trafficStored[service]
			trafficChanged = trafficChanged || had || has
			continue
		}
		key, addr, ok := etcdkv.ParseKey(e.prefix, string(ev.Kv.Key))
		if !ok {
			if ev.Type == mvccpb.PUT {
				e.warnOnce(string(ev.Kv.Key), ev.Kv.ModRevision, etcdkv.ErrNotEndpointKey.Error())
			}
			continue
		}
		if ev.Type == mvccpb.DELETE {
			if lease := e.leases[string(ev.Kv.Key)]; lease != nil && !e.stopped {
				e.done.Go(func() { e.disown(string(ev.Kv.Key), lease) })
			}
			if _, had := e.stored[key][addr]; had {
				delete(e.stored[key], addr)
				changed[key] = true
			}
			continue
		}
		_, ep, valid := e.parse(ev.Kv)
		_, had := e.stored[key][addr]
		switch {
		case valid:
			if e.stored[key] == nil {
				e.stored[key] = map[string]registry.Change{}
			}
			e.stored[key][addr] = registry.Change{Endpoint: ep}
			changed[key] = true
		case had: // rewritten with a bad value: it is no longer usable
			delete(e.stored[key], addr)
			changed[key] = true
		}
	}
	for key := range changed {
		if len(e.stored[key]) == 0 {
			delete(e.stored, key)
		}
		e.feed.PublishKey(key, e.stored[key], false)
	}
	if trafficChanged {
		e.feed.PublishTraffic(e.trafficStored)
	}
	e.setApplied(rev)
}

// parseTraffic reads a traffic policy's key-value pair, warning once
// about a bad one. The caller holds e.mu.
func (e *Store) parseTraffic(kv *mvccpb.KeyValue) (string, traffic.Policy, bool) {
	service, p, err := etcdkv.DecodeTraffic(e.prefix, kv.Key, kv.Value)
	if err != nil {
		e.warnOnce(string(kv.Key), kv.ModRevision, err.Error())
		return "", traffic.Policy{}, false
	}
	return service, p, true
}

// PutTraffic writes a service's traffic policy to etcd and waits until
// the watch has applied it; every instance on the prefix uses it.
func (e *Store) PutTraffic(ctx context.Context, service string, p traffic.Policy) error {
	k, val, err := etcdkv.EncodeTraffic(e.prefix, service, p)
	if err != nil {
		return err
	}
	reqCtx, cancel := context.WithTimeout(ctx, e.dialTimeout)
	defer cancel()
	wasReady, f := e.connected(), e.floor()
	resp, err := e.client.Put(reqCtx, k, val)
	if err != nil {
		return e.writeFailed("writing "+k+" to etcd", wasReady, err)
	}
	e.observe(resp.Header, f, -1)
	return e.waitApplied(ctx, resp.Header.Revision)
}

// DeleteTraffic removes a service's traffic policy from etcd and waits
// until the watch has applied it.
func (e *Store) DeleteTraffic(ctx context.Context, service string) error {
	k := etcdkv.TrafficKey(e.prefix, service)
	reqCtx, cancel := context.WithTimeout(ctx, e.dialTimeout)
	defer cancel()
	wasReady, f := e.connected(), e.floor()
	resp, err := e.client.Delete(reqCtx, k)
	if err != nil {
		return e.writeFailed("deleting "+k+" from etcd", wasReady, err)
	}
	e.observe(resp.Header, f, -1)
	if resp.Deleted == 0 {
		return fmt.Errorf("removing the traffic policy of %q: %w", service, registry.ErrNoTrafficPolicy)
	}
	return e.waitApplied(ctx, resp.Header.Revision)
}

// parse reads one key-value pair, warning once about a bad one. The
// caller holds e.mu.
func (e *Store) parse(kv *mvccpb.KeyValue) (registry.ServiceKey, registry.Endpoint, bool) {
	key, ep, err := etcdkv.Decode(e.prefix, kv.Key, kv.Value)
	if err != nil {
		e.warnOnce(string(kv.Key), kv.ModRevision, err.Error())
		return registry.ServiceKey{}, registry.Endpoint{}, false
	}
	return key, ep, true
}

// warnOnce logs a skipped key once per version of it. The caller holds e.mu.
func (e *Store) warnOnce(key string, modRev int64, why string) {
	if e.warned[key] == modRev {
		return
	}
	e.warned[key] = modRev
	e.log().Warn("skipping etcd key", zap.String("backend", "etcd"), zap.String("key", key), zap.String("reason", why))
}

// setApplied records that the table reflects revision rev and wakes
// writers waiting for it. The caller holds e.mu.
func (e *Store) setApplied(rev int64) {
	if rev <= e.applied {
		return
	}
	e.applied = rev
	close(e.appliedCh)
	e.appliedCh = make(chan struct{})
}

// waitApplied waits until the table reflects revision rev.
func (e *Store) waitApplied(ctx context.Context, rev int64) error {
	ctx, cancel := context.WithTimeout(ctx, etcdApplyTimeout)
	defer cancel()
	for {
		e.mu.Lock()
		applied, ch := e.applied, e.appliedCh
		e.mu.Unlock()
		if applied >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("written to etcd at revision %d, but this instance has not seen it yet: %w: %w", rev, registry.ErrOutcomeUnknown, ctx.Err())
		}
	}
}

// monitor checks etcd's reachability, so that losing it is logged even
// while the watch waits quietly to resume.
func (e *Store) monitor(ctx context.Context) {
	tick := time.NewTicker(etcdHealthPeriod)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		e.mu.Lock()
		synced := e.synced
		e.mu.Unlock()
		if !synced {
			continue // the sync loop reports on its own until the first sync
		}
		check, cancel := context.WithTimeout(ctx, e.dialTimeout)
		f := e.floor()
		resp, err := e.client.Get(check, e.prefix) // one key: cheap whatever the registry's size
		cancel()
		if ctx.Err() != nil {
			return
		}
		e.setReachable(err == nil, err)
		if err == nil {
			e.observe(resp.Header, f, -1)
		}
	}
}

// setReachable logs a change of etcd's reachability.
func (e *Store) setReachable(ok bool, err error) {
	e.mu.Lock()
	changed := e.reachable != ok
	e.reachable = ok
	synced := e.synced
	e.mu.Unlock()
	if !changed {
		return
	}
	e.feed.Reachable(ok, synced, err, "etcd",
		"etcd reachable; registry synced", zap.Strings("endpoints", e.config.Endpoints))
}

// Add writes the endpoint to etcd (under a lease this store keeps alive
// when ep.TTL is set) and waits until the watch has applied it.
func (e *Store) Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	k, val, err := etcdkv.Encode(e.prefix, key, ep)
	if err != nil {
		return err
	}
	reqCtx, cancel := context.WithTimeout(ctx, e.dialTimeout)
	defer cancel()

	var opts []clientv3.OpOption
	var lease *etcdLease
	if ep.TTL != 0 {
		seconds := int64((time.Duration(ep.TTL) + time.Second - 1) / time.Second)
		grant, err := e.client.Grant(reqCtx, seconds)
		if err != nil {
			return fmt.Errorf("granting etcd lease for %s: %w: %w", k, registry.ErrBackendUnavailable, err)
		}
		lease = &etcdLease{id: grant.ID, value: val, seconds: seconds}
		opts = append(opts, clientv3.WithLease(grant.ID))
	}
	wasReady, f := e.connected(), e.floor()
	resp, err := e.client.Put(reqCtx, k, val, opts...)
	if err != nil {
		err = e.writeFailed("writing "+k+" to etcd", wasReady, err)
		if lease != nil && errors.Is(err, registry.ErrBackendUnavailable) {
			e.revoke(lease) // else the key may be on it: let the lease expire
		}
		return err
	}

	e.observe(resp.Header, f, -1)
	e.mu.Lock()
	old := e.leases[k]
	delete(e.leases, k)
	if lease != nil {
		e.keepAlive(k, lease)
	}
	e.mu.Unlock()
	if old != nil {
		e.revoke(old) // the key now lives on the new lease, or on none
	}
	return e.waitApplied(ctx, resp.Header.Revision)
}

// Adopt registers endpoints that another backend kept alive under leases
// of this backend's, in the background.
func (e *Store) Adopt(owned []registry.Owned) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped || e.ctx == nil {
		return
	}
	for _, o := range owned {
		e.done.Go(func() { e.adoptOne(e.ctx, o) })
	}
}

// adoptOne registers an endpoint that a backend this one replaced kept
// alive, under a lease of this backend's, retrying for a while.
func (e *Store) adoptOne(ctx context.Context, o registry.Owned) {
	wait := etcdRetryMin
	for range 8 {
		err := e.Add(ctx, o.Key, o.Endpoint)
		if err == nil || ctx.Err() != nil {
			return
		}
		e.log().Warn("taking over an endpoint from the previous config's etcd backend", zap.String("backend", "etcd"),
			zap.String("service", o.Key.Service), zap.String("version", o.Key.Version), zap.String("address", o.Endpoint.Address), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, etcdRetryMax)
	}
}

// Owned returns the endpoints this backend keeps registered under leases.
func (e *Store) Owned() []registry.Owned {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []registry.Owned
	for k, lease := range e.leases {
		key, ep, err := etcdkv.Decode(e.prefix, []byte(k), []byte(lease.value))
		if err != nil {
			continue
		}
		ep.TTL = registry.Duration(time.Duration(lease.seconds) * time.Second)
		out = append(out, registry.Owned{Key: key, Endpoint: ep})
	}
	return out
}

// connected reports whether the client has a ready connection to etcd.
func (e *Store) connected() bool {
	conn := e.client.ActiveConnection()
	return conn != nil && conn.GetState() == connectivity.Ready
}

// writeFailed says what a failed write means for the change. etcd refused
// it (a permission, a bad request, too many requests), or it never left
// (no connection to etcd before or after): nothing changed. Otherwise it
// may have reached etcd, and have been applied or still be: the outcome is
// unknown.
func (e *Store) writeFailed(what string, wasReady bool, err error) error {
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	switch code {
	case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.FailedPrecondition,
		codes.ResourceExhausted, codes.OutOfRange, codes.NotFound, codes.AlreadyExists:
		return fmt.Errorf("%s: %w: %w", what, registry.ErrBackendUnavailable, err)
	}
	if !wasReady && !e.connected() {
		return fmt.Errorf("%s: %w (no connection): %w", what, registry.ErrBackendUnavailable, err)
	}
	return fmt.Errorf("%s: %w: %w", what, registry.ErrOutcomeUnknown, err)
}

// keepAlive keeps lease alive until the backend stops or the lease is
// dropped. If etcd loses the lease (it expired while etcd could not be
// reached, or someone revoked it), the endpoint is written again under a
// new lease, as long as this backend still owns it. The caller holds e.mu.
func (e *Store) keepAlive(k string, lease *etcdLease) {
	if e.stopped {
		return
	}
	e.leases[k] = lease
	ctx, cancel := context.WithCancel(e.ctx)
	lease.cancel = cancel
	e.done.Go(func() {
		id := lease.id
		wait := etcdRetryMin
		for {
			ch, err := e.client.KeepAlive(ctx, id)
			if err == nil {
				for range ch { // drain the acknowledgements until the lease or ctx ends
				}
			}
			if ctx.Err() != nil {
				return
			}
			e.log().Warn("etcd lease lost; registering the endpoint again under a new lease",
				zap.String("backend", "etcd"), zap.String("key", k), zap.Error(err))
			for {
				if id, err = e.regrant(ctx, k, lease); err == nil {
					e.log().Info("endpoint registered again under a new etcd lease", zap.String("backend", "etcd"), zap.String("key", k))
					wait = etcdRetryMin
					break
				}
				if ctx.Err() != nil {
					return
				}
				e.log().Warn("registering the endpoint again", zap.String("backend", "etcd"), zap.String("key", k), zap.Error(err), zap.Duration("retry_in", wait))
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				wait = min(2*wait, etcdRetryMax)
			}
		}
	})
}

// regrant writes k again under a new lease, if this backend still owns it
// (its lease is lease), and returns the new lease's ID.
func (e *Store) regrant(ctx context.Context, k string, lease *etcdLease) (clientv3.LeaseID, error) {
	reqCtx, cancel := context.WithTimeout(ctx, e.dialTimeout)
	defer cancel()
	grant, err := e.client.Grant(reqCtx, lease.seconds)
	if err != nil {
		return 0, err
	}
	e.mu.Lock()
	owned := e.leases[k] == lease
	e.mu.Unlock()
	if owned {
		_, err = e.client.Put(reqCtx, k, lease.value, clientv3.WithLease(grant.ID))
	}
	if !owned || err != nil {
		_, _ = e.client.Revoke(reqCtx, grant.ID)
		if err == nil {
			err = context.Canceled // dropped meanwhile: nothing to keep alive
		}
		return 0, err
	}
	e.mu.Lock()
	lease.id = grant.ID // revoke and disown see the new one
	e.mu.Unlock()
	return grant.ID, nil
}

// disown stops keeping k's lease alive after k was deleted in etcd by
// someone else (another instance's admin API, etcdctl), unless the lease
// itself is gone, which deleted k (keepAlive then writes it again). It
// runs on its own: it asks etcd.
func (e *Store) disown(k string, lease *etcdLease) {
	e.mu.Lock()
	id := lease.id
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(e.ctx, e.dialTimeout)
	defer cancel()
	ttl, err := e.client.TimeToLive(ctx, id)
	if err != nil || ttl.TTL <= 0 {
		return // the lease is gone (or etcd cannot say): keepAlive decides
	}
	e.mu.Lock()
	owned := e.leases[k] == lease
	if owned {
		delete(e.leases, k)
	}
	e.mu.Unlock()
	if owned {
		e.revoke(lease)
	}
}

// revoke stops keeping lease alive and revokes it.
func (e *Store) revoke(lease *etcdLease) {
	if lease.cancel != nil {
		lease.cancel()
	}
	e.mu.Lock()
	id := lease.id
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), e.dialTimeout)
	defer cancel()
	if _, err := e.client.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		e.log().Warn("revoking etcd lease", zap.String("backend", "etcd"), zap.Error(err))
	}
}

// Delete removes the endpoint's key from etcd and waits until the watch
// has applied it.
func (e *Store) Delete(ctx context.Context, key registry.ServiceKey, address string) error {
	if err := e.CheckDelete(key, address); err != nil {
		return err
	}
	k := etcdkv.Key(e.prefix, key, address)
	reqCtx, cancel := context.WithTimeout(ctx, e.dialTimeout)
	defer cancel()
	wasReady, f := e.connected(), e.floor()
	resp, err := e.client.Delete(reqCtx, k)
	if err != nil {
		return e.writeFailed("deleting "+k+" from etcd", wasReady, err)
	}
	e.observe(resp.Header, f, -1)
	// the lease is ours to revoke only once the key is gone
	e.mu.Lock()
	lease := e.leases[k]
	delete(e.leases, k)
	e.mu.Unlock()
	if lease != nil {
		e.revoke(lease)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("deleting %s from %s: %w", address, key, registry.ErrUnknownEndpoint)
	}
	return e.waitApplied(ctx, resp.Header.Revision)
}

// CheckDelete returns the error Delete would return for an unknown
// service version or an endpoint only the config seeds. Whether etcd holds
// the endpoint is known for sure only once Delete asks it.
func (e *Store) CheckDelete(key registry.ServiceKey, address string) error {
	e.mu.Lock()
	_, stored := e.stored[key][address]
	seeded := slices.ContainsFunc(e.seeds[key], func(ep registry.Endpoint) bool { return ep.Address == address })
	_, known := e.feed.Merged(key, e.stored[key])
	e.mu.Unlock()
	switch {
	case !stored && seeded:
		return fmt.Errorf("deleting %s from %s: %w; remove it from the config", address, key, registry.ErrSeeded)
	case !known:
		return fmt.Errorf("deleting %s from %s: %w", address, key, registry.ErrUnknownVersion)
	}
	return nil
}

// Interface guards
var (
	_ registry.Backend        = (*Store)(nil)
	_ registry.DeleteChecker  = (*Store)(nil)
	_ registry.Owner          = (*Store)(nil)
	_ registry.TrafficBackend = (*Store)(nil)
)

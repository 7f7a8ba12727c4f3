// Package zkstore is the ZooKeeper backend's store without Caddy: the
// registry in ZooKeeper, in the layout of Apache Curator's service
// discovery by default (package zkkv), shared by every instance on the
// same ensemble and base path. The Caddy module
// service_registry.backends.zookeeper is a thin wrapper around it; a Go
// program can hand a Store to registry.New directly.
package zkstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkclient"
	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkkv"
	"github.com/svcreg/caddy-svcreg/registry"
)

// Timing of the ZooKeeper backend.
var (
	zkRetryMin = 100 * time.Millisecond // first wait after a failed sync
	zkRetryMax = 5 * time.Second        // longest wait between syncs
)

// Store keeps the registry in ZooKeeper.
//
// Layout: Curator's service discovery, <base>/<service>/<instance-id>,
// each node's data Curator's instance JSON with the version in a payload
// field (or, with Layout.VersionLevel, <base>/<service>/<version>/<id>); see
// package zkkv. A node that does not read as an instance is skipped with
// one warning naming it. Children are listed with watches, and every
// watch is set again when it fires: no ZooKeeper call is made on the
// request path.
//
// Add writes to ZooKeeper: an endpoint added with a TTL is an ephemeral
// node of this store's session (it disappears SessionTimeout after the
// store stops, and is created again after the session expires); one
// without is a persistent node. Seeds are this instance's own and are not
// written.
//
// Faults, as with etcd: if ZooKeeper is unreachable at start, Start still
// returns and registry-routed requests get 503 until the first sync; if it
// is lost later, routing keeps the last snapshot; once a session is back,
// everything is listed again (after a session expired, this instance's
// ephemeral nodes are created again first). A ZooKeeper that went back in
// time (wiped, or restored from an older snapshot) refuses this
// instance's session: the backend starts a fresh client and does the
// same (see package zkclient). Each change of reachability is logged
// once.
type Store struct {
	sessionTimeout time.Duration
	writeTimeout   time.Duration
	layout         zkkv.Layout
	servers        []string
	logger         *zap.Logger

	client *zkclient.Client
	ctx    context.Context // ends at Stop
	cancel context.CancelFunc
	done   sync.WaitGroup
	wake   chan struct{} // a session event arrived
	fired  chan struct{} // a watch fired: see queue

	mu        sync.Mutex // guards everything below
	feed      *registry.Feed
	seeds     map[registry.ServiceKey][]registry.Endpoint // for CheckDelete; the feed merges them
	state     zk.State
	gen       int                                                  // sessions begun (or resumed) so far
	listedGen int                                                  // the gen of the last listing
	session   int64                                                // the session of the last listing
	queue     []zk.Event                                           // fired watches, in order, not applied yet
	dirs      map[string]map[string]bool                           // watched node -> its children
	leaves    map[string]leaf                                      // instance node -> what it holds
	byKey     map[registry.ServiceKey]map[string]registry.Endpoint // service version -> node -> endpoint
	dirty     map[registry.ServiceKey]bool                         // changed since last published
	warned    map[string]int64                                     // node -> modification zxid warned about
	owned     map[string][]byte                                    // ephemeral nodes this backend keeps: path -> data
	adopting  map[string]bool                                      // owned nodes not yet of this session, taken over from another backend
	synced    bool
	reachable bool
	stopped   bool
}

// Options are a Store's settings.
type Options struct {
	// Servers are the ZooKeeper servers, host:port.
	Servers []string
	// Layout is how nodes hold endpoints, normalized (zkkv.Layout.Normalize).
	Layout zkkv.Layout
	// SessionTimeout is the ZooKeeper session timeout. Default: 10s.
	SessionTimeout time.Duration
	// WriteTimeout bounds a write. Default: 5s.
	WriteTimeout time.Duration
}

// Defaults of Options.
const (
	DefaultSessionTimeout = 10 * time.Second
	DefaultWriteTimeout   = 5 * time.Second
)

// New returns a store on the ZooKeeper ensemble of opts; logger is for
// what it logs until Start hands it the registry's.
func New(opts Options, logger *zap.Logger) *Store {
	if opts.SessionTimeout <= 0 {
		opts.SessionTimeout = DefaultSessionTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	return &Store{servers: opts.Servers, layout: opts.Layout, sessionTimeout: opts.SessionTimeout, writeTimeout: opts.WriteTimeout, logger: logger}
}

// leaf is an instance node that reads as an endpoint.
type leaf struct {
	key registry.ServiceKey
	ep  registry.Endpoint
}

// Start connects in the background; it never waits for ZooKeeper.
func (b *Store) Start(feed *registry.Feed, env registry.BackendEnv) error {
	b.logger = env.Logger
	b.wake = make(chan struct{}, 1)
	b.fired = make(chan struct{}, 1)
	client, err := zkclient.New(zkclient.Options{
		Servers: b.servers, SessionTimeout: b.sessionTimeout,
		Logger: zkLogger{b.logger}, Event: b.sessionEvent, WentBack: b.wentBack,
	})
	if err != nil {
		return fmt.Errorf("connecting to zookeeper: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.mu.Lock()
	b.client, b.ctx, b.cancel, b.feed, b.seeds = client, ctx, cancel, feed, env.Seeds
	b.feed.Configure(env)
	b.warned, b.owned, b.adopting = map[string]int64{}, map[string][]byte{}, map[string]bool{}
	b.dirs, b.leaves = map[string]map[string]bool{}, map[string]leaf{}
	b.byKey, b.dirty = map[registry.ServiceKey]map[string]registry.Endpoint{}, map[registry.ServiceKey]bool{}
	b.reachable = true // until shown otherwise, so that a first failure is logged
	b.feed.PublishTraffic(nil)
	b.mu.Unlock()
	b.done.Go(func() { b.run(ctx) })
	return nil
}

// sessionEvent is go-zookeeper's callback for every event; it keeps the
// session's state, queues fired watches, and wakes the sync loop.
func (b *Store) sessionEvent(ev zk.Event) {
	if ev.Type != zk.EventSession {
		// A fired watch (go-zookeeper hands every watch's event to the
		// callback as well as to its channel): queued for the sync loop,
		// never blocking go-zookeeper's reader. One callback instead of
		// a goroutine per watched node.
		if ev.Type == zk.EventNotWatching {
			return // the session went: it is listed again when back
		}
		b.mu.Lock()
		b.queue = append(b.queue, ev)
		b.mu.Unlock()
		select {
		case b.fired <- struct{}{}:
		default:
		}
		return
	}
	b.mu.Lock()
	b.state = ev.State
	if ev.State == zk.StateHasSession {
		b.gen++
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// wentBack logs that the client replaced its connection because
// ZooKeeper went back in time; the new session's event that follows has
// everything listed again, this instance's ephemeral nodes first.
func (b *Store) wentBack() {
	b.log().Warn("zookeeper went back in time (wiped, or restored from an older snapshot) and refused this instance's session; "+
		"listing everything again in a new session", zap.String("backend", "zookeeper"), zap.Strings("servers", b.servers))
}

// conn returns the ZooKeeper connection in use.
func (b *Store) conn() *zk.Conn { return b.client.Conn() }

// Conn returns the ZooKeeper connection in use, for its session's ID and
// state; nil before Start.
func (b *Store) Conn() *zk.Conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.client == nil {
		return nil
	}
	return b.client.Conn()
}

// Reconfigure takes a newer config's seeds and logger.
func (b *Store) Reconfigure(env registry.BackendEnv) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logger = env.Logger
	b.seeds = env.Seeds
	b.feed.Configure(env)
	if b.synced {
		b.feed.Publish(b.stored(), false)
	}
	b.feed.PublishTraffic(nil)
	return nil
}

// Stop ends the sync and closes the session: this instance's ephemeral
// nodes go with it.
func (b *Store) Stop() error {
	b.mu.Lock()
	if b.stopped || b.cancel == nil {
		b.stopped = true
		b.mu.Unlock()
		return nil
	}
	b.stopped = true
	b.mu.Unlock()
	b.cancel()
	b.client.Close()
	b.done.Wait()
	return nil
}

// run lists everything whenever a session begins (the first, a new one
// after expiry, or the same one after a reconnection), then follows the
// watches until the session is lost or replaced.
func (b *Store) run(ctx context.Context) {
	wait := zkRetryMin
	for ctx.Err() == nil {
		if !b.waitSession(ctx) {
			return
		}
		if err := b.list(ctx); err != nil {
			b.setReachable(false, err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait + rand.N(wait/2+1)):
			}
			wait = min(2*wait, zkRetryMax)
			continue
		}
		wait = zkRetryMin
		b.setReachable(true, nil)
		b.follow(ctx)
	}
}

// waitSession waits until the connection has a session, and reports
// whether it does (false: stopping). A session that expired is replaced
// by go-zookeeper; until then the snapshot stays.
func (b *Store) waitSession(ctx context.Context) bool {
	since := time.Now()
	for {
		b.mu.Lock()
		state := b.state
		b.mu.Unlock()
		if state == zk.StateHasSession {
			return true
		}
		// a reconnection within a second is not worth a log line
		if time.Since(since) >= time.Second {
			b.setReachable(false, fmt.Errorf("no zookeeper session (%v)", state))
		}
		select {
		case <-ctx.Done():
			return false
		case <-b.wake:
		case <-time.After(time.Second):
		}
	}
}

// follow applies fired watches until the session is lost, or a new one
// (or the same one, reconnected) begins: then everything is listed again.
func (b *Store) follow(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
			b.mu.Lock()
			state, again := b.state, b.gen != b.listedGen
			b.mu.Unlock()
			if state != zk.StateConnected && (state != zk.StateHasSession || again) {
				// lost (wait for a session), or back (list again, in
				// case a watch was missed)
				return
			}
		case <-b.fired:
			b.mu.Lock()
			queue := b.queue
			b.queue = nil
			b.mu.Unlock()
			for _, ev := range queue {
				if err := b.apply(ev); err != nil {
					b.log().Warn("following zookeeper; listing everything again", zap.String("backend", "zookeeper"), zap.Error(err))
					return
				}
			}
		}
	}
}

// list reads every service and instance under the base, setting watches,
// and publishes them. A session that replaced an expired one (or one of a
// ZooKeeper that went back in time) first gets this instance's ephemeral
// nodes back, and nodes taken over from another backend that are not of
// this session yet are made so.
func (b *Store) list(ctx context.Context) error {
	b.mu.Lock()
	b.listedGen = b.gen
	session := b.conn().SessionID()
	renew := b.session != 0 && b.session != session
	owned := maps.Clone(b.owned)
	if !renew {
		maps.DeleteFunc(owned, func(p string, _ []byte) bool { return !b.adopting[p] })
	}
	b.queue = nil // what fired so far, the listing reads anyway
	b.dirs, b.leaves = map[string]map[string]bool{}, map[string]leaf{}
	b.byKey, b.dirty = map[registry.ServiceKey]map[string]registry.Endpoint{}, map[registry.ServiceKey]bool{}
	b.mu.Unlock()
	for p, data := range owned {
		if err := b.createOwned(p, data); err != nil {
			return fmt.Errorf("registering %s in this session: %w", p, err)
		}
		b.mu.Lock()
		delete(b.adopting, p)
		b.mu.Unlock()
	}
	if err := b.watchDir(b.layout.Base, 0); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.session = session
	b.synced = true
	clear(b.dirty)
	b.feed.Publish(b.stored(), false)
	return nil
}

// ownerTries bounds how often createOwned tries again when the node
// changes under it.
const ownerTries = 5

// createOwned makes node p an ephemeral node of this session holding
// data, creating its persistent parents as needed. A node already there of
// another session (an older one of this backend's, or that of the
// backend of a config this one replaces) is taken over in one
// transaction, deleted and created again, so that no instance watching
// sees it missing.
func (b *Store) createOwned(p string, data []byte) error {
	conn := b.conn()
	if err := makeParents(conn, p); err != nil {
		return err
	}
	var err error
	for range ownerTries {
		if _, err = conn.Create(p, data, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); !errors.Is(err, zk.ErrNodeExists) {
			return err
		}
		var ok bool
		var stat *zk.Stat
		ok, stat, err = conn.Exists(p)
		switch {
		case err != nil:
			return err
		case !ok:
			continue // gone meanwhile: create it
		case stat.EphemeralOwner == conn.SessionID():
			_, err = conn.Set(p, data, stat.Version)
		default:
			_, err = conn.Multi(&zk.DeleteRequest{Path: p, Version: stat.Version},
				&zk.CreateRequest{Path: p, Data: data, Acl: zk.WorldACL(zk.PermAll), Flags: zk.FlagEphemeral})
		}
		if !errors.Is(err, zk.ErrBadVersion) && !errors.Is(err, zk.ErrNoNode) {
			return err
		}
	}
	return fmt.Errorf("node %s changed %d times while this instance was taking it over: %w", p, ownerTries, err)
}

// makeParents creates the persistent parents of node p that are missing.
func makeParents(conn *zk.Conn, p string) error {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	at := ""
	for _, part := range parts[:len(parts)-1] {
		at += "/" + part
		if _, err := conn.Create(at, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return err
		}
	}
	return nil
}

// watchDir lists node p, depth levels below the base, with a watch, and
// descends into the children it did not know: into directories, or reads
// instance nodes. Children that went are forgotten.
func (b *Store) watchDir(p string, depth int) error {
	// the watches' events come through sessionEvent, not their channels
	children, _, _, err := b.conn().ChildrenW(p)
	for errors.Is(err, zk.ErrNoNode) {
		// not there (yet): watch for it to appear
		afterNoNode(p)
		var exists bool
		if exists, _, _, err = b.conn().ExistsW(p); err != nil {
			return err
		}
		if !exists {
			b.mu.Lock()
			b.forget(p)
			b.mu.Unlock()
			return nil
		}
		// created in between (a wiped ZooKeeper filling up again): the
		// watch just set is on its data, not its creation, and would
		// never say so; list it after all
		children, _, _, err = b.conn().ChildrenW(p)
	}
	if err != nil {
		return err
	}
	b.mu.Lock()
	old := b.dirs[p]
	now := make(map[string]bool, len(children))
	var added []string
	for _, c := range children {
		if depth < b.layout.Depth()-1 && !registry.ValidName(c) {
			continue // not a service (or version): @traffic, junk
		}
		now[c] = true
		if !old[c] {
			added = append(added, c)
		}
	}
	for c := range old {
		if !now[c] {
			b.forget(b.child(p, c))
		}
	}
	b.dirs[p] = now
	b.mu.Unlock()
	// Read the new children concurrently: go-zookeeper pipelines the
	// requests of one session, so listing 10,000 nodes is not 10,000
	// round trips in a row.
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	sem := make(chan struct{}, listConcurrency)
	for _, c := range added {
		cp := b.child(p, c)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var err error
			if depth+1 == b.layout.Depth() {
				err = b.readLeaf(cp)
			} else {
				err = b.watchDir(cp, depth+1)
			}
			if err != nil {
				errOnce.Do(func() { firstErr = err })
			}
		})
	}
	wg.Wait()
	return firstErr
}

// afterNoNode runs when watchDir found a node missing, before it watches
// for its creation; tests create it there.
var afterNoNode = func(string) {}

// listConcurrency is how many children of one node are read at once.
const listConcurrency = 16

func (b *Store) child(p, c string) string {
	if p == "/" {
		return "/" + c
	}
	return p + "/" + c
}

// readLeaf reads an instance node with a watch.
func (b *Store) readLeaf(p string) error {
	data, stat, _, err := b.conn().GetW(p)
	if errors.Is(err, zk.ErrNoNode) {
		b.mu.Lock()
		b.forget(p)
		b.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	key, ep, err := b.layout.Decode(p, data)
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.dropLeaf(p)
		if b.warned[p] != stat.Mzxid {
			b.warned[p] = stat.Mzxid
			b.log().Warn("skipping zookeeper node", zap.String("backend", "zookeeper"), zap.String("node", p), zap.String("reason", err.Error()))
		}
		return nil
	}
	b.setLeaf(p, leaf{key, ep})
	return nil
}

// setLeaf records what instance node p holds. The caller holds b.mu.
func (b *Store) setLeaf(p string, l leaf) {
	b.dropLeaf(p)
	b.leaves[p] = l
	if b.byKey[l.key] == nil {
		b.byKey[l.key] = map[string]registry.Endpoint{}
	}
	b.byKey[l.key][p] = l.ep
	b.dirty[l.key] = true
}

// dropLeaf forgets instance node p. The caller holds b.mu.
func (b *Store) dropLeaf(p string) {
	l, ok := b.leaves[p]
	if !ok {
		return
	}
	delete(b.leaves, p)
	delete(b.byKey[l.key], p)
	if len(b.byKey[l.key]) == 0 {
		delete(b.byKey, l.key)
	}
	b.dirty[l.key] = true
}

// forget drops node p and everything below it; a node being taken over
// from another backend stays routed until this one has created it. The
// caller holds b.mu.
func (b *Store) forget(p string) {
	if !b.adopting[p] {
		b.dropLeaf(p)
	}
	children, isDir := b.dirs[p]
	if !isDir {
		return
	}
	delete(b.dirs, p)
	for c := range children {
		b.forget(b.child(p, c))
	}
}

// apply follows one fired watch and publishes the service versions it
// changed. Every handler reads the node's current state, so an event
// that a listing already covered changes nothing.
func (b *Store) apply(ev zk.Event) error {
	depth, ok := b.depth(ev.Path)
	if !ok {
		return nil
	}
	var err error
	switch {
	case depth == b.layout.Depth():
		// A deleted instance node is read again too: one another session
		// took over (deleted and created again in one transaction) is
		// there again, and stays routed.
		if ev.Type == zk.EventNodeDataChanged || ev.Type == zk.EventNodeCreated || ev.Type == zk.EventNodeDeleted {
			err = b.readLeaf(ev.Path)
		}
	case ev.Type == zk.EventNodeDeleted:
		b.mu.Lock()
		b.forget(ev.Path)
		b.mu.Unlock()
		if depth == 0 {
			err = b.watchDir(ev.Path, 0) // the base went: wait for it again
		}
	case ev.Type == zk.EventNodeChildrenChanged || ev.Type == zk.EventNodeCreated:
		err = b.watchDir(ev.Path, depth)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.publish()
	return err
}

// depth returns how many levels below the base node p is, and whether it
// is the base or below it.
func (b *Store) depth(p string) (int, bool) {
	base := b.layout.Base
	if p == base {
		return 0, true
	}
	prefix := base + "/"
	if base == "/" {
		prefix = "/"
	}
	rest, ok := strings.CutPrefix(p, prefix)
	if !ok || rest == "" {
		return 0, false
	}
	return strings.Count(rest, "/") + 1, true
}

// stored returns the endpoints the instance nodes hold, by service version
// and address. The caller holds b.mu.
func (b *Store) stored() map[registry.ServiceKey]map[string]registry.Change {
	out := make(map[registry.ServiceKey]map[string]registry.Change, len(b.byKey))
	for key := range b.byKey {
		out[key] = b.storedOf(key)
	}
	return out
}

// storedOf returns the endpoints the instance nodes of key hold, by
// address. The caller holds b.mu.
func (b *Store) storedOf(key registry.ServiceKey) map[string]registry.Change {
	out := make(map[string]registry.Change, len(b.byKey[key]))
	for _, ep := range b.byKey[key] {
		out[ep.Address] = registry.Change{Endpoint: ep}
	}
	return out
}

// publish publishes every service version whose instance nodes changed.
// The caller holds b.mu.
func (b *Store) publish() {
	if !b.synced {
		return
	}
	for key := range b.dirty {
		b.feed.PublishKey(key, b.storedOf(key), false)
	}
	clear(b.dirty)
}

// setReachable logs a change of reachability once.
func (b *Store) setReachable(ok bool, err error) {
	b.mu.Lock()
	changed := b.reachable != ok
	b.reachable = ok
	synced := b.synced
	b.mu.Unlock()
	if !changed {
		return
	}
	b.feed.Reachable(ok, synced, err, "zookeeper",
		"zookeeper reachable; registry synced", zap.Strings("servers", b.servers))
}

func (b *Store) log() *zap.Logger {
	if b.logger == nil {
		return zap.NewNop()
	}
	return b.logger
}

// write runs one ZooKeeper write within the write timeout. Without a
// session nothing is sent: the store is unavailable. A write that does not
// return in time may still be applied once the session is back: its
// outcome is unknown.
func (b *Store) write(ctx context.Context, what string, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, b.writeTimeout)
	defer cancel()
	// A session being set up (or resumed) is worth a short wait; without
	// one nothing is sent.
	for {
		b.mu.Lock()
		state := b.state
		b.mu.Unlock()
		if state == zk.StateHasSession {
			break
		}
		if state != zk.StateConnecting && state != zk.StateConnected || ctx.Err() != nil {
			return fmt.Errorf("%s: %w (no zookeeper session: %v)", what, registry.ErrBackendUnavailable, state)
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	done := make(chan error, 1)
	b.done.Go(func() { done <- f() }) // Stop closes the connection, which ends f
	select {
	case err := <-done:
		switch {
		case err == nil:
			return nil
		case errors.Is(err, zk.ErrNoAuth), errors.Is(err, zk.ErrBadArguments), errors.Is(err, zk.ErrInvalidACL):
			return fmt.Errorf("%s: %w: %w", what, registry.ErrBackendUnavailable, err)
		case errors.Is(err, zk.ErrConnectionClosed), errors.Is(err, zk.ErrSessionExpired), errors.Is(err, zk.ErrClosing):
			return fmt.Errorf("%s: %w: %w", what, registry.ErrOutcomeUnknown, err)
		default:
			return fmt.Errorf("%s: %w: %w", what, registry.ErrBackendUnavailable, err)
		}
	case <-ctx.Done():
		return fmt.Errorf("%s: %w: %w", what, registry.ErrOutcomeUnknown, ctx.Err())
	}
}

// Add writes the endpoint's instance node: ephemeral, kept by this
// instance, when ep.TTL is set, else persistent. The table holds it when
// Add returns.
func (b *Store) Add(ctx context.Context, key registry.ServiceKey, ep registry.Endpoint) error {
	ephemeral := ep.TTL != 0
	p, data, err := b.layout.Encode(key, ep, ephemeral, time.Now())
	if err != nil {
		return err
	}
	err = b.write(ctx, "writing "+p+" to zookeeper", func() error {
		if ephemeral {
			return b.createOwned(p, data)
		}
		conn := b.conn()
		if err := makeParents(conn, p); err != nil {
			return err
		}
		_, err := conn.Create(p, data, 0, zk.WorldACL(zk.PermAll))
		if errors.Is(err, zk.ErrNodeExists) {
			_, err = conn.Set(p, data, -1)
		}
		return err
	})
	if err != nil {
		return err
	}
	decodedKey, decoded, err := b.layout.Decode(p, data)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if ephemeral {
		b.owned[p] = data
	} else {
		delete(b.owned, p)
	}
	delete(b.adopting, p) // of this session now, or no longer kept
	// what this instance wrote, it routes at once; the watch confirms it
	b.setLeaf(p, leaf{decodedKey, decoded})
	b.publish()
	return nil
}

// Delete removes every instance node of the endpoint (Curator's and
// svcreg's) and waits for nothing more: the table no longer holds it when
// Delete returns.
func (b *Store) Delete(ctx context.Context, key registry.ServiceKey, address string) error {
	if err := b.CheckDelete(key, address); err != nil {
		return err
	}
	b.mu.Lock()
	var nodes []string
	for p, l := range b.leaves {
		if l.key == key && l.ep.Address == address {
			nodes = append(nodes, p)
		}
	}
	b.mu.Unlock()
	slices.Sort(nodes)
	if len(nodes) == 0 {
		return fmt.Errorf("deleting %s from %s: %w", address, key, registry.ErrUnknownEndpoint)
	}
	for _, p := range nodes {
		err := b.write(ctx, "deleting "+p+" from zookeeper", func() error {
			err := b.conn().Delete(p, -1)
			if errors.Is(err, zk.ErrNoNode) {
				return nil
			}
			return err
		})
		if err != nil {
			return err
		}
		b.mu.Lock()
		delete(b.owned, p)
		delete(b.adopting, p)
		b.dropLeaf(p)
		b.publish()
		b.mu.Unlock()
	}
	return nil
}

// CheckDelete returns the error Delete would return for an unknown
// service version or an endpoint only the config seeds.
func (b *Store) CheckDelete(key registry.ServiceKey, address string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	stored := b.storedOf(key)
	_, inStore := stored[address]
	seeded := slices.ContainsFunc(b.seeds[key], func(ep registry.Endpoint) bool { return ep.Address == address })
	_, known := b.feed.Merged(key, stored)
	switch {
	case !inStore && seeded:
		return fmt.Errorf("deleting %s from %s: %w; remove it from the config", address, key, registry.ErrSeeded)
	case !known:
		return fmt.Errorf("deleting %s from %s: %w", address, key, registry.ErrUnknownVersion)
	case !inStore:
		return fmt.Errorf("deleting %s from %s: %w", address, key, registry.ErrUnknownEndpoint)
	}
	return nil
}

// Owned returns the endpoints this backend keeps as ephemeral nodes.
func (b *Store) Owned() []registry.Owned {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []registry.Owned
	for p, data := range b.owned {
		if key, ep, err := b.layout.Decode(p, data); err == nil {
			ep.TTL = registry.Duration(b.sessionTimeout)
			out = append(out, registry.Owned{Key: key, Endpoint: ep})
		}
	}
	return out
}

// Adopt takes over the ephemeral nodes another backend (of an older
// config) keeps, before that backend stops and its session closes: each
// becomes a node of this backend's session in one transaction (see
// createOwned), so that no instance routing from ZooKeeper sees it
// missing. Adopt waits for that up to WriteTimeout; nodes it could not
// take over by then (no session) are taken over in the background, and
// routed meanwhile.
func (b *Store) Adopt(owned []registry.Owned) {
	nodes := map[string][]byte{}
	b.mu.Lock()
	if b.stopped || b.client == nil {
		b.mu.Unlock()
		return
	}
	for _, o := range owned {
		p, data, err := b.layout.Encode(o.Key, o.Endpoint, true, time.Now())
		if err != nil {
			continue
		}
		b.owned[p], b.adopting[p] = data, true
		nodes[p] = data
	}
	ctx := b.ctx
	b.mu.Unlock()
	err := b.adoptAll(ctx, nodes)
	if err == nil {
		return
	}
	b.log().Warn("could not take over endpoints from the previous config's zookeeper backend yet; retrying in the background",
		zap.String("backend", "zookeeper"), zap.Error(err))
	b.done.Go(func() {
		wait := zkRetryMin
		for b.adoptAll(ctx, nodes) != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait + rand.N(wait/2+1)):
			}
			wait = min(2*wait, zkRetryMax)
		}
	})
}

// adoptAll takes over those of nodes still being taken over, within the
// write timeout; it returns an error if any is left.
func (b *Store) adoptAll(ctx context.Context, nodes map[string][]byte) error {
	ctx, cancel := context.WithTimeout(ctx, b.writeTimeout)
	defer cancel()
	var left error
	for p, data := range nodes {
		b.mu.Lock()
		pending := b.adopting[p]
		b.mu.Unlock()
		if !pending {
			continue // taken over by a listing, or deleted
		}
		if err := b.write(ctx, "taking over "+p+" in zookeeper", func() error { return b.createOwned(p, data) }); err != nil {
			left = err
			continue
		}
		b.mu.Lock()
		delete(b.adopting, p)
		b.mu.Unlock()
	}
	return left
}

// zkLogger sends go-zookeeper's messages to the debug log.
type zkLogger struct{ l *zap.Logger }

func (z zkLogger) Printf(format string, args ...any) {
	if z.l != nil {
		z.l.Debug(fmt.Sprintf(format, args...), zap.String("backend", "zookeeper"))
	}
}

// Interface guards
var (
	_ registry.Backend       = (*Store)(nil)
	_ registry.DeleteChecker = (*Store)(nil)
	_ registry.Owner         = (*Store)(nil)
)

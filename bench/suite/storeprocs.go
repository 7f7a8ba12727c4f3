package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-zookeeper/zk"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svcreg/caddy-svcreg/backends/etcd/etcdkv"
	"github.com/svcreg/caddy-svcreg/backends/zookeeper/zkkv"
	"github.com/svcreg/caddy-svcreg/registry"
)

// store is one control-plane store of the stores scenario: a real process
// on 127.0.0.1 with a data directory of its own, which the faults kill,
// freeze, wipe and start again on the same ports.
type store interface {
	// Name is etcd, zookeeper or consul.
	Name() string
	// Addr is the client address, 127.0.0.1:port.
	Addr() string
	// Start starts the store on its data and ports and returns once it
	// answers.
	Start() error
	// Proc is the running process.
	Proc() *proc
	// Output is what the store's processes printed, each start's in turn.
	Output() string
	// Wipe deletes the data of the stopped store and starts it again
	// with the same configuration.
	Wipe() error
	// Backend is the Caddyfile `backend` block that reads the store at
	// addr; changed gives one setting another value (the reload fault).
	Backend(addr string, changed bool) string
	// Register registers a host as its users do; the registration ends
	// with Leave (a clean stop) or Kill.
	Register(h storeHost) (registration, error)
	// Content returns the endpoints the store holds, within about
	// timeout.
	Content(timeout time.Duration) (content, error)
	// LoadServices registers n services, s0000 to s<n-1>, with one
	// endpoint at addr each.
	LoadServices(n int, addr string) error
	// Close stops the store and whatever the harness holds open to it;
	// closing again does nothing.
	Close()
}

// content is what a store holds: each endpoint, as
// "service/version/address", with an ID of its registration that changes
// when it is deleted and registered again (the store's creation revision,
// zxid or index, with the number of wipes and restores above).
type content map[string]int64

// generation puts the number of wipes and restores above a creation
// revision, zxid or index: those count from the start again.
func generation(gen *atomic.Int64, created int64) int64 { return gen.Load()<<40 | created }

// storeHost is a host registered in the store: a benchmark backend.
type storeHost struct {
	name, addr, version string
}

// registration is a host's registration, kept up until Leave or Kill.
type registration interface {
	// Leave deregisters the host as a clean stop does; it may wait for
	// the store.
	Leave()
	// Kill ends the registration's keeper at once (teardown).
	Kill()
}

// daemon is a store's process: how to start it and tell that it answers.
type daemon struct {
	name  string
	dir   string // its working directory
	args  func() []string
	ready func() error
	p     *proc
	runs  []*proc // every start's
}

func (d *daemon) Proc() *proc { return d.p }

func (d *daemon) Output() string {
	var b strings.Builder
	for i, p := range d.runs {
		fmt.Fprintf(&b, "--- start %d: %s\n%s", i+1, strings.Join(p.cmd.Args, " "), p.out.String())
	}
	return b.String()
}

// Start starts the process and waits until it answers.
func (d *daemon) Start() error {
	p, err := start(d.name, d.dir, d.args()...)
	if err != nil {
		return err
	}
	d.p = p
	d.runs = append(d.runs, p)
	if err := d.ready(); err != nil {
		p.stop(syscall.SIGKILL)
		return fmt.Errorf("%s: %w\n%s", d.name, err, tail(p))
	}
	return nil
}

// tail is the end of what a stopped process printed.
func tail(p *proc) string {
	s := p.out.String()
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// until polls ok every 100 ms until it is true or timeout has passed.
func until(timeout time.Duration, what string, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// selfregHost is a host kept registered by the selfreg program, which
// talks to the store directly.
type selfregHost struct {
	p *proc
}

func startSelfreg(e *env, storeFlag, addr string, h storeHost) (*selfregHost, error) {
	p, err := start("selfreg-"+h.name, e.tmp, e.selfreg, storeFlag, addr, "-service", "bench", "-version", h.version,
		"-address", h.addr, "-ttl", hostTTL.String(), "-drain", "1ms")
	if err != nil {
		return nil, err
	}
	return &selfregHost{p: p}, nil
}

// Leave stops selfreg as a deploy does (SIGTERM): it deregisters and exits.
func (s *selfregHost) Leave() { s.p.stop(syscall.SIGTERM) }
func (s *selfregHost) Kill()  { s.p.stop(syscall.SIGKILL) }

// etcdStore is etcd 3.4 (Debian's etcd), one member.
type etcdStore struct {
	daemon
	e                 *env
	client, peer      string // URLs
	data              string // data directory
	cli               *clientv3.Client
	snapshot          string       // file of the snapshot taken by Snapshot
	gen               atomic.Int64 // wipes and restores
	etcd, etcdctlPath string
}

const etcdToken = "svcreg-bench"

func newEtcd(e *env) (store, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, errSkip("no etcd binary on PATH")
	}
	ctl, err := exec.LookPath("etcdctl")
	if err != nil {
		return nil, errSkip("no etcdctl binary on PATH")
	}
	dir, err := os.MkdirTemp(e.tmp, "etcd-")
	if err != nil {
		return nil, err
	}
	s := &etcdStore{e: e, etcd: bin, etcdctlPath: ctl, data: filepath.Join(dir, "data"),
		client: fmt.Sprintf("http://127.0.0.1:%d", freePort()), peer: fmt.Sprintf("http://127.0.0.1:%d", freePort())}
	s.daemon = daemon{name: "etcd", dir: dir, args: func() []string {
		return []string{s.etcd, "--name", "bench", "--data-dir", s.data,
			"--listen-client-urls", s.client, "--advertise-client-urls", s.client,
			"--listen-peer-urls", s.peer, "--initial-advertise-peer-urls", s.peer,
			"--initial-cluster", "bench=" + s.peer, "--initial-cluster-token", etcdToken, "--log-level", "warn"}
	}, ready: func() error { return waitHTTP(s.client+"/health", 30*time.Second) }}
	if err := s.Start(); err != nil {
		return nil, err
	}
	s.cli, err = clientv3.New(clientv3.Config{Endpoints: []string{s.Addr()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *etcdStore) Name() string { return "etcd" }
func (s *etcdStore) Addr() string { return strings.TrimPrefix(s.client, "http://") }

func (s *etcdStore) Wipe() error {
	s.gen.Add(1)
	if err := os.RemoveAll(s.data); err != nil {
		return err
	}
	return s.Start()
}

func (s *etcdStore) Backend(addr string, changed bool) string {
	dial := "5s"
	if changed {
		dial = "3s"
	}
	return fmt.Sprintf("backend etcd {\n\t\t\tendpoints %s\n\t\t\tdial_timeout %s\n\t\t}", addr, dial)
}

func (s *etcdStore) Register(h storeHost) (registration, error) {
	return startSelfreg(s.e, "-etcd", s.Addr(), h)
}

func (s *etcdStore) Content(timeout time.Duration) (content, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, etcdkv.DefaultPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	held := content{}
	for _, kv := range resp.Kvs {
		key, ep, err := etcdkv.Decode(etcdkv.DefaultPrefix, kv.Key, kv.Value)
		if err == nil {
			held[key.Service+"/"+key.Version+"/"+ep.Address] = generation(&s.gen, kv.CreateRevision)
		}
	}
	return held, nil
}

// Put writes an endpoint key without a lease, as an admin add does.
func (s *etcdStore) Put(svc, version, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.cli.Put(ctx, etcdkv.Key(etcdkv.DefaultPrefix, registry.ServiceKey{Service: svc, Version: version}, addr), "{}")
	return err
}

// Delete deletes an endpoint key.
func (s *etcdStore) Delete(svc, version, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.cli.Delete(ctx, etcdkv.Key(etcdkv.DefaultPrefix, registry.ServiceKey{Service: svc, Version: version}, addr))
	return err
}

func (s *etcdStore) LoadServices(n int, addr string) error {
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := s.cli.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	for i := range n {
		k, v, err := etcdkv.Encode(etcdkv.DefaultPrefix, registry.ServiceKey{Service: fmt.Sprintf("s%04d", i), Version: "v1"}, registry.Endpoint{Address: addr})
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(k, v))
		if len(ops) == 100 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// Snapshot saves a snapshot (etcdctl snapshot save) for Restore.
func (s *etcdStore) Snapshot() error {
	s.snapshot = filepath.Join(s.dir, "snapshot.db")
	out, err := exec.Command(s.etcdctlPath, "--endpoints", s.Addr(), "snapshot", "save", s.snapshot).CombinedOutput()
	if err != nil {
		return fmt.Errorf("etcdctl snapshot save: %w\n%s", err, out)
	}
	return nil
}

// Restore restores the snapshot into a new data directory (etcdctl
// snapshot restore, the same name, URLs and token) and starts the stopped
// etcd on it.
func (s *etcdStore) Restore() error {
	s.gen.Add(1)
	s.data = filepath.Join(s.dir, fmt.Sprintf("restored-%d", s.gen.Load()))
	cmd := exec.Command(s.etcdctlPath, "snapshot", "restore", s.snapshot, "--data-dir", s.data, "--name", "bench",
		"--initial-cluster", "bench="+s.peer, "--initial-advertise-peer-urls", s.peer, "--initial-cluster-token", etcdToken)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("etcdctl snapshot restore: %w\n%s", err, out)
	}
	return s.Start()
}

func (s *etcdStore) Close() {
	if s.cli != nil {
		s.cli.Close()
		s.cli = nil
	}
	if s.p != nil {
		s.p.stop(syscall.SIGKILL)
	}
}

// zkJar is where Debian's zookeeper package puts the server, and
// zkLogJar a logger for it (Debian's libslf4j-java).
const (
	zkJar    = "/usr/share/java/zookeeper.jar"
	zkLogJar = "/usr/share/java/slf4j-simple.jar"
)

// zkStore is ZooKeeper 3.8 (Debian's zookeeperd), standalone.
type zkStore struct {
	daemon
	e      *env
	port   int
	data   string
	layout zkkv.Layout
	gen    atomic.Int64 // wipes

	mu   sync.Mutex
	conn *zk.Conn // the harness's own
}

func newZooKeeper(e *env) (store, error) {
	java, err := exec.LookPath("java")
	if err == nil {
		_, err = os.Stat(zkJar)
	}
	if err != nil {
		return nil, errSkip("no ZooKeeper (java and " + zkJar + "; Debian: apt-get install zookeeperd)")
	}
	dir, err := os.MkdirTemp(e.tmp, "zookeeper-")
	if err != nil {
		return nil, err
	}
	layout, err := zkkv.Layout{}.Normalize()
	if err != nil {
		return nil, err
	}
	s := &zkStore{e: e, port: freePort(), data: filepath.Join(dir, "data"), layout: layout}
	cfg := fmt.Sprintf("tickTime=500\ndataDir=%s\nclientPort=%d\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n"+
		"minSessionTimeout=1000\nmaxSessionTimeout=60000\n4lw.commands.whitelist=ruok,srvr,mntr,cons\n", s.data, s.port)
	file := filepath.Join(dir, "zoo.cfg")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	classpath := "/etc/zookeeper/conf:" + zkJar
	if _, err := os.Stat(zkLogJar); err == nil {
		classpath += ":" + zkLogJar // the server's log on its output, for the logs directory
	}
	s.daemon = daemon{name: "zookeeper", dir: dir, args: func() []string {
		return []string{java, "-Xmx256m", "-cp", classpath, "-Dzookeeper.log.dir=" + dir,
			"org.apache.zookeeper.server.ZooKeeperServerMain", file}
	}, ready: func() error { return until(60*time.Second, "zookeeper answering ruok", s.ok) }}
	if err := s.Start(); err != nil {
		return nil, err
	}
	if err := s.connect(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

type quietZK struct{}

func (quietZK) Printf(string, ...any) {}

func (s *zkStore) Name() string { return "zookeeper" }
func (s *zkStore) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// ok reports whether the server answers "ruok" with "imok".
func (s *zkStore) ok() bool {
	conn, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("ruok")); err != nil {
		return false
	}
	b, _ := io.ReadAll(conn)
	return string(b) == "imok"
}

func (s *zkStore) Wipe() error {
	s.gen.Add(1)
	if err := os.RemoveAll(s.data); err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		return err
	}
	return s.connect()
}

func (s *zkStore) Backend(addr string, changed bool) string {
	timeout := "4s"
	if changed {
		timeout = "5s"
	}
	return fmt.Sprintf("backend zookeeper {\n\t\t\tservers %s\n\t\t\tsession_timeout %s\n\t\t}", addr, timeout)
}

func (s *zkStore) Register(h storeHost) (registration, error) {
	return startSelfreg(s.e, "-zookeeper", s.Addr(), h)
}

// Content lists the instance nodes under the base. go-zookeeper waits for
// a connection without a deadline of its own, so the listing runs aside
// and is abandoned after timeout.
func (s *zkStore) Content(timeout time.Duration) (content, error) {
	type result struct {
		held content
		err  error
	}
	done := make(chan result, 1)
	go func() {
		held, err := s.list()
		done <- result{held, err}
	}()
	select {
	case r := <-done:
		return r.held, r.err
	case <-time.After(timeout):
		return nil, errors.New("zookeeper did not answer in time")
	}
}

func (s *zkStore) list() (content, error) {
	conn := s.client()
	if conn == nil {
		return nil, errors.New("closed")
	}
	held := content{}
	services, _, err := conn.Children(s.layout.Base)
	if errors.Is(err, zk.ErrNoNode) {
		return held, nil
	}
	if err != nil {
		return nil, err
	}
	// go-zookeeper pipelines the requests of concurrent callers
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	next := make(chan string)
	for range 16 {
		wg.Go(func() {
			for svc := range next {
				found, err := s.instances(conn, svc)
				mu.Lock()
				firstErr = cmp.Or(firstErr, err)
				maps.Copy(held, found)
				mu.Unlock()
			}
		})
	}
	for _, svc := range services {
		next <- svc
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return held, nil
}

// instances reads the instance nodes of one service.
func (s *zkStore) instances(conn *zk.Conn, svc string) (content, error) {
	found := content{}
	dir := s.layout.ServicePath(svc)
	ids, _, err := conn.Children(dir)
	if errors.Is(err, zk.ErrNoNode) {
		return found, nil
	}
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		node := dir + "/" + id
		data, stat, err := conn.Get(node)
		if errors.Is(err, zk.ErrNoNode) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if key, ep, err := s.layout.Decode(node, data); err == nil {
			found[key.Service+"/"+key.Version+"/"+ep.Address] = generation(&s.gen, stat.Czxid)
		}
	}
	return found, nil
}

// client is the harness's own connection.
func (s *zkStore) client() *zk.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

// connect replaces the harness's own connection with a new one: a
// ZooKeeper client refuses to join a server that has seen fewer
// transactions than itself (a wiped one), so the harness reads a wiped
// store through a new connection.
func (s *zkStore) connect() error {
	conn, _, err := zk.Connect([]string{s.Addr()}, 10*time.Second, zk.WithLogger(quietZK{}))
	if err != nil {
		return err
	}
	s.mu.Lock()
	old := s.conn
	s.conn = conn
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// LoadServices creates persistent instance nodes (Curator's STATIC), 50
// services per multi-operation.
func (s *zkStore) LoadServices(n int, addr string) error {
	conn := s.client()
	acl := zk.WorldACL(zk.PermAll)
	if _, err := conn.Create(s.layout.Base, nil, 0, acl); err != nil && !errors.Is(err, zk.ErrNodeExists) {
		return err
	}
	var ops []any
	for i := range n {
		key := registry.ServiceKey{Service: fmt.Sprintf("s%04d", i), Version: "v1"}
		node, data, err := s.layout.Encode(key, registry.Endpoint{Address: addr}, false, time.Now())
		if err != nil {
			return err
		}
		ops = append(ops, &zk.CreateRequest{Path: s.layout.ServicePath(key.Service), Acl: acl},
			&zk.CreateRequest{Path: node, Data: data, Acl: acl})
		if len(ops) == 100 || i == n-1 {
			if _, err := conn.Multi(ops...); err != nil {
				return fmt.Errorf("creating services in zookeeper: %w", err)
			}
			ops = ops[:0]
		}
	}
	return nil
}

func (s *zkStore) Close() {
	s.mu.Lock()
	conn := s.conn
	s.conn = nil
	s.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	if s.p != nil {
		s.p.stop(syscall.SIGKILL)
	}
}

// consulStore is a Consul agent in development mode (one server, the
// catalog in memory) with a data directory, where the agent keeps the
// services registered through its API and registers them again when it
// starts.
type consulStore struct {
	daemon
	e                      *env
	http, lan, wan, server int
	data                   string
	client                 *http.Client
	mu                     sync.Mutex
	registered             map[string]storeHost // by service ID: what a redeploy registers again
	bin                    string
	gen                    atomic.Int64 // wipes
}

// harnessClient is the harness's HTTP client for the Consul agent. It
// connects from 127.0.0.2: the agent limits concurrent connections per
// client address (limits.http_max_conns_per_client, 200), and Caddy, on
// 127.0.0.1, may hold them all (one blocking query per service); the
// harness must still reach the agent then.
func harnessClient(timeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 16}}
}

// consulBinary is where scripts/consul-build.sh puts the agent.
func consulBinary() string {
	cache := os.Getenv("SVCREG_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "svcreg")
	}
	return filepath.Join(cache, "consul-v1.16.1", "consul")
}

func newConsul(e *env) (store, error) {
	bin := consulBinary()
	if _, err := os.Stat(bin); err != nil {
		return nil, errSkip("no Consul agent at " + bin + " (scripts/consul-build.sh builds it)")
	}
	dir, err := os.MkdirTemp(e.tmp, "consul-")
	if err != nil {
		return nil, err
	}
	s := &consulStore{e: e, bin: bin, http: freePort(), lan: freePort(), wan: freePort(), server: freePort(),
		data: filepath.Join(dir, "data"), client: harnessClient(2 * time.Second), registered: map[string]storeHost{}}
	s.daemon = daemon{name: "consul", dir: dir, args: func() []string {
		return []string{s.bin, "agent", "-dev", "-node", "bench", "-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-http-port", fmt.Sprint(s.http), "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
			"-serf-lan-port", fmt.Sprint(s.lan), "-serf-wan-port", fmt.Sprint(s.wan), "-server-port", fmt.Sprint(s.server),
			"-data-dir", s.data, "-log-level", "warn"}
	}, ready: func() error {
		return until(60*time.Second, "consul electing itself leader", func() bool {
			var leader string
			return s.get("/v1/status/leader", &leader) == nil && leader != ""
		})
	}}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *consulStore) Name() string { return "consul" }
func (s *consulStore) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.http) }

func (s *consulStore) get(path string, into any) error { return s.getWith(s.client, path, into) }

func (s *consulStore) getWith(client *http.Client, path string, into any) error {
	resp, err := client.Get("http://" + s.Addr() + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(b))
	}
	return json.NewDecoder(resp.Body).Decode(into)
}

func (s *consulStore) put(path string, body any) error {
	var r io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(http.MethodPut, "http://"+s.Addr()+path, r)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("PUT %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(b))
	}
	return nil
}

// Wipe deletes the stopped agent's data directory (and with it the
// services registered through its API) and starts it again.
func (s *consulStore) Wipe() error {
	s.gen.Add(1)
	if err := os.RemoveAll(s.data); err != nil {
		return err
	}
	return s.Start()
}

func (s *consulStore) Backend(addr string, changed bool) string {
	wait := "1m"
	if changed {
		wait = "30s"
	}
	return fmt.Sprintf("backend consul {\n\t\t\taddress %s\n\t\t\twait %s\n\t\t}", addr, wait)
}

// consulHost is a host registered through the agent's API with an HTTP
// check of its /healthz every second.
type consulHost struct {
	s    *consulStore
	id   string
	stop chan struct{}
	once sync.Once
}

func (s *consulStore) register(h storeHost) error {
	_, port, _ := net.SplitHostPort(h.addr)
	var p int
	fmt.Sscan(port, &p)
	return s.put("/v1/agent/service/register", map[string]any{
		"ID": "bench-" + h.name, "Name": "bench", "Tags": []string{"version=" + h.version},
		"Address": "127.0.0.1", "Port": p,
		"Check": map[string]any{"HTTP": "http://" + h.addr + "/healthz", "Interval": "1s", "Timeout": "1s", "Status": "passing"},
	})
}

func (s *consulStore) Register(h storeHost) (registration, error) {
	if err := s.register(h); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.registered["bench-"+h.name] = h
	s.mu.Unlock()
	return &consulHost{s: s, id: "bench-" + h.name, stop: make(chan struct{})}, nil
}

// Leave deregisters the host, trying every 500 ms while the agent does not
// answer, as a deploy's stop hook would.
func (c *consulHost) Leave() {
	c.s.mu.Lock()
	delete(c.s.registered, c.id)
	c.s.mu.Unlock()
	for {
		err := c.s.put("/v1/agent/service/deregister/"+c.id, nil)
		if err == nil || strings.Contains(err.Error(), ": 404 ") {
			return
		}
		select {
		case <-c.stop:
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *consulHost) Kill() { c.once.Do(func() { close(c.stop) }) }

// Reregister registers again every host still meant to be registered, as
// a redeploy does after the agent lost them.
func (s *consulStore) Reregister() error {
	s.mu.Lock()
	hosts := make([]storeHost, 0, len(s.registered))
	for _, h := range s.registered {
		hosts = append(hosts, h)
	}
	s.mu.Unlock()
	for _, h := range hosts {
		if err := s.register(h); err != nil {
			return err
		}
	}
	return nil
}

// Content reads the catalog of the agent's node: its services, and the
// passing ones among them (all their checks and the node's pass), which
// is what the consul backend routes.
func (s *consulStore) Content(timeout time.Duration) (content, error) {
	client := &http.Client{Timeout: timeout, Transport: s.client.Transport}
	var node struct {
		Node struct {
			Address string
		}
		Services []struct {
			ID, Service, Address string
			Port                 int
			Tags                 []string
			CreateIndex          int64
		}
	}
	if err := s.getWith(client, "/v1/catalog/node-services/bench", &node); err != nil {
		return nil, err
	}
	var checks []struct {
		ServiceID, Status string
	}
	if err := s.getWith(client, "/v1/health/node/bench", &checks); err != nil {
		return nil, err
	}
	failing, nodeFailing := map[string]bool{}, false
	for _, ch := range checks {
		if ch.Status != "passing" {
			if ch.ServiceID == "" {
				nodeFailing = true
			}
			failing[ch.ServiceID] = true
		}
	}
	held := content{}
	for _, svc := range node.Services {
		if svc.Service == "consul" || nodeFailing || failing[svc.ID] {
			continue
		}
		addr := svc.Address
		if addr == "" {
			addr = node.Node.Address
		}
		for _, tag := range svc.Tags {
			if v, ok := strings.CutPrefix(tag, "version="); ok {
				held[svc.Service+"/"+v+"/"+net.JoinHostPort(addr, fmt.Sprint(svc.Port))] = generation(&s.gen, svc.CreateIndex)
			}
		}
	}
	return held, nil
}

// LoadServices registers n services through the agent's API, from 8
// clients, without checks.
func (s *consulStore) LoadServices(n int, addr string) error {
	_, port, _ := net.SplitHostPort(addr)
	var p int
	fmt.Sscan(port, &p)
	var next int
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				stop := i >= n || firstErr != nil
				mu.Unlock()
				if stop {
					return
				}
				name := fmt.Sprintf("s%04d", i)
				err := s.put("/v1/agent/service/register", map[string]any{
					"ID": name, "Name": name, "Tags": []string{"version=v1"}, "Address": "127.0.0.1", "Port": p})
				if err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

func (s *consulStore) Close() {
	if s.p != nil {
		s.p.stop(syscall.SIGKILL)
	}
}

// errSkip is a store that cannot run here, with the reason.
type errSkip string

func (e errSkip) Error() string { return string(e) }

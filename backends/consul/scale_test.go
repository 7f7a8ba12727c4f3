package consul

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/svcreg/caddy-svcreg/backends/consul/consulstore"
	"github.com/svcreg/caddy-svcreg/internal/consultest"
	"github.com/svcreg/caddy-svcreg/internal/testutil"
	"github.com/svcreg/caddy-svcreg/registry"
)

// connCounter counts the connections the backend opens to Consul, as
// its dial, and the reads of services sent on them.
type connCounter struct {
	mu        sync.Mutex
	open, max int
	reads     atomic.Int64 // GET /v1/health/service/...
}

func (cc *connCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := new(net.Dialer).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.open++
	cc.max = max(cc.max, cc.open)
	return &countedConn{Conn: conn, cc: cc}, nil
}

// most returns the most connections open at once so far.
func (cc *connCounter) most() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.max
}

type countedConn struct {
	net.Conn
	cc     *connCounter
	closed sync.Once
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.cc.reads.Add(int64(bytes.Count(p, []byte("GET /v1/health/service/"))))
	return c.Conn.Write(p)
}

func (c *countedConn) Close() error {
	c.closed.Do(func() {
		c.cc.mu.Lock()
		c.cc.open--
		c.cc.mu.Unlock()
	})
	return c.Conn.Close()
}

// TestConsulThousandServices follows 1,000 services of a real agent,
// each with an instance: the backend syncs and routes each, holds at
// most 11 connections to the agent (which allows 200 per client), and
// a change of one service's health is read as one read of that service,
// not of all of them. A registration changes the catalog, which does not
// say which service changed: it reads them all, at most 8 at once.
func TestConsulThousandServices(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping 1,000 services in -short mode")
	}
	const n = 1000
	agent := consultest.Start(t)
	client := agent.Client()
	var wg sync.WaitGroup
	ids := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range ids {
				if err := client.Agent().ServiceRegister(instance(fmt.Sprintf("s%d-a", i), fmt.Sprintf("s%d", i), 10000+i, "v1", api.HealthPassing)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range n {
		ids <- i
	}
	close(ids)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	cc := new(connCounter)
	dialWas := dial
	dial = cc.dial
	t.Cleanup(func() { dial = dialWas })
	begin := time.Now()
	tbl, _ := start(t, &Backend{}, agent.Addr, registry.BackendEnv{})
	testutil.Eventually(t, 60*time.Second, "every service routed", func() bool { return len(tbl.Snapshot().Services()) == n })
	t.Logf("%d services synced in %v with %d reads, at most %d connections at once", n, time.Since(begin).Round(time.Millisecond), cc.reads.Load(), cc.most())
	for i := range n {
		key := registry.ServiceKey{Service: fmt.Sprintf("s%d", i), Version: "v1"}
		if got, want := tableState(tbl, key), fmt.Sprintf("127.0.0.1:%d", 10000+i); got != want {
			t.Fatalf("%s: %q, want %q", key, got, want)
		}
	}

	// A check turning critical: one read.
	reads := cc.reads.Load()
	begin = time.Now()
	agent.SetStatus("s500-a", api.HealthCritical)
	s500 := registry.ServiceKey{Service: "s500", Version: "v1"}
	testutil.Eventually(t, 10*time.Second, "s500's instance leaving", func() bool { return tableState(tbl, s500) == "" })
	took, health := time.Since(begin), cc.reads.Load()-reads
	t.Logf("a check turning critical routed in %v, with %d reads", took.Round(time.Millisecond), health)
	if health > 3 {
		t.Errorf("a check of one service turning critical took %d reads, want that service's alone", health)
	}

	// A new instance: the catalog changed; everything is read again.
	reads = cc.reads.Load()
	begin = time.Now()
	agent.Register(instance("s777-b", "s777", 20777, "v1", api.HealthPassing))
	s777 := registry.ServiceKey{Service: "s777", Version: "v1"}
	testutil.Eventually(t, 10*time.Second, "s777's new instance", func() bool { return tableState(tbl, s777) == "127.0.0.1:10777,127.0.0.1:20777" })
	t.Logf("a registration routed in %v, with %d reads so far", time.Since(begin).Round(time.Millisecond), cc.reads.Load()-reads)

	if most := cc.most(); most > consulstore.MaxConns {
		t.Errorf("at most %d connections open at once to Consul, want %d at most", most, consulstore.MaxConns)
	}
}

// Command selfreg-service is a Go service that registers itself in the
// svcreg registry with package selfreg, in etcd or in ZooKeeper, for as
// long as it runs, and deregisters when it stops:
//
//	go run ./examples/selfreg -store etcd -servers 127.0.0.1:2379 -service users -version v1 -listen 127.0.0.1:9091
//	go run ./examples/selfreg -store zookeeper -servers 127.0.0.1:2181 -service users -version v1 -listen 127.0.0.1:9091
//
// It answers every request with its service, version and path.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/svcreg/caddy-svcreg/selfreg"
)

func main() {
	store := flag.String("store", "etcd", "where the registry is: etcd or zookeeper")
	servers := flag.String("servers", "", "the store's servers, comma-separated (default 127.0.0.1:2379 for etcd, 127.0.0.1:2181 for zookeeper)")
	service := flag.String("service", "users", "service name")
	version := flag.String("version", "v1", "version name")
	listen := flag.String("listen", "127.0.0.1:9091", "address to listen on, and to register")
	flag.Parse()

	cfg := selfreg.Config{Service: *service, Version: *version, Address: *listen, TTL: 5 * time.Second}
	switch *store {
	case "etcd":
		if *servers != "" {
			cfg.Endpoints = strings.Split(*servers, ",")
		}
	case "zookeeper":
		cfg.ZooKeeper = []string{"127.0.0.1:2181"}
		if *servers != "" {
			cfg.ZooKeeper = strings.Split(*servers, ",")
		}
	default:
		log.Fatalf("-store %q: want etcd or zookeeper", *store)
	}

	srv := &http.Server{Addr: *listen, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s %s\n", *service, *version, r.Method, r.URL.Path)
	})}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()

	// Registered while this runs; deregistered when ctx ends, and
	// Register returns a drain (1 s) later, once the proxies have stopped
	// sending here: only then does the server stop taking requests, so a
	// rolling restart loses nothing.
	registered := make(chan error, 1)
	go func() { registered <- selfreg.Register(ctx, cfg) }()

	select {
	case err := <-served:
		log.Fatal(err)
	case err := <-registered:
		if err != nil {
			log.Fatal(err) // a bad name or address: refused at once
		}
	case <-ctx.Done():
	}
	<-registered // deregistered
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Print(err)
	}
}

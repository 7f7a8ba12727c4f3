// Command selfreg registers a backend in the svcreg registry, in etcd or
// ZooKeeper, for as long as it runs:
//
//	selfreg -etcd 127.0.0.1:2379 -service users -version v1 -address 127.0.0.1:9091 -ttl 5s
//	selfreg -zookeeper 127.0.0.1:2181 -service users -version v1 -address 127.0.0.1:9091
//
// Run it beside the backend: SIGTERM or Ctrl-C deregisters at once, and
// the program exits -drain later (default 1s), once the proxies have
// stopped sending to the backend; if it is killed, the key expires TTL
// later. For a deploy that loses no request, stop this program first and
// the backend when it has exited.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/svcreg/caddy-svcreg/selfreg"
)

func main() {
	var cfg selfreg.Config
	endpoints := flag.String("etcd", "127.0.0.1:2379", "etcd client endpoints, comma-separated")
	flag.StringVar(&cfg.Prefix, "prefix", "/svcreg/", "registry key prefix")
	flag.StringVar(&cfg.Service, "service", "", "service name (required)")
	flag.StringVar(&cfg.Version, "version", "", "version name (required)")
	flag.StringVar(&cfg.Address, "address", "", "host:port of the backend (required; registered in canonical form)")
	flag.IntVar(&cfg.Weight, "weight", 1, "weight, 1 to 100")
	flag.DurationVar(&cfg.TTL, "ttl", 0, "how long the registration outlives this process (default 5s; with ZooKeeper, the session timeout)")
	flag.DurationVar(&cfg.Drain, "drain", 0, "how long to wait after deregistering before exiting (default 1s; negative: none)")
	zookeeper := flag.String("zookeeper", "", "ZooKeeper servers, comma-separated: register there instead of etcd")
	flag.StringVar(&cfg.Layout.Base, "base-path", "", "ZooKeeper base path (default /services)")
	flag.BoolVar(&cfg.Layout.VersionLevel, "version-level", false, "ZooKeeper: the version is a path level, <base>/<service>/<version>/<id>")
	flag.Parse()
	cfg.Endpoints = strings.Split(*endpoints, ",")
	if *zookeeper != "" {
		cfg.ZooKeeper = strings.Split(*zookeeper, ",")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := selfreg.Register(ctx, cfg); err != nil {
		log.Fatal(err)
	}
}

// Command load sends closed-loop HTTP/1.1 keep-alive load and prints what
// it measured as JSON (see package loadgen): every failure is counted, no
// request is retried.
//
//	load -addr 127.0.0.1:9090 -path /bench/v1/x -conns 32 -duration 10s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"

	"github.com/svcreg/caddy-svcreg/bench/loadgen"
)

func main() {
	var cfg loadgen.Config
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:9090", "host:port to send to")
	flag.StringVar(&cfg.Host, "host", "", "Host header (default: addr)")
	flag.StringVar(&cfg.Path, "path", "/", "request path")
	flag.IntVar(&cfg.Conns, "conns", 32, "keep-alive connections")
	flag.DurationVar(&cfg.Duration, "duration", 0, "length of the run (default 10s)")
	flag.DurationVar(&cfg.Timeout, "timeout", 0, "timeout of one request (default 10s)")
	flag.Parse()
	res, err := loadgen.Run(context.Background(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		log.Fatal(err)
	}
}

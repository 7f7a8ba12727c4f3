// Command backend is the benchmark's backend: it answers every request
// with a short body and an X-Backend header naming itself, after an
// optional delay. SIGTERM stops it gracefully (no new connections, requests
// in flight finish, idle keep-alive connections close); SIGKILL stops it
// abruptly, as a crash would.
//
//	backend -listen 127.0.0.1:9101 -name b1 [-delay 1ms]
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9101", "address to listen on")
	name := flag.String("name", "", "name in the X-Backend header (default: the address)")
	delay := flag.Duration("delay", 0, "how long each request takes")
	flag.Parse()
	if *name == "" {
		*name = *listen
	}
	body := []byte("ok " + *name + "\n")
	srv := &http.Server{
		Addr: *listen,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if *delay > 0 {
				time.Sleep(*delay)
			}
			w.Header().Set("X-Backend", *name)
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// Command backend is a small HTTP server for trying and benchmarking
// svcreg: it answers every request with its name, the method and path it
// received, and the X-Service header if one came with it, and names
// itself in an X-Backend header. GET /healthz answers 200. SIGTERM stops
// it gracefully (no new connections, requests in flight finish, idle
// keep-alive connections close; over h2c, a GOAWAY); SIGKILL stops it
// abruptly, as a crash would. -h2c makes it speak HTTP/2 without TLS
// besides HTTP/1. For fault drills, SIGUSR1 switches answering 503 to
// every request on and off, and SIGUSR2 switches taking -slow longer on
// and off.
//
//	go run ./examples/backend -listen 127.0.0.1:9091 -name users-v1-a [-delay 1ms] [-slow 1s] [-h2c] [-read-body]
package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9091", "address to listen on")
	name := flag.String("name", "", "name to answer with, also in the X-Backend header (default: the listen address)")
	delay := flag.Duration("delay", 0, "how long each request takes")
	slowBy := flag.Duration("slow", time.Second, "how much longer each request takes while slow (SIGUSR2)")
	h2c := flag.Bool("h2c", false, "also speak HTTP/2 without TLS (h2c, prior knowledge)")
	readBody := flag.Bool("read-body", false, "read each request's body whole before answering, as a service that uses it does")
	flag.Parse()
	if *name == "" {
		*name = *listen
	}
	var failing, slow atomic.Bool
	toggles := make(chan os.Signal, 4)
	signal.Notify(toggles, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		for sig := range toggles {
			if sig == syscall.SIGUSR1 {
				log.Printf("%s: answering 503: %v", *name, !failing.Load())
				failing.Store(!failing.Load())
			} else {
				log.Printf("%s: %v slower: %v", *name, *slowBy, !slow.Load())
				slow.Store(!slow.Load())
			}
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if *readBody {
			_, _ = io.Copy(io.Discard, r.Body)
		}
		if *delay > 0 {
			time.Sleep(*delay)
		}
		if slow.Load() {
			time.Sleep(*slowBy)
		}
		w.Header().Set("X-Backend", *name)
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		body := *name + ": " + r.Method + " " + r.URL.RequestURI()
		if svc := r.Header.Get("X-Service"); svc != "" {
			body += " (X-Service: " + svc + ")"
		}
		w.Write([]byte(body + "\n"))
	})
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(*h2c)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("%s listening on %s", *name, *listen)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	// ListenAndServe returns as soon as Shutdown begins: exiting now would
	// cut the requests in flight that Shutdown waits for.
	<-stopped
}

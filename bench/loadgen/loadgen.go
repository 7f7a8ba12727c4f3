// Package loadgen is a closed-loop HTTP/1.1 load generator that counts
// every failure exactly: each connection sends one request at a time over
// a raw keep-alive TCP connection, nothing is retried, and a request that
// did not get a complete response is a failure, counted by kind.
package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes one load run.
type Config struct {
	// Addr is the host:port to connect to (127.0.0.1 only in this suite).
	Addr string
	// Host is the Host header; default: Addr.
	Host string
	// Path is the request target, such as /bench/v1/x.
	Path string
	// Conns is the number of keep-alive connections, each with one
	// request at a time. Default: 32.
	Conns int
	// Duration of the run. Default: 10s.
	Duration time.Duration
	// Timeout of one request (from write to the end of the response).
	// Default: 10s.
	Timeout time.Duration
	// Bucket is the width of a timeline bucket. Default: 100ms.
	Bucket time.Duration
	// BackendHeader names the response header that says which backend
	// answered. Default: X-Backend.
	BackendHeader string
	// PostBody, when above 0, makes every request a POST with a body of
	// that many bytes; 0 sends GETs.
	PostBody int
}

// Result is what a run measured.
type Result struct {
	Total    int            `json:"total"`
	OK       int            `json:"ok"` // 2xx
	Failed   int            `json:"failed"`
	Statuses map[int]int    `json:"statuses"` // every response by status
	Errors   map[string]int `json:"errors"`   // requests without a response, by kind

	Seconds float64 `json:"seconds"`
	RPS     float64 `json:"rps"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	P999ms  float64 `json:"p99_9_ms"`
	MaxMs   float64 `json:"max_ms"`

	Backends map[string]int `json:"backends"` // 2xx responses by backend
	// Timeline has one entry per bucket since the start.
	Timeline []Bucket `json:"timeline"`

	samples []sample
}

// Window returns what the requests that began in [from, to) after the
// start measured: how many there were and failed, and their p99 and
// maximum latency in milliseconds (failed requests included).
func (r *Result) Window(from, to time.Duration) (total, failed int, p99ms, maxms float64) {
	var lat []time.Duration
	for _, s := range r.samples {
		if begin := s.end - s.latency; begin < from || begin >= to {
			continue
		}
		total++
		if s.status < 200 || s.status >= 300 {
			failed++
		}
		lat = append(lat, s.latency)
	}
	if len(lat) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return total, failed, ms(lat[len(lat)*99/100]), ms(lat[len(lat)-1])
}

// OKPerSecond returns the answered (2xx) requests per second that
// completed in [from, to) after the start, from the timeline.
func (r *Result) OKPerSecond(from, to, bucket time.Duration) float64 {
	ok := 0
	for k := int(from / bucket); k < int(to/bucket) && k < len(r.Timeline); k++ {
		ok += r.Timeline[k].OK
	}
	return float64(ok) / (to - from).Seconds()
}

// Bucket counts the requests that completed in one timeline bucket.
type Bucket struct {
	OK       int            `json:"ok"`
	Failed   int            `json:"failed"`
	Backends map[string]int `json:"backends,omitempty"`
}

type sample struct {
	end     time.Duration // since start
	latency time.Duration
	status  int    // 0: no response
	errKind string // when status is 0
	backend string
}

// Run sends load until the duration ends or ctx is done.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Conns == 0 {
		cfg.Conns = 32
	}
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Bucket == 0 {
		cfg.Bucket = 100 * time.Millisecond
	}
	if cfg.BackendHeader == "" {
		cfg.BackendHeader = "X-Backend"
	}
	if cfg.Host == "" {
		cfg.Host = cfg.Addr
	}
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	request := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: svcreg-loadgen\r\n\r\n", cfg.Path, cfg.Host))
	if cfg.PostBody > 0 {
		request = fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: svcreg-loadgen\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n",
			cfg.Path, cfg.Host, cfg.PostBody)
		request = append(request, strings.Repeat("x", cfg.PostBody)...)
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var mu sync.Mutex
	var samples []sample
	var wg sync.WaitGroup
	for range cfg.Conns {
		wg.Go(func() {
			local := make([]sample, 0, 4096)
			var conn net.Conn
			var br *bufio.Reader
			for ctx.Err() == nil {
				if conn == nil {
					var err error
					d := net.Dialer{Timeout: cfg.Timeout}
					t0 := time.Now()
					conn, err = d.DialContext(ctx, "tcp", cfg.Addr)
					if err != nil {
						if ctx.Err() != nil {
							break
						}
						local = append(local, sample{end: time.Since(start), latency: time.Since(t0), errKind: errKind(err, "dial")})
						time.Sleep(time.Millisecond) // a refused dial returns at once; do not spin
						continue
					}
					br = bufio.NewReader(conn)
				}
				t0 := time.Now()
				_ = conn.SetDeadline(t0.Add(cfg.Timeout))
				s, err := roundTrip(conn, br, request, cfg.BackendHeader)
				s.latency = time.Since(t0)
				s.end = time.Since(start)
				if err != nil {
					if ctx.Err() != nil && s.status == 0 {
						break // the run ended during this request: not a failure of the target
					}
					s.errKind = errKind(err, "read")
					conn.Close()
					conn = nil
				}
				local = append(local, s)
			}
			if conn != nil {
				conn.Close()
			}
			mu.Lock()
			samples = append(samples, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return summarize(samples, time.Since(start), cfg.Bucket), nil
}

// roundTrip sends one request on conn and reads the whole response.
func roundTrip(conn net.Conn, br *bufio.Reader, request []byte, backendHeader string) (sample, error) {
	if _, err := conn.Write(request); err != nil {
		return sample{}, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return sample{}, err
	}
	s := sample{status: resp.StatusCode, backend: resp.Header.Get(backendHeader)}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		resp.Body.Close()
		return sample{}, err
	}
	resp.Body.Close()
	if resp.Close {
		return s, errors.New("server closed the connection") // answered; reconnect before the next one
	}
	return s, nil
}

// errKind names a transport error briefly.
func errKind(err error, op string) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return op + ": connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return op + ": connection reset"
	case errors.Is(err, syscall.EPIPE):
		return op + ": broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return op + ": connection closed"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return op + ": timeout"
	case strings.HasPrefix(err.Error(), "write:"):
		return "write error"
	}
	return op + ": " + err.Error()
}

func summarize(samples []sample, elapsed, bucket time.Duration) *Result {
	r := &Result{Statuses: map[int]int{}, Errors: map[string]int{}, Backends: map[string]int{}, Seconds: elapsed.Seconds(), samples: samples}
	var lat []time.Duration
	r.Timeline = make([]Bucket, int(elapsed/bucket)+1)
	for _, s := range samples {
		r.Total++
		b := &r.Timeline[min(int(s.end/bucket), len(r.Timeline)-1)]
		ok := s.status >= 200 && s.status < 300
		if s.status != 0 {
			r.Statuses[s.status]++
		} else {
			r.Errors[s.errKind]++
		}
		if ok {
			r.OK++
			b.OK++
			if s.backend != "" {
				r.Backends[s.backend]++
				if b.Backends == nil {
					b.Backends = map[string]int{}
				}
				b.Backends[s.backend]++
			}
		} else {
			r.Failed++
			b.Failed++
		}
		lat = append(lat, s.latency) // failed requests keep their clients waiting too
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		r.P50ms = ms(lat[len(lat)/2])
		r.P99ms = ms(lat[len(lat)*99/100])
		r.P999ms = ms(lat[len(lat)*999/1000])
		r.MaxMs = ms(lat[len(lat)-1])
	}
	r.RPS = float64(r.Total) / elapsed.Seconds()
	return r
}

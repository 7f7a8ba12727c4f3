package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now,
// for a server a test starts (see Port).
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Port returns a TCP port on 127.0.0.1 that nothing listens on now, for
// a server to be started on it, and never the same one twice in this
// process. It is picked at random below the system's range of ephemeral
// ports (from which the system also picks the local port of every
// outgoing connection: under a load test, one of those can take a port
// between the moment it is found free and the moment the server binds
// it, as seen in CI), falling back to a port the system picks.
func Port() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	if low := ephemeralLow(); low > freePortMin+1000 {
		for range 100 {
			p := freePortMin + rand.IntN(low-freePortMin)
			if portsGiven[p] {
				continue
			}
			if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
				l.Close()
				portsGiven[p] = true
				return p, nil
			}
		}
	}
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsGiven[p] {
			portsGiven[p] = true
			return p, nil
		}
	}
	return 0, errors.New("no free port found")
}

// The ports Port gave out.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// freePortMin is the lowest port FreePort picks.
const freePortMin = 20000

// ephemeralLow returns the lowest ephemeral port of the system (Linux's
// ip_local_port_range), or 0 when it cannot tell.
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	var low, high int
	if _, err := fmt.Sscan(string(data), &low, &high); err != nil {
		return 0
	}
	return low
}

// stopProcess sends a test server process sig (after SIGCONT, so that a
// paused one can act on it) and waits for it to exit; after 10 s it kills
// it.
func stopProcess(cmd *exec.Cmd, sig syscall.Signal) {
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Process is a test server's process: started with Start, signalled and
// stopped by its PID, safe to use from several goroutines.
type Process struct {
	mu  sync.Mutex
	cmd *exec.Cmd // nil when stopped
}

// Start starts cmd as the process.
func (p *Process) Start(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	p.mu.Lock()
	p.cmd = cmd
	p.mu.Unlock()
	return nil
}

// Signal sends sig to the process, if it runs.
func (p *Process) Signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Pause freezes the process (SIGSTOP), if it runs, and returns once
// every one of its threads has stopped, or after 10 s. The signal alone
// is not enough: the kernel stops a process through one of its threads,
// which stops the others only once it runs, and on a busy machine the
// other threads may meanwhile go on answering for milliseconds.
func (p *Process) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGSTOP)
	for deadline := time.Now().Add(10 * time.Second); !stopped(p.cmd.Process.Pid) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
}

// Resume lets a paused process go on (SIGCONT), if it runs.
func (p *Process) Resume() { p.Signal(syscall.SIGCONT) }

// stopped reports whether every thread of process pid is stopped (Linux:
// state T in /proc/pid/task/*/stat). Where there is no /proc to tell, it
// reports true.
func stopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return true
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue // the thread exited
		}
		// "pid (comm) state ...": comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || i+2 >= len(stat) || (stat[i+2] != 'T' && stat[i+2] != 't') {
			return false
		}
	}
	return true
}

// Stop stops the process with sig (stopProcess), if it runs.
func (p *Process) Stop(sig syscall.Signal) {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd != nil {
		stopProcess(cmd, sig)
	}
}

// Log keeps what a test server prints, up to 1 MiB, safe for concurrent
// writes (its stdout and stderr) and reads.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() < 1<<20 {
		l.buf.Write(p)
	}
	return len(p), nil
}

// String returns what was written.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

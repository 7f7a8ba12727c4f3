package testutil

import (
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// A process paused has stopped, every thread of it, when Pause returns:
// a server a test freezes answers nothing from then on. The process here
// keeps four threads busy, so that each must be stopped, not found
// asleep.
func TestPauseStopsEveryThread(t *testing.T) {
	if os.Getenv("TESTUTIL_SPIN") == "1" {
		for range 3 {
			go spin()
		}
		spin()
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads thread states from /proc")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPauseStopsEveryThread$")
	cmd.Env = append(os.Environ(), "TESTUTIL_SPIN=1", "GOMAXPROCS=4")
	var p Process
	if err := p.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(syscall.SIGKILL) })
	pid := cmd.Process.Pid
	Eventually(t, 10*time.Second, "the process to run busy threads", func() bool { return !stopped(pid) })
	for i := range 100 {
		p.Pause()
		if !stopped(pid) {
			t.Fatalf("pause %d returned with a thread not stopped", i)
		}
		p.Resume()
	}
}

func spin() {
	for n := 0; ; n++ {
		_ = n
	}
}

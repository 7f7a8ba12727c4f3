package registry

import (
	"errors"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestFeedReachable: every store's reachability changes reach the
// table and are logged the same way: the loss as an error saying what
// routing does meanwhile (which depends on whether the registry has
// synced), the return with the backend's own message.
func TestFeedReachable(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	feed := NewFeed()
	feed.Configure(BackendEnv{Logger: log})
	table := feed.table
	addr := zap.String("address", "127.0.0.1:8500")

	feed.Reachable(false, false, errors.New("refused"), "consul", "consul reachable again", addr)
	if table.hold.reachable {
		t.Error("the table still counts the store reachable after it was lost")
	}
	feed.Reachable(true, false, nil, "consul", "consul reachable again", addr)
	if !table.hold.reachable {
		t.Error("the table does not count the store reachable after it came back")
	}
	feed.Reachable(false, true, errors.New("refused"), "consul", "consul reachable again", addr)

	want := []struct {
		level zapcore.Level
		msg   string
	}{
		{zap.ErrorLevel, "consul unreachable; registry-routed requests get 503 until the first sync, retrying"},
		{zap.InfoLevel, "consul reachable again"},
		{zap.ErrorLevel, "consul unreachable; routing keeps the last snapshot and retries"},
	}
	got := logs.All()
	if len(got) != len(want) {
		t.Fatalf("logged %d entries, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		e := got[i]
		if e.Message != w.msg || e.Level != w.level {
			t.Errorf("entry %d: %s %q; want %s %q", i, e.Level, e.Message, w.level, w.msg)
		}
		fields := e.ContextMap()
		if fields["backend"] != "consul" || fields["address"] != "127.0.0.1:8500" {
			t.Errorf("entry %d: fields %v; want backend consul and the address", i, fields)
		}
		if _, hasErr := fields["error"]; hasErr == (w.level == zap.InfoLevel) {
			t.Errorf("entry %d: fields %v; want the error with a loss only", i, fields)
		}
	}
}

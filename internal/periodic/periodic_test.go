package periodic

import (
	"context"
	"testing"
	"time"
)

// waitCalls waits (at most 10 s) until calls delivers n values.
func waitCalls(t *testing.T, calls <-chan struct{}, n int, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for i := range n {
		select {
		case <-calls:
		case <-deadline:
			t.Fatalf("%s: %d calls of %d after 10 s", what, i, n)
		}
	}
}

func TestRunTicksAndKicks(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan struct{}, 100)
	kick := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// An hour: any call the test sees before its end is a kick's.
		Run(ctx, time.Hour, kick, func() { calls <- struct{}{} })
	}()
	select {
	case <-calls:
		t.Fatal("fn ran before any tick or kick")
	case <-time.After(50 * time.Millisecond):
	}
	for range 3 {
		kick <- struct{}{} // unbuffered: Run is waiting, not in fn
		waitCalls(t, calls, 1, "after a kick")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}

	// Ticks alone, without a kick channel.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go Run(ctx, time.Millisecond, nil, func() { calls <- struct{}{} })
	waitCalls(t, calls, 5, "1 ms interval")
}

// fn never starts once the context is done, even with ticks pending: a
// loop that closes a channel and cancels its own context must not run
// again (export's fence watch does that).
func TestRunNeverCallsAfterCancel(t *testing.T) {
	// Each round, select would pick the pending tick over the cancellation
	// half the time: 20 rounds catch a Run that does not check.
	for round := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		Run(ctx, time.Microsecond, nil, func() {
			n++
			cancel()
			time.Sleep(time.Millisecond) // a tick is pending when fn returns
		})
		if n != 1 {
			t.Fatalf("round %d: fn ran %d times; want once: it cancelled the context", round, n)
		}
	}
}

package volume

import "time"

// Ticker is what the volume's background loops (idle flush, compaction,
// automatic checkpoints, follow) wait on; it comes from the volume's Clock
// so a test's fake clock paces them as it does Now.
type Ticker interface {
	// C delivers ticks; like time.Ticker's, it drops ticks a slow reader
	// misses.
	C() <-chan time.Time
	Stop()
}

type wallTicker struct{ t *time.Ticker }

func (w wallTicker) C() <-chan time.Time { return w.t.C }
func (w wallTicker) Stop()               { w.t.Stop() }

// NewTicker is time.NewTicker.
func (wallClock) NewTicker(d time.Duration) Ticker { return wallTicker{time.NewTicker(d)} }

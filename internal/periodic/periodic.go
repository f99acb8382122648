// Package periodic runs the background loops of urldisk's long-running
// parts (the agent's heartbeat and reconcile, the cache's index sync, an
// export's fence watch): do something every interval and whenever asked,
// until the owner's context ends. Each had its own copy of the ticker and
// select; a copy that forgot to stop its ticker or ran once more after
// cancellation would be a leak or a late write.
//
// The volume engine's loops do not use it: they tick on the volume's
// injected Clock (volume.Options.Clock), which tests drive.
package periodic

import (
	"context"
	"time"
)

// Run calls fn after every interval and after every receive from kick (a
// nil kick never fires), until ctx is done; fn never starts after ctx is
// done, even when a tick and the cancellation arrive together. Run
// returns when ctx is done, after fn's current call. A caller that must
// act at once calls fn itself before Run. A kick sent while fn runs is
// seen afterwards if kick is buffered; the interval is not reset by a kick.
func Run(ctx context.Context, interval time.Duration, kick <-chan struct{}, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		if ctx.Err() != nil {
			return
		}
		fn()
	}
}

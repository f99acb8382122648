package etcdcoord

import (
	"context"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/urldisk/urldisk/internal/fleet"
)

// election is this process's campaign to be the fleet's scheduler: the one
// agent that fails over dead hosts' machines (fleet.Scheduler). It runs
// from the first Leads call until Close, on a session lease of LeaseTTL, so
// a scheduler that dies is replaced within a TTL.
type election struct {
	leading bool
	started bool
}

func (c *Coord) electionKey() string { return c.prefix + "scheduler" }

// Leads implements fleet.Scheduler: whether self (Options.Self) is the
// elected scheduler now. The first call starts campaigning.
func (c *Coord) Leads(ctx context.Context, self string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if self != c.opts.Self || self == "" {
		return false, nil
	}
	if !c.elect.started {
		c.elect.started = true
		c.watchWG.Go(func() { c.campaign(self) })
	}
	return c.elect.leading, nil
}

// campaign wins the election, holds it while the session lives, and
// campaigns again on a new session when it is lost (lease expired while
// this process was paused or cut off).
func (c *Coord) campaign(self string) {
	ctx := c.watchCtx
	ttl := max(int((c.opts.LeaseTTL+time.Second-1)/time.Second), 2)
	for ctx.Err() == nil {
		s, err := concurrency.NewSession(c.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
		if err != nil {
			c.log.Warn("scheduler election: no session", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		e := concurrency.NewElection(s, c.electionKey())
		if err := e.Campaign(ctx, self); err != nil {
			s.Close()
			if ctx.Err() == nil {
				c.log.Warn("scheduler election: campaign failed", "err", err)
				sleepCtx(ctx, time.Second)
			}
			continue
		}
		c.log.Info("elected fleet scheduler", "host", self)
		c.setLeading(true)
		select {
		case <-s.Done():
			c.log.Warn("scheduler election: session lost; no longer the scheduler", "host", self)
		case <-ctx.Done():
		}
		c.setLeading(false)
		// Resign with a fresh context so that a clean stop hands over at
		// once instead of after the lease's TTL.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		e.Resign(rctx)
		cancel()
		s.Close()
	}
}

func (c *Coord) setLeading(v bool) {
	c.mu.Lock()
	c.elect.leading = v
	c.mu.Unlock()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

var _ fleet.Scheduler = (*Coord)(nil)

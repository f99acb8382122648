package agent

import (
	"context"
	"time"

	"github.com/urldisk/urldisk/internal/periodic"
)

// reconcileLoop compares desired and running state every interval and
// when kicked (through the API, or by a runner).
func (a *Agent) reconcileLoop(ctx context.Context) {
	round := func() {
		rctx, cancel := context.WithTimeout(ctx, a.cfg.HeartbeatTimeout)
		defer cancel()
		if err := a.reconcileOnce(rctx); err != nil && ctx.Err() == nil {
			a.metrics.recErrors.Inc()
			a.log.Warn("reconcile: could not read the fleet state", "err", err)
		}
	}
	// At once: the machines placed here start without waiting an interval.
	round()
	periodic.Run(ctx, a.cfg.ReconcileInterval, a.kickReconcile, round)
}

// reconcileOnce runs one coordination round (watch peers, fail over the
// machines of dead ones, read the placements concerning this host) and
// tells each runner its machine's newest placement.
func (a *Agent) reconcileOnce(ctx context.Context) error {
	a.mu.Lock()
	load := len(a.runners)
	a.mu.Unlock()
	round, err := a.member.Round(ctx, load)
	if err != nil {
		return err
	}
	for _, p := range round.Failovers {
		a.metrics.failovers.Inc()
		a.nudge(ctx, p.Host)
	}
	for name, p := range round.Assigned {
		if p.Host == a.cfg.ID || p.From == a.cfg.ID {
			if r := a.runner(name); r != nil {
				r.update(p)
			}
			continue
		}
		a.mu.Lock()
		r := a.runners[name]
		a.mu.Unlock()
		if r != nil {
			r.update(p) // it ran here once: it may have something to stop or ack
		}
	}
	return nil
}

// hostDead reports whether this agent, watching heartbeats, holds host
// dead (never this agent itself).
func (a *Agent) hostDead(host string) bool { return a.member.Dead(host) }

// runner returns the runner of a machine, creating it; nil while the agent
// is stopping.
func (a *Agent) runner(name string) *runner {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.runners[name]; ok {
		return r
	}
	if a.runCtx == nil {
		return nil
	}
	r := newRunner(a, name)
	a.runners[name] = r
	a.runWG.Add(1)
	go func(ctx context.Context) {
		defer a.runWG.Done()
		r.run(ctx)
	}(a.runCtx)
	return r
}

// nudge asks other agents (by host id) to reconcile now, through their
// API with this agent's token (agents of one fleet share it). Failures
// only cost time: they reconcile on their own within an interval.
func (a *Agent) nudge(ctx context.Context, hosts ...string) {
	var urls []string
	for _, h := range hosts {
		if h == a.cfg.ID {
			a.Reconcile()
			continue
		}
		hb := a.member.Heartbeat(h)
		if hb == nil {
			// Not a peer this host watches: one read.
			var err error
			if hb, err = a.fleet.Heartbeat(ctx, h); err != nil {
				a.log.Debug("nudge: read heartbeat", "host", h, "err", err)
			}
		}
		if hb != nil && hb.API != "" {
			urls = append(urls, hb.API)
		}
	}
	for _, u := range urls {
		nctx, cancel := context.WithTimeout(ctx, time.Second)
		if err := (&Client{BaseURL: u, Token: a.cfg.Token, HTTP: a.peers}).Reconcile(nctx); err != nil {
			a.log.Debug("nudge failed", "api", u, "err", err)
		}
		cancel()
	}
}

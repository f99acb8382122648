package agent

import (
	"context"
	"errors"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
)

// reconcileLoop compares desired and running state every interval and
// when kicked (through the API, or by a runner).
func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, a.cfg.HeartbeatTimeout)
		if err := a.reconcileOnce(rctx); err != nil && ctx.Err() == nil {
			a.metrics.recErrors.Inc()
			a.log.Warn("reconcile: could not read the fleet state", "err", err)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kickReconcile:
		}
	}
}

// reconcileOnce reads heartbeats and placements, fails over the machines
// of dead hosts, and tells each runner its machine's newest placement.
func (a *Agent) reconcileOnce(ctx context.Context) error {
	hbs, err := a.fleet.Heartbeats(ctx)
	if err != nil {
		return err
	}
	a.liveMu.Lock()
	a.live.Observe(a.cfg.Now(), hbs)
	a.liveMu.Unlock()
	ps, err := a.fleet.Placements(ctx)
	if err != nil {
		return err
	}
	draining, err := a.fleet.Draining(ctx)
	if err != nil {
		return err
	}
	a.failover(ctx, ps, draining)
	for name, p := range ps {
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
func (a *Agent) hostDead(host string) bool {
	if host == a.cfg.ID {
		return false
	}
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	return a.live.State(host, a.cfg.Now()) == fleet.HostDead
}

// failover moves the machines of dead hosts to live ones. Every live agent
// does this; create-if-absent on the next placement version decides who
// actually moves each machine, and the losers see it moved.
func (a *Agent) failover(ctx context.Context, ps map[string]*fleet.Placement, draining map[string]bool) {
	now := a.cfg.Now()
	a.liveMu.Lock()
	var cands []string
	for _, h := range a.live.Hosts() {
		if !draining[h] && (h == a.cfg.ID || a.live.State(h, now) == fleet.HostLive) {
			cands = append(cands, h)
		}
	}
	a.liveMu.Unlock()
	moves := fleet.FailoverMoves(ps, a.hostDead, cands)
	for _, m := range moves {
		p, err := a.fleet.Update(ctx, m.Name, a.ops.By, func(cur *fleet.Placement) (*fleet.Placement, error) {
			if cur == nil || cur.State != fleet.Running || cur.Host != m.From || !a.hostDead(cur.Host) {
				return nil, fleet.ErrNoChange // someone else moved it, or the host is back
			}
			return fleet.NextMove(cur, m.Name, m.To, fleet.ReasonFailover, now)
		})
		switch {
		case errors.Is(err, fleet.ErrNoChange):
		case err != nil:
			a.log.Warn("failover failed", "machine", m.Name, "from", m.From, "to", m.To, "err", err)
		default:
			a.metrics.failovers.Inc()
			a.log.Warn("FAILOVER: host stopped heartbeating; machine reassigned", "machine", m.Name, "dead_host", m.From, "to", m.To, "version", p.Version)
			ps[m.Name] = p
			a.nudge(ctx, m.To)
		}
	}
}

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
	a.liveMu.Lock()
	var urls []string
	for _, h := range hosts {
		if h == a.cfg.ID {
			a.Reconcile()
			continue
		}
		if hb := a.live.Heartbeat(h); hb != nil && hb.API != "" {
			urls = append(urls, hb.API)
		}
	}
	a.liveMu.Unlock()
	for _, u := range urls {
		nctx, cancel := context.WithTimeout(ctx, time.Second)
		if err := (&Client{BaseURL: u, Token: a.cfg.Token, HTTP: a.peers}).Reconcile(nctx); err != nil {
			a.log.Debug("nudge failed", "api", u, "err", err)
		}
		cancel()
	}
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
)

// runner owns one machine on this host: a goroutine that brings what runs
// here in line with the machine's newest placement, one step at a time
// (wait for the previous host, start, stop, ack). Its instance is only
// touched by that goroutine.
type runner struct {
	a    *Agent
	name string
	log  *slog.Logger
	wake chan struct{} // cap 1: a newer placement arrived

	mu sync.Mutex
	// Guarded by mu:
	desired  *fleet.Placement    // newest placement seen; never goes back
	status   fleet.MachineStatus // what the heartbeat reports; Name "" = nothing
	dev      *device             // the running instance's device, for FirstIO
	prevStop time.Time           // when the previous host began stopping it
}

func newRunner(a *Agent, name string) *runner {
	return &runner{a: a, name: name, log: a.log.With("machine", name), wake: make(chan struct{}, 1)}
}

// update hands the runner a placement; older versions are ignored.
func (r *runner) update(p *fleet.Placement) {
	r.mu.Lock()
	newer := r.desired == nil || p.Version > r.desired.Version
	if newer {
		r.desired = p
	}
	r.mu.Unlock()
	if newer {
		kick(r.wake)
	}
}

func (r *runner) latest() *fleet.Placement {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.desired
}

// snapshot returns the machine's status for heartbeats; false if there is
// nothing to report.
func (r *runner) snapshot() (fleet.MachineStatus, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status
	if r.dev != nil {
		if t := r.dev.FirstIO(); !t.IsZero() {
			st.FirstIO = t.UTC()
			if !r.prevStop.IsZero() {
				st.Downtime = t.Sub(r.prevStop)
			}
		}
	}
	return st, st.Name != ""
}

// setStatus changes the reported status and pushes a heartbeat.
func (r *runner) setStatus(f func(st *fleet.MachineStatus)) {
	r.mu.Lock()
	f(&r.status)
	r.status.Name = r.name
	r.mu.Unlock()
	kick(r.a.kickHeartbeat)
}

// stopRecord is what the last stop of an instance here looked like; it
// goes into the ack.
type stopRecord struct {
	began, stopped time.Time
	epoch          uint64
	err            error
}

// errSuperseded: a newer placement arrived while starting.
var errSuperseded = errors.New("superseded by a newer placement")

// run is the runner's goroutine. When ctx ends (the agent stops) it stops
// the instance, flushing the volume, and returns. What to do at each step
// is decideRun's (decide.go); run only performs it.
func (r *runner) run(ctx context.Context) {
	self := r.a.cfg.ID
	var (
		inst *instance
		st   runState
		last stopRecord // the last stop here, for the ack
	)
	for {
		p := r.latest()
		next, do := decideRun(st, r.observe(ctx, p, inst))
		st = next
		if do.stop != "" {
			last = r.stopInstance(inst, do.stop)
			inst = nil
		}
		if do.adopt {
			inst.version = p.Version
			r.setStatus(func(ms *fleet.MachineStatus) { ms.Version = p.Version })
		}
		if do.ack {
			if err := r.ack(ctx, p, last); err != nil {
				r.log.Warn("could not write the stop ack; the new host attaches after its wait", "version", p.Version, "err", err)
			}
		}
		if do.clearStatus {
			r.clearStatus()
		}
		if do.start {
			var again bool
			inst, st, again = r.tryStart(ctx, p, st)
			if again {
				continue
			}
		}
		retryIn, retry := st.retryIn(p, self, inst != nil, r.a.cfg.Now())
		if !r.wait(ctx, inst, retryIn, retry) {
			if inst != nil {
				r.stopInstance(inst, "agent stopping")
			}
			return
		}
	}
}

// observe is what decideRun sees now.
func (r *runner) observe(ctx context.Context, p *fleet.Placement, inst *instance) runObs {
	o := runObs{self: r.a.cfg.ID, p: p, now: r.a.cfg.Now(), stopping: ctx.Err() != nil}
	// An instance here is reported (start and stop set its status).
	o.reported = inst != nil || r.statusName() != ""
	if inst != nil {
		o.inst = &runInst{version: inst.version, spec: &inst.spec, ended: inst.ended()}
	}
	return o
}

// tryStart starts p and records the outcome; again says to decide afresh
// at once (superseded by a newer placement, or the agent is stopping).
func (r *runner) tryStart(ctx context.Context, p *fleet.Placement, st runState) (*instance, runState, bool) {
	inst, err := r.start(ctx, p)
	switch {
	case errors.Is(err, errSuperseded) || (err != nil && ctx.Err() != nil):
		return nil, st, true
	case err != nil:
		var backoff time.Duration
		st, backoff = st.startFailed(r.a.cfg.Now())
		r.a.metrics.starts.WithLabelValues("failed").Inc()
		r.log.Error("machine failed to start; retrying", "version", p.Version, "err", err, "retry_in", backoff)
		r.setStatus(func(ms *fleet.MachineStatus) {
			*ms = fleet.MachineStatus{Version: p.Version, Phase: fleet.PhaseFailed, Error: err.Error()}
		})
		return nil, st, false
	}
	st.failures = 0
	r.a.metrics.starts.WithLabelValues("ok").Inc()
	return inst, st, false
}

// wait blocks until something may change the decision: a newer placement,
// the instance ending or being fenced, the retry time (if retry), or ctx
// ending (then it returns false).
func (r *runner) wait(ctx context.Context, inst *instance, retryIn time.Duration, retry bool) bool {
	var ended, fenced <-chan struct{}
	if inst != nil {
		ended, fenced = inst.m.Done(), inst.fenced()
	}
	var retryC <-chan time.Time
	if retry {
		timer := time.NewTimer(retryIn)
		defer timer.Stop()
		retryC = timer.C
	}
	select {
	case <-ctx.Done():
	case <-r.wake:
	case <-ended:
	case <-fenced:
	case <-retryC:
	}
	return ctx.Err() == nil
}

func (r *runner) statusName() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status.Name
}

func (r *runner) clearStatus() {
	r.mu.Lock()
	r.status = fleet.MachineStatus{}
	r.dev = nil
	r.mu.Unlock()
	kick(r.a.kickHeartbeat)
}

// ack records that this host let go of the machine for version p.
func (r *runner) ack(ctx context.Context, p *fleet.Placement, last stopRecord) error {
	a := &fleet.Ack{Name: r.name, Version: p.Version, Host: r.a.cfg.ID, StopBegan: last.began, Stopped: last.stopped, Epoch: last.epoch}
	if a.Stopped.IsZero() {
		a.Stopped = r.a.cfg.Now().UTC()
	}
	if last.err != nil {
		a.Error = last.err.Error()
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.a.cfg.HeartbeatTimeout)
	defer cancel()
	var err error
	for backoff := 50 * time.Millisecond; ; backoff *= 2 {
		if err = r.a.fleet.PutAck(actx, a); err == nil {
			r.log.Info("acked the move", "version", p.Version, "to", p.Host)
			return nil
		}
		select {
		case <-actx.Done():
			return err
		case <-time.After(backoff):
		}
	}
}

// start waits for the previous host to let go (bounded), then attaches
// the volume, exports it and starts the workload.
func (r *runner) start(ctx context.Context, p *fleet.Placement) (*instance, error) {
	var prevStop time.Time
	if p.From != "" && p.From != r.a.cfg.ID {
		r.setStatus(func(st *fleet.MachineStatus) {
			*st = fleet.MachineStatus{Version: p.Version, Phase: fleet.PhaseWaiting}
		})
		ack, err := r.waitAck(ctx, p)
		if err != nil {
			return nil, err
		}
		if ack != nil {
			prevStop = ack.StopBegan
		}
	}
	r.setStatus(func(st *fleet.MachineStatus) {
		*st = fleet.MachineStatus{Version: p.Version, Phase: fleet.PhaseStarting}
	})
	inst, err := r.a.startInstance(ctx, p, prevStop, r.log)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.dev = inst.dev
	r.prevStop = prevStop
	r.mu.Unlock()
	r.setStatus(func(st *fleet.MachineStatus) {
		*st = fleet.MachineStatus{Version: p.Version, Phase: fleet.PhaseRunning, Epoch: inst.vol.Epoch(), NBD: inst.uri, Started: inst.started.UTC()}
	})
	r.log.Info("machine running", "version", p.Version, "epoch", inst.vol.Epoch(), "nbd", inst.uri, "reason", p.Reason)
	return inst, nil
}

// ackPoll is how often a new host looks for the old host's ack.
const ackPoll = 20 * time.Millisecond

// waitAck waits until p.From acks version p.Version, p.From is dead, or
// StopWait passes (then it attaches anyway: its fence makes the old host's
// writes void). errSuperseded if a newer placement arrives meanwhile.
func (r *runner) waitAck(ctx context.Context, p *fleet.Placement) (*fleet.Ack, error) {
	deadline := time.Now().Add(r.a.cfg.StopWait)
	// Watch the previous host while waiting for it, so its death ends the
	// wait even if it is not among the peers this host watches.
	defer r.a.member.Track(p.From)()
	t := time.NewTicker(ackPoll)
	defer t.Stop()
	for {
		ack, err := r.a.fleet.GetAck(ctx, r.name, p.Version)
		if err != nil && ctx.Err() == nil {
			r.log.Warn("reading the stop ack failed", "err", err)
		}
		if ack != nil {
			r.log.Info("previous host stopped the machine", "from", p.From, "version", p.Version, "stop_began", ack.StopBegan, "flush_error", ack.Error)
			return ack, nil
		}
		if r.a.hostDead(p.From) {
			r.log.Warn("previous host is dead; attaching without its ack", "from", p.From)
			return nil, nil
		}
		if time.Now().After(deadline) {
			r.log.Warn("previous host did not ack in time; attaching anyway (its writes will be fenced)", "from", p.From, "waited", r.a.cfg.StopWait)
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-r.wake:
			if q := r.latest(); q.Version != p.Version {
				kick(r.wake) // let the main loop see it
				return nil, errSuperseded
			}
		case <-t.C:
		}
	}
}

// stopInstance stops the workload, the export and the volume (the final
// flush), records the outcome in the status and returns it for the ack.
func (r *runner) stopInstance(inst *instance, why string) stopRecord {
	rec := stopRecord{began: r.a.cfg.Now().UTC(), epoch: inst.vol.Epoch()}
	exited := false
	select {
	case <-inst.m.Done():
		exited = true
	default:
	}
	fenced := false
	select {
	case <-inst.fenced():
		fenced = true
	default:
	}
	r.setStatus(func(st *fleet.MachineStatus) { st.Phase = fleet.PhaseStopping })
	r.log.Info("stopping machine", "version", inst.version, "why", why, "exited", exited, "fenced", fenced)
	rec.err = r.a.stopInstance(inst, r.log)
	rec.stopped = r.a.cfg.Now().UTC()
	if inst.vol.Fenced() {
		fenced = true
	}
	phase := fleet.PhaseStopped
	switch {
	case fenced:
		phase = fleet.PhaseFenced
		r.a.fencedCount.Add(1)
		r.a.metrics.fenced.Inc()
		r.log.Warn("machine stopped: its volume was taken over by another host (fenced); nothing it wrote after that is visible")
	case exited:
		phase = fleet.PhaseExited
	}
	code := inst.m.ExitCode()
	errText := ""
	if rec.err != nil && !fenced {
		errText = fmt.Sprintf("detach: %v", rec.err)
	}
	r.mu.Lock()
	r.dev = nil
	r.mu.Unlock()
	r.setStatus(func(st *fleet.MachineStatus) {
		*st = fleet.MachineStatus{Version: inst.version, Phase: phase, Epoch: rec.epoch, Started: inst.started.UTC(), ExitCode: code, Error: errText}
		if t := inst.dev.FirstIO(); !t.IsZero() {
			st.FirstIO = t.UTC()
		}
	})
	r.log.Info("machine stopped", "version", inst.version, "phase", phase, "exit_code", code, "took", rec.stopped.Sub(rec.began).Round(time.Millisecond), "err", rec.err)
	return rec
}

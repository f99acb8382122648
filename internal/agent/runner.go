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
// the instance, flushing the volume, and returns.
func (r *runner) run(ctx context.Context) {
	self := r.a.cfg.ID
	var (
		inst     *instance
		finished uint64 // newest version whose instance ended by itself: not restarted
		acked    uint64 // newest version acked
		last     stopRecord
		failures int
		retryAt  time.Time
	)
	for {
		p := r.latest()
		// The workload ended by itself, or another host fenced the volume.
		if inst != nil && inst.ended() {
			last = r.stopInstance(inst, "ended")
			finished = inst.version
			inst = nil
		}
		// What runs here must go: moved, stopped, deleted, or changed.
		if inst != nil && p != nil && p.Version != inst.version {
			if p.RunsOn(self) && p.Spec.Equal(&inst.spec) {
				inst.version = p.Version // e.g. moved away and back before we noticed
				r.setStatus(func(st *fleet.MachineStatus) { st.Version = p.Version })
			} else {
				last = r.stopInstance(inst, p.Reason)
				inst = nil
			}
		}
		// Tell the new host we have let go.
		if inst == nil && p != nil && p.From == self && !p.RunsOn(self) && acked < p.Version {
			if err := r.ack(ctx, p, last); err != nil {
				r.log.Warn("could not write the stop ack; the new host attaches after its wait", "version", p.Version, "err", err)
			}
			acked = p.Version // tried for a heartbeat timeout: the new host's bounded wait covers the rest
		}
		if inst == nil && p != nil && !p.RunsOn(self) {
			failures, retryAt = 0, time.Time{}
			// Report only machines placed here (stopped ones included).
			if (p.Host != self || p.State == fleet.Deleted) && r.statusName() != "" {
				r.clearStatus()
			}
		}
		// Start what should run here.
		if inst == nil && p.RunsOn(self) && p.Version > finished && !r.a.cfg.Now().Before(retryAt) && ctx.Err() == nil {
			var err error
			inst, err = r.start(ctx, p)
			switch {
			case errors.Is(err, errSuperseded) || (err != nil && ctx.Err() != nil):
				continue
			case err != nil:
				failures++
				backoff := min(time.Duration(1<<min(failures-1, 5))*time.Second, 30*time.Second)
				retryAt = r.a.cfg.Now().Add(backoff)
				r.a.metrics.starts.WithLabelValues("failed").Inc()
				r.log.Error("machine failed to start; retrying", "version", p.Version, "err", err, "retry_in", backoff)
				r.setStatus(func(st *fleet.MachineStatus) {
					*st = fleet.MachineStatus{Version: p.Version, Phase: fleet.PhaseFailed, Error: err.Error()}
				})
			default:
				failures = 0
				r.a.metrics.starts.WithLabelValues("ok").Inc()
			}
		}

		var ended, fenced <-chan struct{}
		if inst != nil {
			ended, fenced = inst.m.Done(), inst.fenced()
		}
		var retry <-chan time.Time
		var timer *time.Timer
		if inst == nil && p.RunsOn(self) && p.Version > finished {
			timer = time.NewTimer(max(retryAt.Sub(r.a.cfg.Now()), 0))
			retry = timer.C
		}
		select {
		case <-ctx.Done():
		case <-r.wake:
		case <-ended:
		case <-fenced:
		case <-retry:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			if inst != nil {
				r.stopInstance(inst, "agent stopping")
			}
			return
		}
	}
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

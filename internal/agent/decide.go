package agent

import (
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
)

// The runner's decisions, pure: what it remembers and what it sees in, what
// to do out. runner.run performs the effects (stop, ack, start, wait) and
// feeds the outcomes back; these functions touch no clock, store or
// goroutine, so every transition is table-tested.

// runState is what a runner remembers between steps.
type runState struct {
	finished uint64    // newest version whose instance ended by itself: not restarted
	acked    uint64    // newest version acked (or given up on)
	failures int       // consecutive failed starts
	retryAt  time.Time // no start before this (backoff after a failure)
}

// runInst is what the runner sees of the instance running here.
type runInst struct {
	version uint64
	spec    *fleet.Spec
	ended   bool // the workload ended by itself, or another host fenced the volume
}

// runObs is what the runner sees at one step.
type runObs struct {
	self     string
	p        *fleet.Placement // newest placement; nil if none yet
	inst     *runInst         // nil if nothing runs here
	reported bool             // the heartbeat reports this machine
	now      time.Time
	stopping bool // the agent is shutting down
}

// runPlan is what the runner does at one step, in this order.
type runPlan struct {
	stop        string // stop the instance, for this reason ("" = keep it)
	adopt       bool   // keep the instance, relabelled with the placement's version
	ack         bool   // write the stop ack for the placement's version
	clearStatus bool   // stop reporting the machine
	start       bool   // start the placement here
}

// decideRun is one step of the runner: stop what must not run here, tell
// the new host we let go, forget a machine no longer placed here, start
// what should run here.
func decideRun(st runState, o runObs) (runState, runPlan) {
	var do runPlan
	p, inst := o.p, o.inst
	switch {
	case inst != nil && inst.ended:
		do.stop = "ended"
		st.finished = inst.version
	case inst != nil && p != nil && p.Version != inst.version:
		if p.RunsOn(o.self) && p.Spec.Equal(inst.spec) {
			do.adopt = true // e.g. moved away and back before we noticed
		} else {
			do.stop = p.Reason
		}
	}
	running := inst != nil && do.stop == ""
	if !running && p != nil && !p.RunsOn(o.self) {
		if p.From == o.self && st.acked < p.Version {
			do.ack = true
			st.acked = p.Version // tried once: the new host's bounded wait covers a failure
		}
		st.failures, st.retryAt = 0, time.Time{}
		// Report only machines placed here (stopped ones included).
		do.clearStatus = (p.Host != o.self || p.State == fleet.Deleted) && o.reported
	}
	do.start = !running && st.wantsStart(p, o.self) && !o.now.Before(st.retryAt) && !o.stopping
	return st, do
}

// wantsStart: p should run here and has not ended here by itself.
func (st runState) wantsStart(p *fleet.Placement, self string) bool {
	return p.RunsOn(self) && p.Version > st.finished
}

// retryIn is how long to wait before the next start attempt, if the
// runner should wake up for one (nothing runs here but should).
func (st runState) retryIn(p *fleet.Placement, self string, running bool, now time.Time) (time.Duration, bool) {
	if running || !st.wantsStart(p, self) {
		return 0, false
	}
	return max(st.retryAt.Sub(now), 0), true
}

// startFailed records a failed start: retry after an exponential backoff
// (1 s doubling, at most 30 s).
func (st runState) startFailed(now time.Time) (runState, time.Duration) {
	st.failures++
	backoff := min(time.Duration(1<<min(st.failures-1, 5))*time.Second, 30*time.Second)
	st.retryAt = now.Add(backoff)
	return st, backoff
}

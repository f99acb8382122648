package fleet

import (
	"fmt"
	"sort"
	"time"
)

// The functions in this file are pure: they decide from their arguments
// and never do I/O or read a clock.

// NextRun builds the placement that creates machine name: version 1, or
// the version after a removed machine's last one.
func NextRun(cur *Placement, name string, spec Spec, host string, now time.Time) (*Placement, error) {
	if cur != nil && cur.State != Deleted {
		return nil, fmt.Errorf("%w: %q (version %d, %s on %s)", ErrMachineExists, name, cur.Version, cur.State, cur.Host)
	}
	v := uint64(1)
	if cur != nil {
		v = cur.Version + 1
	}
	return &Placement{Name: name, Version: v, Spec: spec, Host: host, State: Running, Reason: ReasonRun, Time: now.UTC()}, nil
}

// next copies cur as the following version.
func next(cur *Placement, reason string, now time.Time) *Placement {
	p := *cur
	p.Version = cur.Version + 1
	p.Reason = reason
	p.Time = now.UTC()
	p.From = ""
	p.By, p.Nonce = "", ""
	return &p
}

func exists(cur *Placement, name string) error {
	if cur == nil || cur.State == Deleted {
		return fmt.Errorf("%w: %q", ErrNoMachine, name)
	}
	return nil
}

// NextStop builds the version that stops the machine (it stays placed on
// its host). ErrNoChange if it is already stopped.
func NextStop(cur *Placement, name string, now time.Time) (*Placement, error) {
	if err := exists(cur, name); err != nil {
		return nil, err
	}
	if cur.State == Stopped {
		return nil, ErrNoChange
	}
	p := next(cur, ReasonStop, now)
	p.State = Stopped
	return p, nil
}

// NextStart builds the version that starts a stopped machine, on host (""
// keeps its host). ErrNoChange if it is already running there.
func NextStart(cur *Placement, name, host string, now time.Time) (*Placement, error) {
	if err := exists(cur, name); err != nil {
		return nil, err
	}
	if host == "" {
		host = cur.Host
	}
	if cur.State == Running && cur.Host == host {
		return nil, ErrNoChange
	}
	p := next(cur, ReasonStart, now)
	if cur.State == Running && cur.Host != host {
		p.From = cur.Host
	}
	p.State, p.Host = Running, host
	return p, nil
}

// NextRestart builds a new version of a running machine on the same host,
// so its host runs it again after it exited by itself (a host does not
// restart a version whose workload ended).
func NextRestart(cur *Placement, name string, now time.Time) (*Placement, error) {
	if err := exists(cur, name); err != nil {
		return nil, err
	}
	if cur.State != Running {
		return nil, fmt.Errorf("%w: %q is %s, not running", ErrNoChange, name, cur.State)
	}
	return next(cur, ReasonStart, now), nil
}

// NextRemove builds the version that deletes the machine. The placement
// history stays; a later NextRun may reuse the name.
func NextRemove(cur *Placement, name string, now time.Time) (*Placement, error) {
	if err := exists(cur, name); err != nil {
		return nil, err
	}
	p := next(cur, ReasonRemove, now)
	p.State = Deleted
	if cur.State == Running {
		p.From = cur.Host
	}
	return p, nil
}

// NextMove builds the version that moves the machine to host, keeping its
// state (a stopped machine just changes the host it starts on).
// ReasonFailover presumes the old host dead: nobody waits for its ack.
// ErrNoChange if the machine is already there.
func NextMove(cur *Placement, name, host, reason string, now time.Time) (*Placement, error) {
	if err := exists(cur, name); err != nil {
		return nil, err
	}
	if cur.Host == host {
		return nil, ErrNoChange
	}
	p := next(cur, reason, now)
	p.Host = host
	if cur.State == Running && reason != ReasonFailover {
		p.From = cur.Host
	}
	return p, nil
}

// Latest keeps, for every machine, the placement with the highest
// version.
func Latest(ps []*Placement) map[string]*Placement {
	out := make(map[string]*Placement, len(ps))
	for _, p := range ps {
		if cur, ok := out[p.Name]; !ok || p.Version > cur.Version {
			out[p.Name] = p
		}
	}
	return out
}

// Load counts, per host, the machines the placements want running there.
func Load(placements map[string]*Placement) map[string]int {
	load := map[string]int{}
	for _, p := range placements {
		if p.State == Running {
			load[p.Host]++
		}
	}
	return load
}

// LeastLoaded returns the candidate with the fewest machines in load; ties
// go to the smallest id. False if there is no candidate.
func LeastLoaded(candidates []string, load map[string]int) (string, bool) {
	best, found := "", false
	for _, h := range candidates {
		if !found || load[h] < load[best] || (load[h] == load[best] && h < best) {
			best, found = h, true
		}
	}
	return best, found
}

// Move is a planned change of a machine's host.
type Move struct {
	Name string
	// Version is the placement version the move was planned from.
	Version  uint64
	From, To string
}

// FailoverMoves plans where each machine that should run on a dead host
// goes: to the least loaded of candidates (live, not draining), counting
// the moves already planned. Machines are taken in name order; if there is
// no candidate, nothing moves.
func FailoverMoves(placements map[string]*Placement, dead func(host string) bool, candidates []string) []Move {
	return plan(placements, candidates, Load(placements), func(p *Placement) bool { return p.State == Running && dead(p.Host) })
}

// FailoverMovesLoaded is FailoverMoves for a caller that sees only some
// of the fleet's placements (a dead host's) and knows the candidates'
// load otherwise (from their heartbeats). load is not modified.
func FailoverMovesLoaded(placements map[string]*Placement, dead func(host string) bool, candidates []string, load map[string]int) []Move {
	l := make(map[string]int, len(load))
	for h, n := range load {
		l[h] = n
	}
	return plan(placements, candidates, l, func(p *Placement) bool { return p.State == Running && dead(p.Host) })
}

// DrainMoves plans where each machine placed on host (running or stopped)
// goes: to the least loaded of candidates, which must not include host.
// Machines that find no candidate are left out.
func DrainMoves(placements map[string]*Placement, host string, candidates []string) []Move {
	return plan(placements, candidates, Load(placements), func(p *Placement) bool { return p.State != Deleted && p.Host == host })
}

func plan(placements map[string]*Placement, candidates []string, load map[string]int, want func(*Placement) bool) []Move {
	names := make([]string, 0, len(placements))
	for n, p := range placements {
		if want(p) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var moves []Move
	for _, n := range names {
		p := placements[n]
		to, ok := LeastLoaded(candidates, load)
		if !ok {
			break
		}
		moves = append(moves, Move{Name: n, Version: p.Version, From: p.Host, To: to})
		if p.State == Running {
			load[to]++
			load[p.Host]--
		}
	}
	return moves
}

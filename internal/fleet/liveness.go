package fleet

import (
	"maps"
	"slices"
	"sort"
	"time"
)

// HostState is what an observer concludes about a host.
type HostState int

// Host states.
const (
	// HostUnknown: no heartbeat of the host was ever seen.
	HostUnknown HostState = iota
	// HostLive: its heartbeat changed within the timeout.
	HostLive
	// HostDead: its heartbeat has not changed for the timeout, or the
	// agent said it stopped.
	HostDead
)

func (s HostState) String() string {
	switch s {
	case HostLive:
		return "live"
	case HostDead:
		return "dead"
	}
	return "unknown"
}

// Liveness tracks heartbeats as one observer sees them, by the observer's
// own clock, so it is immune to clock skew between hosts. It is pure: the
// caller passes the time. Not safe for concurrent use.
//
// A host is dead when its heartbeat (Seq, Started) has not changed for
// Timeout of observation, or its last heartbeat says Down. Observation
// must be continuous: if the observer's rounds are further apart than
// half the timeout (it was paused, e.g. SIGSTOPped, or starved), it forgets
// how long it has watched and starts over, so a resumed observer never
// declares live hosts dead because of its own pause.
type Liveness struct {
	timeout time.Duration
	// leased: a host is dead by its Down mark alone (Leased).
	leased bool
	last   time.Time // time of the last Observe
	hosts  map[string]*observed
}

type observed struct {
	hb *Heartbeat
	// since is when this observer first saw hb's (Seq, Started).
	since time.Time
}

// NewLiveness returns a tracker declaring hosts dead after timeout.
func NewLiveness(timeout time.Duration) *Liveness {
	return &Liveness{timeout: timeout, hosts: map[string]*observed{}}
}

// NewLeasedLiveness returns a tracker for a Leased coordination service:
// a host is dead when its heartbeat reads Down (its lease expired or its
// agent stopped), however long its heartbeat stays unchanged.
func NewLeasedLiveness(timeout time.Duration) *Liveness {
	l := NewLiveness(timeout)
	l.leased = true
	return l
}

// Timeout returns the tracker's timeout.
func (l *Liveness) Timeout() time.Duration { return l.timeout }

// Observe records one complete read of every heartbeat at time now. Hosts
// whose heartbeat object is gone are forgotten.
func (l *Liveness) Observe(now time.Time, hbs []*Heartbeat) {
	gap := !l.last.IsZero() && now.Sub(l.last) > l.timeout/2
	l.last = now
	seen := make(map[string]bool, len(hbs))
	for _, hb := range hbs {
		seen[hb.Host] = true
		o, ok := l.hosts[hb.Host]
		switch {
		case !ok:
			l.hosts[hb.Host] = &observed{hb: hb, since: now}
		case o.hb.Seq != hb.Seq || !o.hb.Started.Equal(hb.Started):
			o.hb, o.since = hb, now
		default:
			o.hb = hb
		}
	}
	for h, o := range l.hosts {
		if !seen[h] {
			delete(l.hosts, h)
		} else if gap {
			o.since = now
		}
	}
}

// State returns the host's state at now.
func (l *Liveness) State(host string, now time.Time) HostState {
	o, ok := l.hosts[host]
	switch {
	case !ok:
		return HostUnknown
	case o.hb.Down || (!l.leased && now.Sub(o.since) > l.timeout):
		return HostDead
	}
	return HostLive
}

// Heartbeat returns the host's last observed heartbeat, or nil.
func (l *Liveness) Heartbeat(host string) *Heartbeat {
	if o, ok := l.hosts[host]; ok {
		return o.hb
	}
	return nil
}

// Hosts returns every observed host, sorted.
func (l *Liveness) Hosts() []string { return slices.Sorted(maps.Keys(l.hosts)) }

// AgeState judges a heartbeat by its age at now: dead if it is Down or
// older than its own Timeout (or defaultTimeout when it names none). For
// one-shot readers; it trusts the clocks of the agent and the reader to
// agree within a fraction of the timeout.
func AgeState(h *Heartbeat, now time.Time, defaultTimeout time.Duration) HostState {
	return ageState(h, now, defaultTimeout, false)
}

// ageState is AgeState, or with leased (Leased) the Down mark alone.
func ageState(h *Heartbeat, now time.Time, defaultTimeout time.Duration, leased bool) HostState {
	switch {
	case h == nil:
		return HostUnknown
	case leased && h.Down:
		return HostDead
	case leased:
		return HostLive
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	if h.Down || now.Sub(h.Time) > timeout {
		return HostDead
	}
	return HostLive
}

// WatchSet is the peers self watches for failure, on a ring of the member
// ids in sorted order: its successors, until k of them are not dead, and
// every dead one met on the way. So each host is watched by its k nearest
// live predecessors, and a dead host by its nearest live predecessor
// however many of the hosts between them died too (that predecessor
// reaches it one detection after the other, or at once when fewer than k
// died in a row). members need not be sorted nor hold self. Pure.
func WatchSet(members []string, self string, k int, dead func(host string) bool) []string {
	ring := make([]string, 0, len(members))
	for _, h := range members {
		if h != self {
			ring = append(ring, h)
		}
	}
	sort.Strings(ring)
	ring = slices.Compact(ring)
	start := sort.SearchStrings(ring, self) // first id after self
	var out []string
	live := 0
	for i := 0; i < len(ring) && live < k; i++ {
		h := ring[(start+i)%len(ring)]
		out = append(out, h)
		if !dead(h) {
			live++
		}
	}
	return out
}

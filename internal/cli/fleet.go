package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/agent"
	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/units"
)

// fleetCmd is an open fleet for one command.
type fleetCmd struct {
	g     *globals
	fleet fleet.Coord
	store io.Closer // the fleet store or etcd client, closed with the command
	ops   *fleet.Ops
	token string
	http  *http.Client // for agents' TCP APIs (trusts --tls-ca)
}

func openFleetCmd(ctx context.Context, g *globals, o *fleetFlags) (*fleetCmd, error) {
	f, closer, _, err := o.open(ctx, g, "", 0)
	if err != nil {
		return nil, err
	}
	token, err := o.token(g.log)
	if err != nil {
		closer.Close()
		return nil, err
	}
	hc, err := o.httpClient()
	if err != nil {
		closer.Close()
		return nil, err
	}
	return &fleetCmd{g: g, fleet: f, store: closer, token: token, http: hc,
		ops: &fleet.Ops{Fleet: f, By: "cli", ResolveVolume: agent.ResolveVolume}}, nil
}

func (fc *fleetCmd) close() { fc.store.Close() }

// withFleet opens the fleet o names for the duration of fn.
func withFleet(ctx context.Context, g *globals, o *fleetFlags, fn func(fc *fleetCmd) error) error {
	fc, err := openFleetCmd(ctx, g, o)
	if err != nil {
		return err
	}
	defer fc.close()
	return fn(fc)
}

// withFleetView reads the fleet's current view (heartbeats, drain marks,
// placements) for fn.
func withFleetView(ctx context.Context, g *globals, o *fleetFlags, fn func(v *fleet.View) error) error {
	return withFleet(ctx, g, o, func(fc *fleetCmd) error {
		v, err := fc.ops.View(ctx)
		if err != nil {
			return err
		}
		return fn(v)
	})
}

// nudge asks the agents of hosts to reconcile now (if we have the token);
// without it they notice within a reconcile interval.
func (fc *fleetCmd) nudge(ctx context.Context, hosts ...string) {
	if fc.token == "" {
		fc.g.log.Debug("no API token: agents will notice the change within their reconcile interval")
		return
	}
	for _, h := range hosts {
		if h == "" {
			continue
		}
		hb, err := fc.fleet.Heartbeat(ctx, h)
		if err != nil {
			fc.g.log.Debug("nudge: read heartbeat", "host", h, "err", err)
			continue
		}
		if hb != nil && hb.API != "" && !hb.Down {
			nctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := (&agent.Client{BaseURL: hb.API, Token: fc.token, HTTP: fc.http}).Reconcile(nctx); err != nil {
				fc.g.log.Warn("could not ask the agent to act now; it will within its reconcile interval", "host", h, "err", err)
			}
			cancel()
		}
	}
}

// pollEvery is how often the CLI looks at heartbeats while waiting.
const pollEvery = 100 * time.Millisecond

// waitRunning waits until p's host reports the machine running (at p's
// version or later) and serving I/O, then prints its status line. A newer
// placement that moved the machine elsewhere ends the wait too.
func (fc *fleetCmd) waitRunning(ctx context.Context, out io.Writer, p *fleet.Placement, wait time.Duration) error {
	st, err := fc.awaitRunning(ctx, p, wait)
	if err != nil {
		return err
	}
	printf(out, "machine %s: %s on %s\n", p.Name, describeRun(st), p.Host)
	return nil
}

// awaitRunning is waitRunning without the printing.
func (fc *fleetCmd) awaitRunning(ctx context.Context, p *fleet.Placement, wait time.Duration) (fleet.MachineStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last fleet.MachineStatus
	var lastErr error
	for {
		hb, err := fc.fleet.Heartbeat(ctx, p.Host)
		lastErr = err
		if st, ok := hostMachine(hb, p.Name); ok && st.Version >= p.Version {
			last = st
			switch st.Phase {
			case fleet.PhaseRunning:
				if !st.FirstIO.IsZero() {
					return st, nil
				}
			case fleet.PhaseExited:
				return st, nil
			case fleet.PhaseFailed:
				return st, fmt.Errorf("machine %s failed to start on %s: %s", p.Name, p.Host, st.Error)
			case fleet.PhaseFenced:
				return st, fmt.Errorf("machine %s on %s was fenced by another host", p.Name, p.Host)
			}
		}
		if cur, err := fc.fleet.Latest(ctx, p.Name); err == nil && cur != nil && cur.Version > p.Version && cur.Host != p.Host {
			return last, fmt.Errorf("machine %s moved on meanwhile: version %d (%s) places it on %s", p.Name, cur.Version, cur.Reason, cur.Host)
		}
		select {
		case <-ctx.Done():
			if last.Phase == fleet.PhaseRunning {
				return last, nil // running, but it has not done any I/O yet
			}
			what := "nothing yet"
			if last.Phase != "" {
				what = describeRun(last)
			}
			if lastErr != nil {
				what += fmt.Sprintf(" (reading heartbeats: %v)", lastErr)
			}
			return last, fmt.Errorf("machine %s not running on %s after %v; last reported: %s", p.Name, p.Host, wait, what)
		case <-time.After(pollEvery):
		}
	}
}

// hostMachine is the status hb reports for machine name; false if hb is
// nil or does not report it.
func hostMachine(hb *fleet.Heartbeat, name string) (fleet.MachineStatus, bool) {
	if hb == nil {
		return fleet.MachineStatus{}, false
	}
	return hb.Machine(name)
}

// waitStopped waits until p's host no longer runs the machine.
func (fc *fleetCmd) waitStopped(ctx context.Context, out io.Writer, p *fleet.Placement, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	active := map[fleet.Phase]bool{fleet.PhaseWaiting: true, fleet.PhaseStarting: true, fleet.PhaseRunning: true, fleet.PhaseStopping: true}
	for {
		done := false
		if hbs, err := fc.fleet.Heartbeats(ctx); err == nil {
			done = true
			now := time.Now()
			for _, hb := range hbs {
				if fleet.AgeState(hb, now, 10*time.Second) != fleet.HostLive {
					continue // a dead host runs nothing that can write: its volume is fenced on the next attach
				}
				if st, ok := hb.Machine(p.Name); ok && active[st.Phase] {
					done = false
				}
			}
		}
		if done {
			printf(out, "machine %s: %s\n", p.Name, p.State)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("machine %s still active after %v", p.Name, wait)
		case <-time.After(pollEvery):
		}
	}
}

// fleetChange builds a command that changes the fleet and then waits up
// to --wait (default wait, described by waitHelp) for the hosts to act on
// it: drain, migrate and machine stop, start and rm.
func fleetChange(g *globals, use, short string, args cobra.PositionalArgs, wait time.Duration, waitHelp string,
	run func(ctx context.Context, fc *fleetCmd, out io.Writer, args []string, wait time.Duration) error) *cobra.Command {
	o := &fleetFlags{}
	waitFlag := wait
	cmd := command(use, short, args, func(ctx context.Context, out io.Writer, args []string) error {
		return withFleet(ctx, g, o, func(fc *fleetCmd) error {
			return run(ctx, fc, out, args, waitFlag)
		})
	})
	o.register(cmd.Flags(), true)
	cmd.Flags().DurationVar(&waitFlag, "wait", wait, waitHelp)
	return cmd
}

func newDrainCommand(g *globals) *cobra.Command {
	cmd := fleetChange(g, "drain HOST", "Move every machine off a host to the least loaded live hosts, and report each one's downtime",
		exactArgs(1, "a HOST"), 5*time.Minute, "wait this long for each machine to run on its new host (0: do not wait)",
		func(ctx context.Context, fc *fleetCmd, out io.Writer, args []string, wait time.Duration) error {
			return runDrain(ctx, fc, out, args[0], wait)
		})
	cmd.Long = `Mark HOST draining (nothing is placed there any more, until ` + "`urldisk undrain`" + `)
and move every machine placed on it to the least loaded live hosts. Waits for
each running machine to serve its first request on its new host and prints
how long it was down (old stop → new first I/O).`
	return cmd
}

// runDrain marks host draining, moves its machines and reports each: where
// it went and, waiting up to wait for it to run there, its downtime. The
// machines that could not be moved are the error.
func runDrain(ctx context.Context, fc *fleetCmd, out io.Writer, host string, wait time.Duration) error {
	res, err := fc.ops.Drain(ctx, host)
	if err != nil {
		return fmt.Errorf("drain %s: %w", host, err)
	}
	printf(out, "draining %s: %d machine(s) to move\n", host, len(res))
	for _, r := range res {
		if r.Placement != nil {
			fc.nudge(ctx, r.Placement.Host, r.Placement.From)
		}
	}
	var errs []error
	for _, r := range res {
		switch {
		case r.Err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", r.Name, r.Err))
			printf(out, "%s\t%s → ?\tNOT MOVED: %v\n", r.Name, r.From, r.Err)
		case r.Placement == nil:
			printf(out, "%s\tmoved or removed meanwhile\n", r.Name)
		case r.Placement.State != fleet.Running || wait <= 0:
			printf(out, "%s\t%s → %s\t%s\n", r.Name, r.From, r.To, r.Placement.State)
		default:
			st, err := fc.awaitRunning(ctx, r.Placement, wait)
			if err != nil {
				errs = append(errs, err)
				printf(out, "%s\t%s → %s\t%v\n", r.Name, r.From, r.To, err)
				continue
			}
			printf(out, "%s\t%s → %s\t%s\n", r.Name, r.From, r.To, describeRun(st))
		}
	}
	return errors.Join(errs...)
}

func newUndrainCommand(g *globals) *cobra.Command {
	o := &fleetFlags{}
	cmd := command("undrain HOST", "Let machines be placed on a drained host again",
		exactArgs(1, "a HOST"), func(ctx context.Context, out io.Writer, args []string) error {
			return withFleet(ctx, g, o, func(fc *fleetCmd) error {
				if err := fc.fleet.SetDraining(ctx, args[0], false); err != nil {
					return err
				}
				printf(out, "%s accepts machines again\n", args[0])
				return nil
			})
		})
	o.register(cmd.Flags(), false)
	return cmd
}

// fleetListing builds the commands that list the fleet (hosts, machine
// ls): read its current view and print it, as a table or with --json as
// JSON.
func fleetListing(g *globals, use, short string, print func(out io.Writer, v *fleet.View, asJSON bool) error) *cobra.Command {
	o := &fleetFlags{}
	var asJSON bool
	cmd := command(use, short, exactArgs(0, "no arguments"), func(ctx context.Context, out io.Writer, _ []string) error {
		return withFleetView(ctx, g, o, func(v *fleet.View) error {
			return print(out, v, asJSON)
		})
	})
	o.register(cmd.Flags(), false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newHostsCommand(g *globals) *cobra.Command {
	cmd := fleetListing(g, "hosts", "List the fleet's hosts: live/dead/draining, machines, cache use and hit rate", printHosts)
	cmd.Long = `List every agent that heartbeats in the fleet. A host is dead when its last
heartbeat is older than its heartbeat timeout (judged by this machine's
clock) or its agent stopped.`
	return cmd
}

// hostRow is one host as `urldisk hosts` lists it.
type hostRow struct {
	Host     string           `json:"host"`
	State    string           `json:"state"`
	Draining bool             `json:"draining"`
	Running  int              `json:"running"`
	Placed   int              `json:"placed"`
	Cache    fleet.CacheStats `json:"cache"`
	HitRate  float64          `json:"hit_rate"`
	LastBeat time.Time        `json:"last_heartbeat"`
	API      string           `json:"api"`
	Fenced   uint64           `json:"fenced"`
}

// hostRows lists every host of v, sorted: those that heartbeat, and
// drained ones that never did (state unknown).
func hostRows(v *fleet.View) []hostRow {
	load := fleet.Load(v.Placements)
	var rows []hostRow
	for _, h := range v.Hosts() {
		hb := v.Heartbeats[h]
		st := v.State(h).String()
		if hb.Down {
			st = "dead (stopped)"
		}
		rows = append(rows, hostRow{Host: h, State: st, Draining: v.Draining[h], Running: hb.Running(), Placed: load[h],
			Cache: hb.Cache, HitRate: hb.Cache.HitRate(), LastBeat: hb.Time, API: hb.API, Fenced: hb.Fenced})
	}
	for h := range v.Draining {
		if _, ok := v.Heartbeats[h]; !ok {
			rows = append(rows, hostRow{Host: h, State: "unknown", Draining: true})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Host < rows[j].Host })
	return rows
}

// printHosts prints v's hosts as JSON or a table; heartbeat ages are
// judged at v.Now.
func printHosts(w io.Writer, v *fleet.View, asJSON bool) error {
	return printListing(w, asJSON, hostRows(v), "HOST\tSTATE\tMACHINES\tCACHE\tHIT RATE\tLAST HEARTBEAT\tAPI", func(r hostRow) string {
		state := r.State
		if r.Draining {
			state = strings.TrimPrefix(state+",draining", "live,")
		}
		age := "-"
		if !r.LastBeat.IsZero() {
			age = v.Now.Sub(r.LastBeat).Round(time.Millisecond).String() + " ago"
		}
		running := fmt.Sprintf("%d running", r.Running)
		if r.State != "live" {
			running += " at last report"
		}
		return fmt.Sprintf("%s\t%s\t%s, %d placed\t%s / %s\t%.1f%% (%d hits, %d misses)\t%s\t%s",
			r.Host, state, running, r.Placed,
			units.FormatSize(uint64(r.Cache.Bytes)), units.FormatSize(uint64(r.Cache.Capacity)),
			100*r.HitRate, r.Cache.Hits, r.Cache.Misses, age, orDash(r.API))
	})
}

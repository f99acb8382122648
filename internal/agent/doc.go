// Package agent is urldisk's per-host daemon (DESIGN.md §9): it
// heartbeats into the fleet store, runs the machines placed on its host
// (attach the volume read-write, export it over NBD on a unix socket,
// start the workload with package runtime), moves them when their
// placement changes, fails over the machines of dead hosts, and serves a
// token-protected HTTP API and Prometheus metrics.
//
// Goroutines and their owners: Run owns the API server, the heartbeat loop
// and the reconcile loop; the reconcile loop creates one runner goroutine
// per machine that concerns this host (Run waits for them); each running
// machine's instance owns its NBD Serve goroutine and its prefetch
// goroutine, and its workload.Machine owns the child's waiter. Run stops
// them all in that order when its context ends, then writes a last
// heartbeat marked down.
//
// Moves follow the protocol in package fleet: the old host stops the
// machine (the workload, then the export, then Volume.Close, which
// flushes) and creates the ack of the new version; the new host waits for
// that ack (at most StopWait, and not at all for a dead host) and attaches,
// which fences the old writer in any case. Downtime is measured from the
// old host's stop to the first request served here.
package agent

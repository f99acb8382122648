// Package fleet is the fleet state urldisk agents share through the object
// store (DESIGN.md §9): no other database. Everything lives under "fleet/"
// in the fleet store (usually the pool's own URL):
//
//	fleet/agents/<host>                      heartbeat: overwritten every interval
//	fleet/machines/<name>/<version:016x>     placement versions: created if-absent, never rewritten
//	fleet/acks/<name>/<version:016x>         "the previous host has stopped it": created if-absent
//	fleet/drain/<host>                       present while the host is draining
//	fleet/traces/<name>                      pages the machine used recently (cache prefetch on move)
//
// Every object is a checksummed JSON document in format's envelope
// (format.EncodeDoc) with the kinds below.
//
// # Placements
//
// A machine's desired state (spec, host, running/stopped/deleted) is the
// placement with the highest version. A change writes version N+1 with
// create-if-absent, so of two concurrent movers exactly one wins; the loser
// reads the new truth and decides again (Fleet.Update). A random nonce in
// every placement tells a writer whose create response was lost that the
// object is its own.
//
// # Moves
//
// A move (migrate, drain, start elsewhere) sets From to the host that was
// running the machine. That host stops it (flush and detach) and creates the
// ack of the new version; the new host waits for that ack (bounded) and then
// attaches. Safety never rests on the wait: the new host's read-write attach
// fences the old writer whatever happens. Failover (the old host missed its
// heartbeats) leaves From empty: nobody waits for a dead host.
//
// # Liveness
//
// Liveness is judged by each observer with its own clock (Liveness): a host
// is dead when its heartbeat has not changed for the timeout while the
// observer was watching. An observer that was itself paused forgets what it
// saw, so a resumed agent does not declare everybody else dead. One-shot
// readers (the CLI) judge by the heartbeat's age instead (AgeState), which
// assumes roughly synchronised clocks.
//
// The decisions (NextRun, NextMove, FailoverMoves, LeastLoaded, Liveness)
// are pure functions of their inputs; Fleet and Ops do the I/O.
package fleet

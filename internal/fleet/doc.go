// Package fleet is the fleet state urldisk agents share. Agents and the CLI
// reach it through one interface, Coord; Fleet implements it over the object
// store (DESIGN.md §9), with no other database. Everything lives under
// "fleet/" in the fleet store (usually the pool's own URL):
//
//	fleet/agents/<host>                       heartbeat: overwritten every interval
//	fleet/machines/<name>/<version:016x>      placement versions: created if-absent, never
//	                                          rewritten; the newest KeepVersions (32) kept
//	fleet/acks/<name>/<version:016x>          "the previous host has stopped it": created
//	                                          if-absent, pruned with its version
//	fleet/assign/<host>/<name>/<version:016x> index: this version concerns host (empty)
//	fleet/drain/<host>                        present while the host is draining
//	fleet/traces/<name>                       pages the machine used recently (cache prefetch on move)
//
// Every document is a checksummed JSON document in format's envelope
// (format.EncodeDoc) with the kinds below.
//
// # Cost per host
//
// A host's round (Member.Round, every interval) costs a bounded number of
// store requests whatever the fleet's size: its heartbeat (one PUT), its
// watched peers' heartbeats (one conditional GET each: 304 while unchanged),
// its assignment index (one LIST; a GET only for a placement version it has
// not read), and every MembershipEvery the host list and drain marks (two
// LISTs). A resync of its index from every placement runs at its first
// round and every ResyncEvery; failover, moves and acks cost requests when
// they happen. The placements themselves stay the truth: the index only
// says where to look.
//
// # Assignment index
//
// Before a placement version is created, its writer adds it to the index of
// every host it concerns (its host, the previous version's host, From), so
// a host finds every version that concerns it by listing its own index. A
// writer that loses the version, or dies before creating it, leaves entries
// naming a version that is someone else's or absent: readers resolve them
// from the placement itself and the next writer of that version. A host
// drops entries of older versions, and a machine that left it after
// ForgetAfter.
//
// # Watching peers
//
// Each host watches the peers WatchSet names on the ring of host ids: its
// successors until Peers (default 3) of them are not dead, and every dead
// one met on the way. A dead host is therefore watched by its nearest live
// predecessor however many hosts between them died too (each further one
// is reached a detection after the previous), and each live host by its 3
// nearest live predecessors. Every watcher of a dead host fails its
// machines over; the compare-and-swap on the version decides which move
// wins.
//
// A Coord that is a Scheduler (etcdcoord: an etcd election on a session
// lease) replaces this race by one elected host: only it fails over, and it
// reads every host's liveness in one request per round. A scheduler that
// dies is replaced within its lease's TTL. The compare-and-swap still
// guards every move, and the volume's fence still guards every write, so
// two schedulers for a moment (a paused leader whose lease expired) can
// move a machine twice but never let two hosts write its volume.
//
// # Placements
//
// A machine's desired state (spec, host, running/stopped/deleted) is the
// placement with the highest version. A change writes version N+1 with
// create-if-absent (Coord.CompareAndSwap), so of two concurrent movers
// exactly one wins; the loser reads the new truth and decides again
// (Update). A random nonce in
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
// Liveness is judged by each observer with its own clock (Liveness), for
// the peers it watches: a host is dead when its heartbeat has not changed
// for the timeout while the observer was watching. An observer that was itself paused forgets what it
// saw, so a resumed agent does not declare everybody else dead. One-shot
// readers (the CLI) judge by the heartbeat's age instead (AgeState), which
// assumes roughly synchronised clocks. On a coordination service whose
// heartbeats carry a lease the service expires (Leased: etcd), the lease
// is the whole of liveness for both: a host is dead when its heartbeat
// reads Down.
//
// The decisions (NextRun, NextMove, FailoverMoves, LeastLoaded, Liveness,
// WatchSet) are pure functions of their inputs; Fleet, Member and Ops do the
// I/O, with injected clocks.
package fleet

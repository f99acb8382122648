#!/usr/bin/env bash
# fleetsim.sh — the fleet simulator (issue 12): in-process agents with a
# fake runtime, each on its own counting view of an etcd client shared by
# 25 hosts (a real 3-member cluster on loopback) or of a file:// object
# store, heartbeating every second with a 5 s timeout (etcd: lease TTL).
# Per run: coordination requests per host per second (steady), drain time
# of a host carrying DRAIN machines (drain call -> every machine seen by its new host),
# failover time p50/p99 (kill -> the new host sees the machine) after
# killing 1 host and 10% of hosts, rounds per host per interval (below
# 1: the simulator or the cluster did not keep up, the other figures are
# the saturated machine's), and the same for heartbeats (per interval
# p50/min over hosts, their latency p50/p99: late ones renew leases late).
# internal/fleet/etcdcoord BenchmarkFleetSim.
#
# Usage: flock /tmp/urldisk-bench.lock ./bench/fleetsim.sh
# Knobs: ETCD_HOSTS="10 100 1000" FILE_HOSTS="10 50" PER_HOST=10 DRAIN=100
set -euo pipefail
cd "$(dirname "$0")/.."
ETCD_HOSTS=${ETCD_HOSTS-"10 100 1000"}
FILE_HOSTS=${FILE_HOSTS-"10 50"}
PER_HOST=${PER_HOST:-10}
DRAIN=${DRAIN:-100}
go test -c -o /tmp/fleetsim.test ./internal/fleet/etcdcoord/
run() { # backend hosts
	local machines=$(($2 * PER_HOST))
	local drain=$DRAIN
	if ((drain > machines / 2)); then drain=$((machines / 2)); fi
	echo "== $1: $2 hosts, $machines machines, drain $drain"
	local out=/tmp/fleetsim-$1-$2.log
	# One size failing (a timeout, a saturated machine) must not cost the
	# others: report it with the end of its output and go on.
	if ! /tmp/fleetsim.test -test.run '^$' -test.bench BenchmarkFleetSim -test.benchtime 1x -test.timeout 30m \
		-fleetsim.backend "$1" -fleetsim.hosts "$2" -fleetsim.machines "$machines" -fleetsim.drain "$drain" >"$out" 2>&1; then
		echo "FAILED: $1 $2 hosts (full output: $out):"
		grep -v '^{' "$out" | tail -20
		failed+=("$1/$2")
		return
	fi
	grep -E 'BenchmarkFleetSim|fleetsim_bench_test' "$out" | grep -v '^{'
}
failed=()
for h in $FILE_HOSTS; do run file "$h"; done
for h in $ETCD_HOSTS; do run etcd "$h"; done
if ((${#failed[@]})); then
	echo "failed sizes: ${failed[*]}"
	exit 1
fi

#!/usr/bin/env bash
# floor.sh — the floor of issue 10's loopback 1M throughput targets.
#
# Issue 10 wants, on loopback (versitygw on the same machine), urldisk's
# cold 1M sequential read >= 0.7x raw parallel 4 MiB GET and 1M sequential
# write + final flush >= 0.8x raw parallel 4 MiB PUT. On a small machine
# fio, the NBD server and versitygw share the CPUs while bench/s3raw shares
# them only with versitygw, so the ratios may be out of reach for any NBD
# server that relays to S3. This script measures the least such a server
# must do: bench/relay (urldisk's NBD server and S3 client, 4 MiB objects,
# 8 PUTs in flight, whole-object GETs with readahead, nothing else), beside
# raw S3 and `urldisk serve`, each REPS times, one versitygw for all:
#   raw GET/PUT     s3raw 4 MiB GetObject/PutObject x8 (as cpu-account.sh)
#   relay write     fio 1M sequential write QD8 + end_fsync, SIZE bytes
#   relay read      fio 1M sequential read QD8 of those bytes, relay
#                   restarted (nothing in memory)
#   urldisk write   the same write through `urldisk serve`
#   urldisk read    the same read, serve restarted with an empty cache
# and prints medians of CPU-ms per MiB moved (utime+stime of versitygw, the
# server and the client) and MiB/s with its ratio to raw. MiB/s is fio's
# bandwidth (the suite's measure; bench/suite-report.py), s3raw's for raw.
#
# Usage: flock /tmp/urldisk-bench.lock ./bench/floor.sh
# Knobs: SIZE=512M REPS=3 RUNTIME=3 URLDISK_REV=HEAD|worktree URLDISK_BIN=...
#        WORKDIR=... KEEP=1 OUT=... (as in cpu-account.sh)
set -euo pipefail

SIZE=${SIZE:-512M}
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
OUT=${OUT:-$repo/bench/out/floor-$(date -u +%Y%m%dT%H%M%SZ)}
LOGTAG=floor
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

need_pkgs fio=fio nbdcopy=libnbd-bin python3=python3
check_fio_nbd
export PATH="$PATH:$(go env GOPATH)/bin"
command -v versitygw >/dev/null || go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
bytes=$(numfmt --from=iec "$SIZE") || die "SIZE=$SIZE: not a size"

WORKDIR=${WORKDIR:-$(mktemp -d /var/tmp/floor.XXXXXX)}
mkdir -p "$WORKDIR" "$OUT"
rl_pid=
cleanup() {
	stop_pid "$rl_pid" || true
	stop_pid "$ud_pid" || true
	stop_pid "$gw_pid" || true
	finish_workdir
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_urldisk
# The relay and s3raw come from the same revision as urldisk when it is
# built from git, so that all three share one NBD server and S3 client.
if [[ -d $WORKDIR/src/bench/relay && -z ${URLDISK_BIN:-} ]]; then
	(cd "$WORKDIR/src" && go build -o "$WORKDIR/relay" ./bench/relay && go build -o "$WORKDIR/s3raw" ./bench/s3raw)
else
	(cd "$repo" && go build -o "$WORKDIR/relay" ./bench/relay && go build -o "$WORKDIR/s3raw" ./bench/s3raw)
fi
export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1
unset AWS_CA_BUNDLE AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN
start_gw
load0=$(cut -d' ' -f1-3 /proc/loadavg)
log "urldisk $ud_rev; versitygw at $endpoint (pid $gw_pid); load $load0"

cache=$WORKDIR/cache
ud_sock=$WORKDIR/ud.sock
ud_url="s3://bench/floor/vol?$pool_q"
rl_sock=$WORKDIR/relay.sock
rl_url="s3://bench/floor/relay?$pool_q"
# The suite's jobs (bench/suite.sh seqwrite and seqread-cold), each capped
# at RUNTIME seconds.
write_args="--rw=write --bs=1M --iodepth=8 --end_fsync=1 --runtime=$RUNTIME"
read_args="--rw=read --bs=1M --iodepth=8 --runtime=$RUNTIME"
tck=$(getconf CLK_TCK)

start_relay() {
	: >"$WORKDIR/relay.out"
	"$WORKDIR/relay" -listen "unix:$rl_sock" -store "$rl_url" -size "$bytes" -name vol \
		>"$WORKDIR/relay.out" 2>>"$WORKDIR/relay.log" &
	rl_pid=$!
	wait_ready relay "$rl_pid" "$WORKDIR/relay.out" "$WORKDIR/relay.log" 300
}
stop_relay() {
	stop_server relay "$rl_pid" "$WORKDIR/relay.log"
	rl_pid=
}

# fio_account CASE REP SOCK PID ARGS...: one fio run through the server
# with pid PID on SOCK; appends "CASE REP bytes gw_ms server_ms fio_ms
# wall_s bw_bytes" to $OUT/accounts.txt.
fio_account() {
	local name=$1 rep=$2 sock=$3 pid=$4 g0 s0 g1 s1 t0 t1 f
	shift 4
	f=$OUT/${name// /-}.$rep.json
	g0=$(cpu_ticks "$gw_pid") s0=$(cpu_ticks "$pid") t0=$(date +%s%N)
	fio_cpu "$f" "nbd+unix:///vol?socket=$sock" --name="${name// /-}" "$@"
	t1=$(date +%s%N) g1=$(cpu_ticks "$gw_pid") s1=$(cpu_ticks "$pid")
	python3 - "$f" "$name" "$rep" "$fio_ms" $(((g1 - g0) * 1000 / tck)) $(((s1 - s0) * 1000 / tck)) $((t1 - t0)) "$bytes" \
		>>"$OUT/accounts.txt" <<'EOF'
import json, sys
f, name, rep, ms, gw, server, ns, size = sys.argv[1:]
job = json.load(open(f))["jobs"][0]
io = job["read" if name.endswith("read") else "write"]
if io["io_bytes"] < int(size):
    # A read past what the write reached would read zeros, which costs less.
    print(f"floor: {name} run {rep} moved {io['io_bytes']} of {size} bytes in the runtime", file=sys.stderr)
print(name.replace(" ", "_"), rep, io["io_bytes"], gw, server, ms, int(ns) / 1e9, io["bw_bytes"])
EOF
}

: >"$OUT/accounts.txt"
for ((rep = 1; rep <= REPS; rep++)); do
	log "run $rep/$REPS: raw S3 (s3raw -cpu-pid versitygw)"
	"$WORKDIR/s3raw" bench -endpoint "$endpoint" -bucket bench -prefix "raw-$rep/" -dur "${RUNTIME}s" -workers 8 \
		-cpu-pid "$gw_pid" >"$OUT/s3raw.$rep.json"

	log "run $rep/$REPS: relay write, then cold read"
	start_relay
	# shellcheck disable=SC2086 # word lists
	fio_account "relay write" "$rep" "$rl_sock" "$rl_pid" $write_args
	stop_relay
	start_relay
	# shellcheck disable=SC2086
	fio_account "relay read" "$rep" "$rl_sock" "$rl_pid" $read_args
	stop_relay

	log "run $rep/$REPS: urldisk write, then cold read"
	rm -rf "$cache"
	if ((rep == 1)); then start_urldisk --create --size "$bytes"; else start_urldisk; fi
	# shellcheck disable=SC2086
	fio_account "urldisk write" "$rep" "$ud_sock" "$ud_pid" $write_args
	stop_urldisk
	rm -rf "$cache"
	start_urldisk
	# shellcheck disable=SC2086
	fio_account "urldisk read" "$rep" "$ud_sock" "$ud_pid" $read_args
	stop_urldisk
done

{
	meta_common
	echo "versitygw=$(go version -m "$(command -v versitygw)" 2>/dev/null | awk '$1 == "mod" {print $3}')"
	echo "size=$SIZE reps=$REPS runtime=$RUNTIME"
	echo "load_start=$load0"
	echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/meta"
python3 - "$OUT" >"$OUT/report.md" <<'EOF'
import glob, json, statistics, sys
out = sys.argv[1]
MiB = 1 << 20
rows = {}  # case -> list of ({proc: CPU-ms per MiB}, MiB/s)
for f in sorted(glob.glob(out + "/s3raw.*.json")):
    r = json.load(open(f))
    for case, k in (("raw GET", "get4m"), ("raw PUT", "put4m")):
        mib = r[k + "_ops"] * 4
        rows.setdefault(case, []).append(
            ({"versitygw": r[k + "_peer_cpu_ms"] / mib, "client": r[k + "_self_cpu_ms"] / mib}, r[k + "_mbps"] * 1e6 / MiB))
for line in open(out + "/accounts.txt"):
    name, rep, moved, gw, server, fio, wall, bw = line.split()
    mib = int(moved) / MiB
    rows.setdefault(name.replace("_", " "), []).append(
        ({"versitygw": int(gw) / mib, "server": int(server) / mib, "client": int(fio) / mib}, int(bw) / MiB))
meta = dict(l.rstrip("\n").split("=", 1) for l in open(out + "/meta"))
print(f"CPU-ms per MiB moved and MiB/s, medians of {len(rows['raw GET'])} runs; {meta['nproc']} CPUs, "
      f"load {meta['load_start']} at start, {meta['load_end']} at end; urldisk {meta['urldisk']}\n")
print("| case | versitygw | server | client | total (min–max) | MiB/s (min–max) | ratio to raw |")
print("|---|---|---|---|---|---|---|")
raw = {}
for case in ("raw GET", "relay read", "urldisk read", "raw PUT", "relay write", "urldisk write"):
    runs = rows[case]
    med = {p: statistics.median(r[0].get(p, 0) for r in runs) for p in ("versitygw", "server", "client")}
    tots = [sum(r[0].values()) for r in runs]
    rates = [r[1] for r in runs]
    rate = statistics.median(rates)
    if case.startswith("raw"):
        raw[case.endswith("GET")] = rate
    ratio = rate / raw[case.endswith(("GET", "read"))]
    server = "—" if case.startswith("raw") else f"{med['server']:.2f}"
    print(f"| {case} | {med['versitygw']:.2f} | {server} | {med['client']:.2f} | "
          f"{statistics.median(tots):.2f} ({min(tots):.2f}–{max(tots):.2f}) | "
          f"{rate:.0f} ({min(rates):.0f}–{max(rates):.0f}) | {ratio:.2f}x |")
EOF
cat "$OUT/report.md"
log "report and raw results in $OUT"

#!/usr/bin/env bash
# cpu-account.sh — CPU per MiB moved on the suite's loopback profile (issue 10).
#
# On a small machine the suite's loopback throughput rows are CPU-bound:
# fio, `urldisk serve` and versitygw share the CPUs, while bench/s3raw
# measures raw S3 with only itself and versitygw running. Wall-clock ratios
# are then CPU-share ratios. This script measures what does not depend on
# the machine's load: CPU time (utime+stime) per MiB moved, per process, for
#   raw GET   s3raw 4 MiB GetObject x8      (versitygw, s3raw)
#   raw PUT   s3raw 4 MiB PutObject x8      (versitygw, s3raw)
#   seqread   fio 1M sequential read QD8 of the whole volume, cold (serve
#             restarted with an empty cache), through `urldisk serve`
#   seqwrite  fio 1M sequential write QD8 + final flush, through serve
#             (versitygw, serve, fio)
# with the same fio jobs and serve flags as bench/suite.sh, and the ceiling
# each total implies on NCPU CPUs: MiB/s = NCPU*1000 / (total CPU-ms per MiB).
#
# Other load on the machine slows every process alike but hardly changes
# the CPU each one spends per MiB: run it beside other work if need be.
#
# Usage: ./bench/cpu-account.sh
# Knobs: SIZE=512M REPS=3 RUNTIME=3 URLDISK_REV=HEAD|worktree URLDISK_BIN=...
#        WORKDIR=... KEEP=1 OUT=... (as in suite.sh)
set -euo pipefail

SIZE=${SIZE:-512M}
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
OUT=${OUT:-$repo/bench/out/cpu-account-$(date -u +%Y%m%dT%H%M%SZ)}
LOGTAG=cpu-account
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

need_pkgs fio=fio nbdcopy=libnbd-bin python3=python3
check_fio_nbd
export PATH="$PATH:$(go env GOPATH)/bin"
command -v versitygw >/dev/null || go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
bytes=$(numfmt --from=iec "$SIZE") || die "SIZE=$SIZE: not a size"

WORKDIR=${WORKDIR:-$(mktemp -d /var/tmp/cpu-account.XXXXXX)}
mkdir -p "$WORKDIR" "$OUT"
cleanup() {
	stop_pid "$ud_pid" || true
	stop_pid "$gw_pid" || true
	finish_workdir
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_urldisk
(cd "$repo" && go build -o "$WORKDIR/s3raw" ./bench/s3raw)
export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1
unset AWS_CA_BUNDLE AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN
start_gw
log "urldisk $ud_rev; versitygw at $endpoint (pid $gw_pid); load $(cut -d' ' -f1-3 /proc/loadavg)"

cache=$WORKDIR/cache
ud_sock=$WORKDIR/ud.sock
ud_url="s3://bench/cpu/vol?endpoint=$endpoint&region=us-east-1&use_path_style=true"
uri="nbd+unix:///vol?socket=$ud_sock"
# The suite's jobs (bench/suite.sh JOBARGS seqread-cold and seqwrite).
read_args="--rw=read --bs=1M --iodepth=8"
write_args="--rw=write --bs=1M --iodepth=8 --end_fsync=1 --runtime=$RUNTIME"
tck=$(getconf CLK_TCK)

# fio_account NAME REP ARGS...: one fio run through serve; appends
# "NAME bytes gw_ms serve_ms fio_ms wall_s" to $OUT/accounts.txt. fio's own
# CPU is its rusage as the shell's `times` reports it for the subshell.
fio_account() {
	local name=$1 rep=$2 g0 s0 g1 s1 t0 t1 f=$OUT/$1.$2.json
	shift 2
	g0=$(cpu_ticks "$gw_pid") s0=$(cpu_ticks "$ud_pid") t0=$(date +%s%N)
	fio_cpu "$f" "$uri" --name="$name" "$@"
	t1=$(date +%s%N) g1=$(cpu_ticks "$gw_pid") s1=$(cpu_ticks "$ud_pid")
	python3 - "$f" "$name" "$fio_ms" $(((g1 - g0) * 1000 / tck)) $(((s1 - s0) * 1000 / tck)) $((t1 - t0)) >>"$OUT/accounts.txt" <<'EOF'
import json, sys
f, name, ms, gw, serve, ns = sys.argv[1:]
job = json.load(open(f))["jobs"][0]
moved = job["read" if name == "seqread" else "write"]["io_bytes"]
print(name, moved, gw, serve, ms, int(ns) / 1e9)
EOF
}

: >"$OUT/accounts.txt"
for ((rep = 1; rep <= REPS; rep++)); do
	log "raw S3 run $rep/$REPS (s3raw -cpu-pid versitygw)"
	"$WORKDIR/s3raw" bench -endpoint "$endpoint" -bucket bench -prefix "raw-$rep/" -dur "${RUNTIME}s" -workers 8 \
		-cpu-pid "$gw_pid" >"$OUT/s3raw.$rep.json"
done

log "set-up: $SIZE of random data through serve (nbdcopy --flush)"
head -c "$bytes" /dev/urandom >"$WORKDIR/seed.raw"
start_urldisk --create --size "$bytes"
nbdcopy --flush "$WORKDIR/seed.raw" "$uri"
rm -f "$WORKDIR/seed.raw"
for ((rep = 1; rep <= REPS; rep++)); do
	stop_urldisk && rm -rf "$cache" && start_urldisk
	log "seqread (cold) run $rep/$REPS"
	# shellcheck disable=SC2086
	fio_account seqread "$rep" $read_args
	log "seqwrite + flush run $rep/$REPS"
	# shellcheck disable=SC2086
	fio_account seqwrite "$rep" $write_args
done
stop_urldisk

{
	meta_common
	echo "versitygw=$(go version -m "$(command -v versitygw)" 2>/dev/null | awk '$1 == "mod" {print $3}')"
	echo "size=$SIZE reps=$REPS runtime=$RUNTIME"
} >"$OUT/meta"
python3 - "$OUT" "$(nproc)" >"$OUT/report.md" <<'EOF'
import glob, json, statistics, sys
out, ncpu = sys.argv[1], int(sys.argv[2])
MiB = 1 << 20
rows = {}  # case -> list of {proc: ms per MiB}, MiB/s
for f in sorted(glob.glob(out + "/s3raw.*.json")):
    r = json.load(open(f))
    for case, k in (("GET", "get4m"), ("PUT", "put4m")):
        mib = r[k + "_ops"] * 4
        rows.setdefault("raw " + case, []).append(
            ({"versitygw": r[k + "_peer_cpu_ms"] / mib, "client": r[k + "_self_cpu_ms"] / mib}, r[k + "_mbps"] * 1e6 / MiB))
for line in open(out + "/accounts.txt"):
    name, moved, gw, serve, fio, wall = line.split()
    mib = int(moved) / MiB
    case = "urldisk cold seqread" if name == "seqread" else "urldisk seqwrite+flush"
    rows.setdefault(case, []).append(
        ({"versitygw": int(gw) / mib, "serve": int(serve) / mib, "client": int(fio) / mib}, mib / float(wall)))
print(f"CPU-ms per MiB moved, median of {len(rows['raw GET'])} runs; ceiling = {ncpu}x1000 / total (MiB/s on {ncpu} CPUs)\n")
print("| case | versitygw | urldisk serve | client (s3raw / fio) | total (min–max) | ceiling MiB/s | measured MiB/s |")
print("|---|---|---|---|---|---|---|")
for case in ("raw GET", "urldisk cold seqread", "raw PUT", "urldisk seqwrite+flush"):
    runs = rows[case]
    med = {p: statistics.median(r[0].get(p, 0) for r in runs) for p in ("versitygw", "serve", "client")}
    tots = [sum(r[0].values()) for r in runs]
    tot = statistics.median(tots)
    rate = statistics.median(r[1] for r in runs)
    serve = f"{med['serve']:.2f}" if case.startswith("urldisk") else "—"
    print(f"| {case} | {med['versitygw']:.2f} | {serve} | {med['client']:.2f} | {tot:.2f} ({min(tots):.2f}–{max(tots):.2f}) | {ncpu * 1000 / tot:.0f} | {rate:.0f} |")
EOF
cat "$OUT/report.md"
log "report and raw results in $OUT"

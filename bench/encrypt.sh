#!/usr/bin/env bash
# encrypt.sh — urldisk with and without encryption at rest (issue 13), side
# by side in one run on the loopback profile (urldisk serve talking to a
# local versitygw directly): the cost of sealing every frame.
#
# Jobs (fio, nbd engine, on a fresh volume per mode and repetition; see
# ud_write_read_jobs in lib.sh):
#   seqwrite       1M sequential write, QD8, SIZE bytes, then one flush   MB/s
#   seqread-cold   1M sequential read of SIZE, QD8, after restarting serve
#                  with an empty cache                                     MB/s
#   randwrite-qd1  4k random write, QD1, a flush after every write        IOPS
# Modes: none, enc (create --encrypt; serve --key-file). Runs interleave the
# modes, so load on the machine hits both alike. Compression is not
# implemented, so there are no compress/both modes.
#
# Usage: flock /tmp/urldisk-bench.lock ./bench/encrypt.sh
# Knobs: SIZE=256M RUNTIME=5 REPS=3 WORKDIR=... KEEP=1
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LOGTAG=encrypt
SIZE=${SIZE:-256M} RUNTIME=${RUNTIME:-5} REPS=${REPS:-3}
WORKDIR=${WORKDIR:-$(mktemp -d /var/tmp/urldisk-encbench.XXXXXX)}
OUT=${OUT:-$WORKDIR/out}
mkdir -p "$OUT/json"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
check_fio_nbd
cleanup() {
	stop_pid "$ud_pid" || true
	stop_pid "$gw_pid" || true
	[[ -n ${KEEP:-} ]] || rm -rf "$WORKDIR/gw" "$WORKDIR/cache"
}
trap cleanup EXIT
URLDISK_REV=${URLDISK_REV:-worktree} build_urldisk
(cd "$repo" && go build -o "$WORKDIR/s3raw" ./bench/s3raw)
export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1
start_gw
head -c 32 /dev/urandom >"$WORKDIR/key"
q="endpoint=$endpoint&region=us-east-1&use_path_style=true"
ud_sock=$WORKDIR/ud.sock cache=$WORKDIR/cache
declare -A FIOARGS PIDVAR
PIDVAR[urldisk]=ud_pid
RES=$OUT

for ((rep = 1; rep <= REPS; rep++)); do
	for mode in none enc; do
		flags=()
		[[ $mode == enc ]] && flags=(--key-file "$WORKDIR/key")
		ud_url="s3://bench/pool/$mode-$rep?$q"
		create=()
		[[ $mode == enc ]] && create=(--encrypt)
		"$bin" create "$ud_url" --size "$SIZE" "${create[@]}" "${flags[@]}" >/dev/null 2>>"$WORKDIR/urldisk.log"
		FIOARGS[urldisk]="--ioengine=nbd --uri=nbd+unix:///$mode-$rep?socket=$ud_sock"
		ud_write_read_jobs "$mode" "$rep" "${flags[@]}"
	done
done

python3 - "$OUT/json" "$REPS" <<'PY'
import json, os, statistics, sys
d, reps = sys.argv[1], int(sys.argv[2])
def val(job, mode, what):
    xs = []
    for r in range(1, reps + 1):
        j = json.load(open(os.path.join(d, f"{job}-{mode}.urldisk.{r}.json")))["jobs"][0]
        side = j["read"] if job.startswith("seqread") else j["write"]
        xs.append(side["bw_bytes"] / 1e6 if what == "MB/s" else side["iops"])
    return statistics.median(xs)
print("| job | unit | none | enc | enc/none |")
print("|---|---|---|---|---|")
for job, unit in [("seqwrite", "MB/s"), ("seqread-cold", "MB/s"), ("randwrite-qd1", "IOPS")]:
    a, b = val(job, "none", unit), val(job, "enc", unit)
    print(f"| {job} | {unit} | {a:.1f} | {b:.1f} | {b/a:.2f} |")
PY

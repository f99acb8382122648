#!/usr/bin/env bash
# compress.sh — urldisk with neither, encryption, compression and both at
# rest (issue 13), side by side in one run on the loopback profile (urldisk
# serve talking to a local versitygw directly), then the compression ratio
# on real data.
#
# Part 1, jobs (fio, nbd engine, on a fresh volume per mode and repetition;
# see ud_write_read_jobs in lib.sh): seqwrite (1M, QD8, then one flush),
# randwrite-qd1 (4k, a flush after every write), seqread-cold (1M, QD8,
# after restarting serve with an empty cache). Modes: none, enc (create
# --encrypt), lz4 (create --compress), both. Runs interleave the modes, so
# load on the machine hits all alike. fio writes half-compressible buffers
# (DATA=half: --buffer_compress_percentage=50, new buffers per write), the
# same for every mode; DATA=random writes fio's default random buffers,
# which no mode can compress (the cost of trying).
#
# Part 2, ratio: `urldisk import` into a --compress volume on file://, then
# `urldisk info` stored vs logical bytes, for (a) an ext4 image of a real
# Debian tree (this host's /usr/bin, /usr/sbin, /usr/share and /etc, made
# with mkfs.ext4 -d) and (b) RATIO_RANDOM bytes of /dev/urandom.
#
# Usage: flock /tmp/urldisk-bench.lock ./bench/compress.sh
# Knobs: SIZE=256M RUNTIME=5 REPS=3 DATA=half IMG_SIZE=2G RATIO_RANDOM=256M
#        SKIP_FIO=1 SKIP_RATIO=1 WORKDIR=... KEEP=1
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LOGTAG=compress
SIZE=${SIZE:-256M} RUNTIME=${RUNTIME:-5} REPS=${REPS:-3} DATA=${DATA:-half}
IMG_SIZE=${IMG_SIZE:-2G} RATIO_RANDOM=${RATIO_RANDOM:-256M}
WORKDIR=${WORKDIR:-$(mktemp -d /var/tmp/urldisk-cmpbench.XXXXXX)}
OUT=${OUT:-$WORKDIR/out}
mkdir -p "$OUT/json"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
check_fio_nbd
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found (apt-get install e2fsprogs)"
cleanup() {
	stop_pid "$ud_pid" || true
	[[ -z ${gw_pid:-} ]] || stop_pid "$gw_pid" || true
	[[ -n ${KEEP:-} ]] || rm -rf "$WORKDIR/gw" "$WORKDIR/versitygw" "$WORKDIR/cache" "$WORKDIR/ratio"
}
trap cleanup EXIT
URLDISK_REV=${URLDISK_REV:-worktree} build_urldisk
head -c 32 /dev/urandom >"$WORKDIR/key"
modes=(none enc lz4 both)
create_flags() { # mode: the create flags of that mode
	case $1 in
	none) ;;
	enc) echo --encrypt ;;
	lz4) echo --compress ;;
	both) echo --compress --encrypt ;;
	esac
}

if [[ -z ${SKIP_FIO:-} ]]; then
	(cd "$repo" && go build -o "$WORKDIR/s3raw" ./bench/s3raw)
	export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1
	start_gw
	q="endpoint=$endpoint&region=us-east-1&use_path_style=true"
	ud_sock=$WORKDIR/ud.sock cache=$WORKDIR/cache
	declare -A FIOARGS PIDVAR
	PIDVAR[urldisk]=ud_pid
	RES=$OUT
	fiodata=()
	[[ $DATA == half ]] && fiodata=(--buffer_compress_percentage=50 --refill_buffers)
	for ((rep = 1; rep <= REPS; rep++)); do
		for mode in "${modes[@]}"; do
			ud_url="s3://bench/pool/$mode-$rep?$q"
			# shellcheck disable=SC2046 # create_flags is a word list
			"$bin" create "$ud_url" --size "$SIZE" $(create_flags "$mode") --key-file "$WORKDIR/key" >/dev/null 2>>"$WORKDIR/urldisk.log"
			FIOARGS[urldisk]="--ioengine=nbd --uri=nbd+unix:///$mode-$rep?socket=$ud_sock ${fiodata[*]}"
			ud_write_read_jobs "$mode" "$rep" --key-file "$WORKDIR/key"
		done
	done
	python3 - "$OUT/json" "$REPS" "$DATA" <<'PY'
import json, os, statistics, sys
d, reps, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def val(job, mode, what):
    xs = []
    for r in range(1, reps + 1):
        j = json.load(open(os.path.join(d, f"{job}-{mode}.urldisk.{r}.json")))["jobs"][0]
        side = j["read"] if job.startswith("seqread") else j["write"]
        xs.append(side["bw_bytes"] / 1e6 if what == "MB/s" else side["iops"])
    return statistics.median(xs)
print(f"fio data: {data}; median of {reps}")
print("| job | unit | none | enc | lz4 | both | enc/none | lz4/none | both/none |")
print("|---|---|---|---|---|---|---|---|---|")
for job, unit in [("seqwrite", "MB/s"), ("seqread-cold", "MB/s"), ("randwrite-qd1", "IOPS")]:
    v = {m: val(job, m, unit) for m in ("none", "enc", "lz4", "both")}
    n = v["none"]
    print(f"| {job} | {unit} | {n:.1f} | {v['enc']:.1f} | {v['lz4']:.1f} | {v['both']:.1f} | "
          f"{v['enc']/n:.2f} | {v['lz4']/n:.2f} | {v['both']/n:.2f} |")
PY
	stop_pid "$gw_pid" || true
	gw_pid= srv_pid=
fi

if [[ -z ${SKIP_RATIO:-} ]]; then
	r=$WORKDIR/ratio
	mkdir -p "$r/tree"
	log "ratio: ext4 image ($IMG_SIZE) of /usr/bin /usr/sbin /usr/share /etc"
	for d in /usr/bin /usr/sbin /usr/share /etc; do
		mkdir -p "$r/tree$(dirname "$d")"
		cp -a "$d" "$r/tree$d" 2>/dev/null || true # unreadable files are skipped
	done
	truncate -s "$IMG_SIZE" "$r/ext4.img"
	mkfs.ext4 -q -F -d "$r/tree" "$r/ext4.img"
	rm -rf "$r/tree"
	head -c "$RATIO_RANDOM" /dev/urandom >"$r/random.img"
	pool="file://$r/pool"
	echo "| data | used in image | stored | logical | stored/logical |"
	echo "|---|---|---|---|---|"
	for img in ext4 random; do
		size=$(stat -c %s "$r/$img.img")
		"$bin" create "$pool/$img" --size "$size" --compress >/dev/null 2>>"$WORKDIR/urldisk.log"
		"$bin" import "$r/$img.img" "$pool/$img" >/dev/null 2>>"$WORKDIR/urldisk.log"
		"$bin" info "$pool/$img" --json | python3 -c '
import json, sys
i = json.load(sys.stdin)
used, stored, logical = i["used_bytes"], i["stored_bytes"], i["logical_bytes"]
print("| %s | %.0f MiB | %.0f MiB | %.0f MiB | %.3f |" % (sys.argv[1], used / 2**20, stored / 2**20, logical / 2**20, stored / logical))' "$img"
	done
fi

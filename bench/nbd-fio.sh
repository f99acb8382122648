#!/usr/bin/env bash
# nbd-fio.sh — fio over NBD, in one run on one machine, against
#   (a) urldisk serve  on a file:// pool (with its read cache), and
#   (b) nbdkit file    serving a raw file of the same size,
# then print a Markdown section with the medians and the urldisk/nbdkit ratio.
#
# This is a benchmark, not a test: nothing is asserted. Both servers run at
# the same time and the runs are interleaved (urldisk, nbdkit, urldisk, ...),
# so background load on the machine hits both about equally; the ratio from
# one run is the number to look at, the absolute numbers are only context.
#
# Usage: ./bench/nbd-fio.sh            (from the repository root, as root if
#                                      fio/nbdkit/libnbd-bin must be installed)
# Knobs (environment):
#   SIZE=1G          working set = volume size = raw file size (512M if short of time)
#   RUNTIME=5        seconds per time-based fio job
#   REPS=3           repetitions of each job per server (median reported)
#   URLDISK_REV=HEAD build a clean `git archive` of this commit-ish;
#                    "worktree" builds the checked-out tree as it is
#   URLDISK_BIN=...  use this binary instead of building (rev reported as "given")
#   WORKDIR=...      where pool, cache and raw file live (default: mktemp under /var/tmp)
#   OUT=...          where the report and fio JSON are kept (default: bench/out/nbd-fio-<UTC time>)
#   KEEP=1           keep WORKDIR afterwards
#
# Jobs (fio --ioengine=nbd, one connection, each run REPS times per server):
#   randread-qd1   4k random read, iodepth 1, warm cache        IOPS, mean/p99 latency
#   randread-qd32  4k random read, iodepth 32, warm cache       IOPS
#   seqread-cold   1M sequential read of the whole working set, iodepth 8, after
#                  stopping urldisk, deleting its cache dir and restarting it
#                  (nbdkit is restarted too; it has no cache of its own)       MB/s
#   seqread-warm   1M sequential read, iodepth 8, time-based       MB/s
#   seqwrite       1M sequential write of the whole working set, iodepth 8,
#                  then one flush (--end_fsync=1, counted in the runtime)      MB/s
#   randwrite-fsync 4k random write, iodepth 1, a flush after every write
#                  (--fsync=1)                                     IOPS, mean write+flush latency
# The working set is first written through each server with random data
# (nbdcopy --flush from one /dev/urandom file), so urldisk serves real
# records, not holes, and then read once so the random-read jobs are warm.
# The OS page cache is not dropped: the pool objects and nbdkit's raw file
# are in RAM for both, so "cold" means "urldisk's own cache is empty".
set -euo pipefail

SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-5}
REPS=${REPS:-3}
URLDISK_REV=${URLDISK_REV:-HEAD}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$repo/bench/out/nbd-fio-$stamp}
started=$(date +%s)

LOGTAG=nbd-fio
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

# ---- tools ------------------------------------------------------------------
need_pkgs fio=fio nbdkit=nbdkit nbdcopy=libnbd-bin nbdinfo=libnbd-bin python3=python3
check_fio_nbd

bytes=$(numfmt --from=iec "$SIZE") || die "SIZE=$SIZE: not a size"

# ---- work directories and cleanup ---------------------------------------------
WORKDIR=${WORKDIR:-$(mktemp -d /var/tmp/nbd-fio.XXXXXX)}
mkdir -p "$WORKDIR" "$OUT/json"
cleanup() {
	stop_pid "$ud_pid" || true
	stop_pid "$nk_pid" || true
	finish_workdir
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- urldisk binary -------------------------------------------------------------
build_urldisk
log "urldisk $ud_rev; work in $WORKDIR; results in $OUT"

# ---- servers --------------------------------------------------------------------
pool=file://$WORKDIR/pool
vol=bench
cache=$WORKDIR/cache
ud_sock=$WORKDIR/ud.sock
nk_sock=$WORKDIR/nk.sock
nk_file=$WORKDIR/nbdkit.raw
declare -A URI=([urldisk]="nbd+unix:///$vol?socket=$ud_sock" [nbdkit]="nbd+unix:///?socket=$nk_sock")
declare -A FIOARGS=([urldisk]="--ioengine=nbd --uri=${URI[urldisk]} --size=$bytes" [nbdkit]="--ioengine=nbd --uri=${URI[nbdkit]} --size=$bytes")
declare -A PIDVAR=([urldisk]=ud_pid [nbdkit]=nk_pid)
ud_url=$pool/$vol

timed=(--runtime="$RUNTIME" --time_based)
declare -A JOBARGS=(
	[randread-qd1]="--rw=randread --bs=4k --iodepth=1 --lat_percentiles=1 ${timed[*]}"
	[randread-qd32]="--rw=randread --bs=4k --iodepth=32 --lat_percentiles=1 ${timed[*]}"
	[seqread-cold]="--rw=read --bs=1M --iodepth=8"
	[seqread-warm]="--rw=read --bs=1M --iodepth=8 ${timed[*]}"
	[seqwrite]="--rw=write --bs=1M --iodepth=8 --end_fsync=1"
	[randwrite-fsync]="--rw=randwrite --bs=4k --iodepth=1 --fsync=1 --lat_percentiles=1 ${timed[*]}"
)
JOBS=(randread-qd1 randread-qd32 seqread-cold seqread-warm seqwrite randwrite-fsync)

# ---- set-up: same random data through both servers, then a warming read --------
log "machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
head -c "$bytes" /dev/urandom >"$WORKDIR/seed.raw"
truncate -s "$bytes" "$nk_file"
start_urldisk --create --size "$bytes"
start_nbdkit
for t in urldisk nbdkit; do
	log "prefill $SIZE of random data through $t (nbdcopy --flush)"
	s=$(date +%s.%N)
	nbdcopy --flush "$WORKDIR/seed.raw" "${URI[$t]}"
	echo "$s $(date +%s.%N)" >"$OUT/json/prefill.$t.time"
done
rm -f "$WORKDIR/seed.raw"
for t in urldisk nbdkit; do
	log "warming read through $t"
	run_fio "$t" warmup 0 --rw=read --bs=1M --iodepth=8
done

# ---- the jobs -------------------------------------------------------------------
for job in "${JOBS[@]}"; do
	for ((rep = 1; rep <= REPS; rep++)); do
		for t in urldisk nbdkit; do
			if [[ $job == seqread-cold ]]; then
				if [[ $t == urldisk ]]; then
					stop_urldisk
					rm -rf "$cache"
					start_urldisk
				else
					stop_nbdkit
					start_nbdkit
				fi
			fi
			log "$job run $rep/$REPS on $t"
			# shellcheck disable=SC2086 # JOBARGS are word lists
			run_fio "$t" "$job" "$rep" ${JOBARGS[$job]}
		done
	done
done
stop_urldisk # a clean SIGTERM (flush, exit 0) is part of the run
stop_nbdkit

# ---- report ---------------------------------------------------------------------
cmd="./bench/nbd-fio.sh"
for v in SIZE RUNTIME REPS URLDISK_REV URLDISK_BIN; do
	case $v in
	SIZE) [[ $SIZE == 1G ]] || cmd="SIZE=$SIZE $cmd" ;;
	RUNTIME) [[ $RUNTIME == 5 ]] || cmd="RUNTIME=$RUNTIME $cmd" ;;
	REPS) [[ $REPS == 3 ]] || cmd="REPS=$REPS $cmd" ;;
	URLDISK_REV) [[ $URLDISK_REV == HEAD ]] || cmd="URLDISK_REV=$URLDISK_REV $cmd" ;;
	URLDISK_BIN) [[ -z ${URLDISK_BIN:-} ]] || cmd="URLDISK_BIN=$URLDISK_BIN $cmd" ;;
	esac
done
fio_common="fio --ioengine=nbd --uri=URI --size=$bytes --output-format=json"
{
	meta_common
	echo "cmd=$cmd"
	echo "size=$SIZE"
	echo "bytes=$bytes"
	echo "runtime=$RUNTIME"
	echo "reps=$REPS"
	echo "elapsed=$(($(date +%s) - started))"
	echo "fio_common=$fio_common"
	for job in "${JOBS[@]}"; do echo "args.$job=${JOBARGS[$job]}"; done
	echo "urldisk_serve=urldisk serve file://WORKDIR/pool/$vol --listen unix:SOCK --cache DIR --cache-size 2G"
	echo "nbdkit_serve=nbdkit --unix SOCK --foreground file FILE"
} >"$OUT/meta"
python3 "$here/nbd-fio-report.py" "$OUT" | tee "$OUT/report.md"
log "done in $(($(date +%s) - started))s; report and fio JSON in $OUT"

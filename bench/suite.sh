#!/usr/bin/env bash
# suite.sh — urldisk against its peers and limits, in one run on one machine:
#   urldisk   `urldisk serve` of a volume in a pool on a local versitygw (S3)
#   nbdkit    `nbdkit file` on a raw file: the local limit for an NBD server
#   s3backer  s3backer (FUSE, 1 MiB blocks, in-memory block cache) on the same
#             versitygw, with --blockCacheSync so that a write is in S3 when
#             it returns (s3backer 1.5's fsync is a no-op: without it nothing
#             it acknowledges is durable)
#   raw S3    bench/s3raw: PutObject/GetObject on the same versitygw with the
#             same AWS SDK configuration urldisk uses: the object-store limit
# then checkpoint/clone time, attach time and serve's memory, and a Markdown
# section with medians and ratios, which replaces the one in BENCHMARKS.md.
#
# All of it on two profiles, one after the other in the same run:
#   loopback  the targets talk to versitygw directly (as fast as the machine)
#   remote    urldisk, s3backer and raw S3 talk to the same versitygw through
#             bench/s3proxy, which adds what a real object store has: 20 ms
#             before each GET/HEAD, 30 ms before each PUT/POST/DELETE, and
#             100 MB/s per request or response stream. s3backer gets
#             --readAhead there. nbdkit (no object store) runs on loopback only.
#
# This is a benchmark, not a test: nothing is asserted; targets are reported.
# Runs are interleaved (urldisk, nbdkit, s3backer, urldisk, ...), so load on
# the machine hits all of them alike: compare ratios from one run.
#
# Usage: ./bench/suite.sh   (or `make bench`; as root if tools must be
#                            installed: fio, nbdkit, libnbd-bin, s3backer from
#                            Debian, versitygw v1.8.0 with `go install`)
# Knobs (environment):
#   PROFILES="loopback remote"   which profiles to run, in this order
#   GET_DELAY=20ms PUT_DELAY=30ms MBPS=100   the remote profile's proxy
#   SIZE=512M        working set = volume size = raw/s3backer file size
#   RUNTIME=3        seconds per time-based fio job (also caps seqwrite)
#   REPS=2           repetitions of everything measured (median reported)
#   COLD_IOS=200     reads in the cold 4k randread job
#   RECORDS=10000    records in the attach-time volume
#   MEM_SIZE=4G      size of the volume written in full for the RSS figure
#   URLDISK_REV=HEAD build a clean `git archive` of this commit-ish;
#                    "worktree" builds the checked-out tree as it is
#   URLDISK_BIN=...  use this binary instead of building
#   WORKDIR=...      scratch (default: mktemp under /var/tmp); KEEP=1 keeps it
#   OUT=...          results (default: bench/out/suite-<UTC time>)
#   DOC=BENCHMARKS.md  file whose "## Suite: ..." section is replaced; DOC= skips
#
# fio jobs (same arguments on every target; nbd engine for urldisk/nbdkit,
# libaio with O_DIRECT on s3backer's FUSE file, so no page cache in between):
#   randread-qd1/-qd32  4k random read, warm                  IOPS, latency
#   randread-cold-qd1   4k random read, QD1, COLD_IOS reads (capped at
#                       4*RUNTIME s), after restarting the server as for
#                       seqread-cold: few enough that most reads stay cold
#                       (a time-based run on loopback would fetch most of the
#                       working set and report cache hits)    latency p50
#   seqread-cold        1M sequential read of the working set, QD8, after
#                       restarting the server (urldisk: cache deleted too;
#                       s3backer: remounted, its block cache is in memory)
#   seqread-warm        1M sequential read, QD8, time-based
#   seqwrite            1M sequential write, QD8, then one flush; stops after
#                       RUNTIME s or the working set; MB/s including the flush
#   randwrite-qd1       4k random write, QD1, a flush after every write
#   randwrite-qd32      4k random write, QD32, a flush every 64 writes
#                       (--fsync=64): durable IOPS
set -euo pipefail

PROFILES=${PROFILES:-loopback remote}
GET_DELAY=${GET_DELAY:-20ms}
PUT_DELAY=${PUT_DELAY:-30ms}
MBPS=${MBPS:-100}
SIZE=${SIZE:-512M}
RUNTIME=${RUNTIME:-3}
REPS=${REPS:-2}
COLD_IOS=${COLD_IOS:-200}
RECORDS=${RECORDS:-10000}
MEM_SIZE=${MEM_SIZE:-4G}
URLDISK_REV=${URLDISK_REV:-HEAD}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$repo/bench/out/suite-$stamp}
DOC=${DOC-$repo/BENCHMARKS.md}
started=$(date +%s)

LOGTAG=suite
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

# ---- tools ----------------------------------------------------------------------
need_pkgs fio=fio nbdkit=nbdkit nbdcopy=libnbd-bin nbdinfo=libnbd-bin python3=python3 \
	s3backer=s3backer fusermount=fuse3
check_fio_nbd
export PATH="$PATH:$(go env GOPATH)/bin"
if ! command -v versitygw >/dev/null; then
	log "installing versitygw v1.8.0 (go install)"
	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi
[[ -e /dev/fuse ]] || die "no /dev/fuse: s3backer needs FUSE"

for prof in $PROFILES; do
	[[ $prof == loopback || $prof == remote ]] || die "PROFILES=$PROFILES: $prof is neither loopback nor remote"
done
bytes=$(numfmt --from=iec "$SIZE") || die "SIZE=$SIZE: not a size"
mem_bytes=$(numfmt --from=iec "$MEM_SIZE") || die "MEM_SIZE=$MEM_SIZE: not a size"

# ---- work directories and cleanup -------------------------------------------------
WORKDIR=${WORKDIR:-$(mktemp -d /var/tmp/suite.XXXXXX)}
mkdir -p "$WORKDIR" "$OUT/json" "$OUT/raw"
gw_pid= s3_pid= mem_pid= px_pid=
mnt=$WORKDIR/mnt
cleanup() {
	stop_pid "$ud_pid" || true
	stop_pid "$nk_pid" || true
	stop_pid "$mem_pid" || true
	if [[ -n $s3_pid ]]; then
		fusermount -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
		wait "$s3_pid" 2>/dev/null || true
	fi
	stop_pid "$px_pid" || true
	stop_pid "$gw_pid" || true
	finish_workdir
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- binaries -------------------------------------------------------------------------
build_urldisk
# The helpers are measuring tools: always built from this checkout.
(cd "$repo" && go build -o "$WORKDIR/s3raw" ./bench/s3raw && go build -o "$WORKDIR/suitetool" ./bench/suitetool &&
	go build -o "$WORKDIR/s3proxy" ./bench/s3proxy)
log "urldisk $ud_rev; work in $WORKDIR; results in $OUT"
log "machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- versitygw ------------------------------------------------------------------------
export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1
unset AWS_CA_BUNDLE AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN
start_gw
gw_endpoint=$endpoint
"$WORKDIR/s3raw" mkbucket -endpoint "$gw_endpoint" s3b
log "versitygw at $gw_endpoint (pid $gw_pid)"

# start_proxy: bench/s3proxy in front of versitygw; sets px_endpoint.
start_proxy() {
	"$WORKDIR/s3proxy" -target "$gw_endpoint" -listen 127.0.0.1:0 -get-delay "$GET_DELAY" \
		-put-delay "$PUT_DELAY" -mbps "$MBPS" >"$WORKDIR/s3proxy.out" 2>>"$WORKDIR/s3proxy.log" &
	px_pid=$!
	local i
	for ((i = 0; i < 100; i++)); do
		px_endpoint=$(sed -n 's/^listening //p' "$WORKDIR/s3proxy.out" 2>/dev/null)
		[[ -n $px_endpoint ]] && return 0
		kill -0 "$px_pid" 2>/dev/null || { tail -20 "$WORKDIR/s3proxy.log" >&2; die "s3proxy exited"; }
		sleep 0.1
	done
	die "s3proxy did not start"
}
[[ " $PROFILES " == *" remote "* ]] && start_proxy && log "s3proxy at $px_endpoint (pid $px_pid): GET $GET_DELAY, PUT $PUT_DELAY, $MBPS MB/s per stream"

# Set-up steps (prefilled volumes, records) talk to versitygw directly on
# every profile: only what is measured goes through the proxy.
gwq="endpoint=$gw_endpoint&region=us-east-1&use_path_style=true"
volurl() { echo "$pool/$1?$s3q"; }    # through the profile's endpoint
setupurl() { echo "$pool/$1?$gwq"; } # straight to versitygw

# ---- targets ----------------------------------------------------------------------------
vol=bench
cache=$WORKDIR/cache
ud_sock=$WORKDIR/ud.sock
nk_sock=$WORKDIR/nk.sock
nk_file=$WORKDIR/nbdkit.raw
declare -A NBDURI=([urldisk]="nbd+unix:///$vol?socket=$ud_sock" [nbdkit]="nbd+unix:///?socket=$nk_sock")
declare -A FIOARGS=(
	[urldisk]="--ioengine=nbd --uri=${NBDURI[urldisk]} --size=$bytes"
	[nbdkit]="--ioengine=nbd --uri=${NBDURI[nbdkit]} --size=$bytes"
	[s3backer]="--ioengine=libaio --direct=1 --filename=$mnt/file --size=$bytes"
)
declare -A PIDVAR=([urldisk]=ud_pid [nbdkit]=nk_pid [s3backer]=s3_pid)

echo "k:s" >"$WORKDIR/s3b.passwd"
chmod 600 "$WORKDIR/s3b.passwd"
S3B_SYNC=(--blockCacheSync --blockCacheWriteDelay=0) # a write returns once it is in S3
start_s3backer() { # [extra flags]
	mkdir -p "$mnt"
	s3backer "${S3B_ARGS[@]}" "$@" -f s3b "$mnt" >>"$WORKDIR/s3backer.log" 2>&1 &
	s3_pid=$!
	local i
	for ((i = 0; i < 300; i++)); do
		[[ $(stat -c %s "$mnt/file" 2>/dev/null) == "$bytes" ]] && return 0
		kill -0 "$s3_pid" 2>/dev/null || { tail -20 "$WORKDIR/s3backer.log" >&2; die "s3backer exited"; }
		sleep 0.1
	done
	die "s3backer not mounted after 30s"
}
stop_s3backer() { # unmounting flushes s3backer's dirty blocks
	[[ -n $s3_pid ]] || return 0
	fusermount -u "$mnt" || umount "$mnt"
	wait "$s3_pid" || true
	s3_pid=
}
# note_hwm: remember the bench serve's peak RSS (VmHWM, kB) before it stops.
note_hwm() {
	[[ -n $ud_pid ]] && awk '/^VmHWM/ {print $2}' "/proc/$ud_pid/status" >>"$RES/raw/serve-hwm.txt" 2>/dev/null || true
}
restart() { # target: stop and start it with an empty cache of its own
	case $1 in
	urldisk) note_hwm && stop_urldisk && rm -rf "$cache" && start_urldisk ;;
	nbdkit) stop_nbdkit && start_nbdkit ;;
	s3backer) stop_s3backer && start_s3backer "${S3B_SYNC[@]}" ;;
	esac
}

timed="--runtime=$RUNTIME --time_based"
declare -A JOBARGS=(
	[randread-qd1]="--rw=randread --bs=4k --iodepth=1 --lat_percentiles=1 $timed"
	[randread-qd32]="--rw=randread --bs=4k --iodepth=32 --lat_percentiles=1 $timed"
	[randread-cold-qd1]="--rw=randread --bs=4k --iodepth=1 --lat_percentiles=1 --number_ios=$COLD_IOS --runtime=$((RUNTIME * 4))"
	[seqread-cold]="--rw=read --bs=1M --iodepth=8"
	[seqread-warm]="--rw=read --bs=1M --iodepth=8 $timed"
	[seqwrite]="--rw=write --bs=1M --iodepth=8 --end_fsync=1 --runtime=$RUNTIME"
	[randwrite-qd1]="--rw=randwrite --bs=4k --iodepth=1 --fsync=1 --lat_percentiles=1 $timed"
	[randwrite-qd32]="--rw=randwrite --bs=4k --iodepth=32 --fsync=64 $timed"
)
JOBS=(randread-qd1 randread-qd32 randread-cold-qd1 seqread-cold seqread-warm seqwrite randwrite-qd1 randwrite-qd32)
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# The attach-time volume is written once, straight to versitygw, and
# attached on every profile.
att_url() { echo "s3://bench/att/att?$1"; }
records_made=

# run_profile PROFILE: everything measured, for one profile, into $OUT/PROFILE.
run_profile() {
	prof=$1
	local pstart
	pstart=$(date +%s)
	RES=$OUT/$prof
	mkdir -p "$RES/json" "$RES/raw"
	if [[ $prof == remote ]]; then
		endpoint=$px_endpoint
		TARGETS=(urldisk s3backer)
	else
		endpoint=$gw_endpoint
		TARGETS=(urldisk nbdkit s3backer)
	fi
	s3q="endpoint=$endpoint&region=us-east-1&use_path_style=true"
	pool="s3://bench/$prof"
	ud_url=$(volurl $vol)
	# s3backer tuned for a strongly consistent store (no MD5 cache or
	# same-block write delay, both there for AWS's old eventual
	# consistency), every block cacheable in memory, O_DIRECT passed
	# through, no startup listing, path-style requests (the default;
	# --region would switch to virtual-host style). Remote: read-ahead of 8
	# blocks after 2 sequential ones, to keep 8 MiB in flight like the
	# others' QD8.
	S3B_ARGS=(--baseURL="$endpoint/" --accessFile="$WORKDIR/s3b.passwd"
		--blockSize=1m --size="$bytes" --blockCacheSize=$(((bytes + (1 << 20) - 1) >> 20))
		--md5CacheSize=0 --md5CacheTime=0 --minWriteDelay=0 --directIO --prefix="$prof/")
	[[ $prof == remote ]] && S3B_ARGS+=(--readAhead=8 --readAheadTrigger=2)
	log "== profile $prof: object store at $endpoint; targets ${TARGETS[*]}"

	# ---- 1. raw S3 -------------------------------------------------------------------------
	for ((rep = 1; rep <= REPS; rep++)); do
		log "$prof: raw S3 run $rep/$REPS (s3raw: 4 MiB PUT x8, 4 KiB PUT latency, 4 MiB GET x8, 4 KiB ranged GET latency)"
		"$WORKDIR/s3raw" bench -endpoint "$endpoint" -bucket bench -prefix "raw-$prof-$rep/" -dur 2s -workers 8 \
			>"$RES/raw/s3raw.$rep.json"
	done

	# ---- 2. fio on the targets ----------------------------------------------------------------
	log "$prof: set-up: $SIZE of the same random data through each target"
	head -c "$bytes" /dev/urandom >"$WORKDIR/seed.raw"
	: >"$RES/raw/serve-hwm.txt"
	rm -rf "$cache"
	start_urldisk --create --size "$bytes"
	if [[ " ${TARGETS[*]} " == *" nbdkit "* ]]; then
		truncate -s "$bytes" "$nk_file"
		start_nbdkit
	fi
	start_s3backer # write-back for the prefill; unmounting flushes it
	local t job s
	for t in "${TARGETS[@]}"; do
		s=$(date +%s.%N)
		if [[ $t == s3backer ]]; then
			dd if="$WORKDIR/seed.raw" of="$mnt/file" bs=1M oflag=direct conv=notrunc status=none
			stop_s3backer
		else
			nbdcopy --flush "$WORKDIR/seed.raw" "${NBDURI[$t]}"
		fi
		echo "$s $(date +%s.%N)" >"$RES/json/prefill.$t.time"
	done
	rm -f "$WORKDIR/seed.raw"
	start_s3backer "${S3B_SYNC[@]}"
	for t in "${TARGETS[@]}"; do
		log "$prof: warming read through $t"
		run_fio "$t" warmup 0 --rw=read --bs=1M --iodepth=8
	done
	for job in "${JOBS[@]}"; do
		for ((rep = 1; rep <= REPS; rep++)); do
			for t in "${TARGETS[@]}"; do
				[[ $job == *cold* ]] && restart "$t"
				log "$prof: $job run $rep/$REPS on $t"
				# shellcheck disable=SC2086 # JOBARGS are word lists
				run_fio "$t" "$job" "$rep" ${JOBARGS[$job]}
			done
		done
	done
	note_hwm
	stop_urldisk # a clean SIGTERM (flush, exit 0) is part of the run
	stop_nbdkit
	stop_s3backer
	rm -f "$nk_file"

	# ---- 3. checkpoint and clone time (CLI, no serve holding the volume) ---------------------------
	: >"$RES/raw/history.txt"
	local vsize v el inproc op t0
	for vsize in 1G 32G; do
		v=sparse$vsize
		"$WORKDIR/suitetool" mkvol -url "$(setupurl $v)" -size $vsize -scatter 100
		for ((rep = 1; rep <= REPS; rep++)); do
			for op in info checkpoint clone; do
				t0=$(date +%s%N)
				case $op in
				info) "$bin" info "$(volurl $v)" >/dev/null ;;
				checkpoint) "$bin" checkpoint "$(volurl $v)" "c$rep" >/dev/null 2>>"$WORKDIR/cli.log" ;;
				clone) "$bin" clone "$(volurl $v)" "$(volurl "$v-k$rep")" >"$WORKDIR/clone.out" 2>>"$WORKDIR/cli.log" ;;
				esac
				el=$(ms_since "$t0")
				inproc=
				[[ $op == clone ]] && inproc=$(sed -n 's/.* in \([0-9.]*m\?s\)$/\1/p' "$WORKDIR/clone.out")
				echo "$op $vsize $rep $el $inproc" >>"$RES/raw/history.txt"
			done
		done
	done
	log "$prof: checkpoint/clone times: $(awk '{printf "%s/%s=%sms ", $1, $2, $4}' "$RES/raw/history.txt")"

	# ---- 4. attach time: RECORDS records, empty cache ------------------------------------------------
	if [[ -z $records_made ]]; then
		log "attach: writing $RECORDS records of 4 KiB (one per record), straight to versitygw"
		"$WORKDIR/suitetool" records -url "$(att_url "$gwq")" -size 64M -n "$RECORDS" >"$OUT/records.txt"
		records_made=1
	fi
	cp "$OUT/records.txt" "$RES/raw/records.txt"
	: >"$RES/raw/attach.txt"
	for ((rep = 1; rep <= REPS; rep++)); do
		"$WORKDIR/suitetool" attach -bin "$bin" -url "$(att_url "$s3q")" -sock "$WORKDIR/att.sock" \
			-cache "$WORKDIR/attcache$rep" -log "$WORKDIR/attach.log" >>"$RES/raw/attach.txt"
		rm -rf "$WORKDIR/attcache$rep"
	done
	log "$prof: attach times (ms): $(tr '\n' ' ' <"$RES/raw/attach.txt")"

	# ---- 5. memory: serve's RSS with one volume written in full ------------------------------------
	log "$prof: memory: writing $MEM_SIZE through a fresh serve"
	local mem_sock=$WORKDIR/mem.sock i
	rm -rf "$WORKDIR/memcache"
	"$bin" serve "$(volurl mem)" --create --size "$mem_bytes" --listen "unix:$mem_sock" --cache "$WORKDIR/memcache" \
		--cache-size 2G >"$WORKDIR/mem.out" 2>>"$WORKDIR/mem.log" &
	mem_pid=$!
	for ((i = 0; i < 600; i++)); do
		grep -qx ready "$WORKDIR/mem.out" && break
		kill -0 "$mem_pid" || die "serve for the memory test exited"
		sleep 0.1
	done
	fio --name=memfill --ioengine=nbd --uri="nbd+unix:///mem?socket=$mem_sock" --size="$mem_bytes" \
		--rw=write --bs=1M --iodepth=8 --end_fsync=1 --output-format=json --output="$RES/raw/memfill.json" \
		>>"$WORKDIR/fio.log" 2>&1 || die "memory fill failed"
	grep -E '^(VmRSS|VmHWM)' "/proc/$mem_pid/status" | tr -s ' ' >"$RES/raw/mem.txt"
	stop_pid "$mem_pid" || die "serve (memory test) exited non-zero on SIGTERM"
	mem_pid=
	rm -rf "$WORKDIR/memcache"
	log "$prof: memory: $(tr '\n' ' ' <"$RES/raw/mem.txt")"

	{
		echo "profile=$prof"
		echo "clk_tck=$(getconf CLK_TCK)"
		echo "elapsed=$(($(date +%s) - pstart))"
		echo "targets=${TARGETS[*]}"
		if [[ $prof == remote ]]; then
			echo "store=bench/s3proxy -get-delay $GET_DELAY -put-delay $PUT_DELAY -mbps $MBPS in front of versitygw"
		else
			echo "store=versitygw directly"
		fi
		for t in "${TARGETS[@]}"; do echo "fio.$t=fio --name=JOB ${FIOARGS[$t]} --output-format=json" | sed "s|$WORKDIR|WORKDIR|g"; done
		echo "urldisk_serve=urldisk serve 's3://bench/$prof/$vol?endpoint=http://127.0.0.1:PORT&region=us-east-1&use_path_style=true' --listen unix:SOCK --cache DIR --cache-size 2G"
		echo "s3backer_mount=s3backer ${S3B_ARGS[*]} ${S3B_SYNC[*]} -f s3b MNT" | sed "s|$WORKDIR|WORKDIR|g; s|$endpoint|http://127.0.0.1:PORT|g"
	} >"$RES/meta"
	log "== profile $prof done in $(($(date +%s) - pstart))s"
}

for prof in $PROFILES; do
	run_profile "$prof"
done

# ---- report -------------------------------------------------------------------------------------
cmd="./bench/suite.sh"
for v in PROFILES GET_DELAY PUT_DELAY MBPS SIZE RUNTIME REPS COLD_IOS RECORDS MEM_SIZE URLDISK_REV URLDISK_BIN; do
	def=$(case $v in PROFILES) echo "loopback remote" ;; GET_DELAY) echo 20ms ;; PUT_DELAY) echo 30ms ;; MBPS) echo 100 ;;
		SIZE) echo 512M ;; RUNTIME) echo 3 ;; REPS) echo 2 ;; COLD_IOS) echo 200 ;; RECORDS) echo 10000 ;; MEM_SIZE) echo 4G ;; URLDISK_REV) echo HEAD ;; *) echo ;; esac)
	[[ ${!v:-} == "$def" ]] || cmd="$v=\"${!v:-}\" $cmd"
done
{
	meta_common
	echo "s3backer=$(s3backer --version 2>&1 | head -1)"
	echo "versitygw=$(go version -m "$(command -v versitygw)" 2>/dev/null | awk '$1 == "mod" {print $3}')"
	echo "cmd=$cmd"
	echo "profiles=$PROFILES"
	echo "size=$SIZE"
	echo "bytes=$bytes"
	echo "runtime=$RUNTIME"
	echo "reps=$REPS"
	echo "records=$RECORDS"
	echo "mem_size=$MEM_SIZE"
	echo "elapsed=$(($(date +%s) - started))"
	for job in "${JOBS[@]}"; do echo "args.$job=${JOBARGS[$job]}"; done
	echo "nbdkit_serve=nbdkit --unix SOCK --foreground file FILE"
	echo "versitygw_cmd=ROOT_ACCESS_KEY=k ROOT_SECRET_KEY=s versitygw --port 127.0.0.1:PORT posix DIR"
} >"$OUT/meta"
python3 "$here/suite-report.py" "$OUT" >"$OUT/report.md"
cat "$OUT/report.md"
if [[ -n $DOC ]]; then
	python3 "$here/suite-report.py" --splice "$DOC" "$OUT/report.md"
	log "updated the suite section of $DOC"
fi
log "done in $(($(date +%s) - started))s; report and raw results in $OUT"

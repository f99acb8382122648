# lib.sh — shared machinery of the benchmark scripts (nbd-fio.sh, suite.sh).
# Source it after setting:
#   LOGTAG   prefix of log lines, e.g. nbd-fio
#   repo     repository root
#   WORKDIR  scratch directory (pool, caches, sockets, logs)
#   OUT      results directory (fio JSON under $OUT/json, or under
#            $RES/json if RES is set: suite.sh's per-profile results)
# The helpers below use these globals (set by the caller before use):
#   bin, ud_rev        set by build_urldisk
#   ud_url, ud_sock, cache   urldisk serve's volume URL, socket and cache dir
#   nk_sock, nk_file   nbdkit's socket and raw file
#   FIOARGS[target]    how fio reaches a target (e.g. --ioengine=nbd --uri=...)
#   PIDVAR[target]     name of the variable holding the target's server pid
# shellcheck shell=bash

log() { printf '[%s %s] %s\n' "${LOGTAG:-bench}" "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# need_pkgs CMD=PKG ...: apt-get install the packages of missing commands.
need_pkgs() {
	local need=() kv
	for kv in "$@"; do
		command -v "${kv%%=*}" >/dev/null || need+=("${kv#*=}")
	done
	((${#need[@]})) || return 0
	mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
	log "installing ${need[*]}"
	[[ $(id -u) == 0 ]] || die "missing ${need[*]}; run as root or install them"
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >&2 ||
		{ apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >&2; }
}

# check_fio_nbd: fio's nbd engine is optional at build time; Debian's fio has
# it. There is no fallback: without it we would measure a different client.
check_fio_nbd() {
	fio --enghelp=nbd 2>/dev/null | grep -q '^uri' ||
		die "this fio ($(fio --version)) has no nbd engine (fio --enghelp=nbd); install a fio built with libnbd"
	nbdkit file --version >/dev/null 2>&1 || die "nbdkit has no file plugin (apt-get install nbdkit)"
}

# finish_workdir, at exit: the servers' logs go to $OUT, and $WORKDIR is
# removed unless KEEP=1.
finish_workdir() {
	cp "$WORKDIR"/*.log "$OUT"/ 2>/dev/null || true
	if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORKDIR"; else rm -rf "$WORKDIR"; fi
}
# fio_cpu JSON URI FIO-ARGS...: one fio run (nbd engine, URI, $bytes) with
# its JSON report in JSON; sets fio_ms to fio's CPU time (user + system,
# ms), its rusage as the shell's `times` reports it for the subshell.
fio_cpu() {
	local json=$1 uri=$2 t
	shift 2
	t=$(
		timeout 600 fio --ioengine=nbd --uri="$uri" --size="$bytes" \
			--output-format=json --output="$json" "$@" >>"$WORKDIR/fio.log" 2>&1 ||
			{ tail -5 "$WORKDIR/fio.log" >&2; exit 1; }
		times # no pipe: a pipeline would run it in a fork with no children
	) || die "fio $json failed"
	t=${t##*$'\n'} # the second line: the children's "UmS.SSSs SmS.SSSs"
	fio_ms=$(python3 -c 'import re, sys; print(round(sum(int(m) * 60000 + float(s) * 1000 for m, s in re.findall(r"(\d+)m([\d.]+)s", sys.argv[1]))))' "$t")
}
stop_pid() { # pid: SIGTERM, wait; returns the exit status
	local pid=$1 rc=0
	[[ -n $pid ]] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	wait "$pid" || rc=$?
	return $rc
}

# build_urldisk: sets bin and ud_rev from URLDISK_BIN, or URLDISK_REV
# (default HEAD: a clean `git archive` build; "worktree": the tree as it is).
build_urldisk() {
	local rev=${URLDISK_REV:-HEAD}
	if [[ -n ${URLDISK_BIN:-} ]]; then
		bin=$URLDISK_BIN
		ud_rev="given binary $(basename "$bin")"
	elif [[ $rev == worktree ]]; then
		bin=$WORKDIR/urldisk
		(cd "$repo" && go build -o "$bin" ./cmd/urldisk)
		ud_rev="$(git -C "$repo" describe --always --dirty --abbrev=12) (working tree)"
	else
		bin=$WORKDIR/urldisk
		mkdir -p "$WORKDIR/src"
		git -C "$repo" archive "$rev" | tar -x -C "$WORKDIR/src"
		(cd "$WORKDIR/src" && go build -o "$bin" ./cmd/urldisk)
		ud_rev="$(git -C "$repo" rev-parse --short=12 "$rev") (clean build of $rev)"
	fi
}

ud_pid= nk_pid=
start_urldisk() { # [extra serve flags]: serve $ud_url on $ud_sock with cache $cache
	: >"$WORKDIR/serve.out"
	"$bin" serve "$ud_url" --listen "unix:$ud_sock" --cache "$cache" --cache-size 2G "$@" \
		>"$WORKDIR/serve.out" 2>>"$WORKDIR/urldisk.log" &
	ud_pid=$!
	wait_ready "urldisk serve" "$ud_pid" "$WORKDIR/serve.out" "$WORKDIR/urldisk.log" 600
}
stop_urldisk() {
	stop_server "urldisk serve" "$ud_pid" "$WORKDIR/urldisk.log"
	ud_pid=
}
# wait_ready WHAT PID OUT LOG TRIES: wait (TRIES x 0.1 s) until the server
# PID prints "ready" on its stdout (OUT); dies with LOG's tail if it exits.
wait_ready() {
	local what=$1 pid=$2 out=$3 errlog=$4 tries=$5 i
	for ((i = 0; i < tries; i++)); do
		grep -qx ready "$out" && return 0
		kill -0 "$pid" 2>/dev/null || { tail -20 "$errlog" >&2; die "$what exited"; }
		sleep 0.1
	done
	die "$what not ready after $((tries / 10))s"
}
# stop_server WHAT PID LOG: SIGTERM and wait; dies with LOG's tail unless
# it exits 0.
stop_server() {
	local what=$1 pid=$2 errlog=$3 rc=0
	stop_pid "$pid" || rc=$?
	((rc == 0)) || { tail -20 "$errlog" >&2; die "$what exited $rc on SIGTERM"; }
}
start_nbdkit() {
	rm -f "$nk_sock"
	nbdkit --unix "$nk_sock" --foreground file "$nk_file" 2>>"$WORKDIR/nbdkit.log" &
	nk_pid=$!
	local i
	for ((i = 0; i < 300; i++)); do
		[[ -S $nk_sock ]] && nbdinfo --size "nbd+unix:///?socket=$nk_sock" >/dev/null 2>&1 && return 0
		kill -0 "$nk_pid" 2>/dev/null || { cat "$WORKDIR/nbdkit.log" >&2; die "nbdkit exited"; }
		sleep 0.1
	done
	die "nbdkit not ready after 30s"
}
stop_nbdkit() { stop_pid "$nk_pid" || true; nk_pid=; }

# start_store KIND: a local object store server on a random free port,
# with its data under $WORKDIR/KIND (or in memory), and the bucket "bench"
# made by $WORKDIR/s3raw; sets srv_pid, endpoint and pool_q (the query a
# pool URL of that store needs). KIND is versitygw (posix backend), minio,
# fakegcs (fake-gcs-server) or azurite (its blob service). The flags are
# those of the test servers in internal/testutil (see there for why).
# Credentials come from the environment: AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY become the S3 servers' root credentials (MinIO
# wants a secret of 8 characters or more); azurite needs
# AZURE_STORAGE_ACCOUNT=devstoreaccount1 and its well-known AZURE_STORAGE_KEY.
srv_pid=
start_store() {
	local kind=$1 try i port mk
	for try in 1 2 3 4 5; do
		port=$((20000 + RANDOM % 30000))
		endpoint=http://127.0.0.1:$port
		mk=(-kind s3)
		pool_q="endpoint=$endpoint&region=${AWS_REGION:-us-east-1}&use_path_style=true"
		case $kind in
		versitygw)
			mkdir -p "$WORKDIR/gw"
			ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
				versitygw --port "127.0.0.1:$port" posix "$WORKDIR/gw" >>"$WORKDIR/$kind.log" 2>&1 &
			;;
		minio)
			mkdir -p "$WORKDIR/minio"
			MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY MINIO_BROWSER=off MINIO_UPDATE=off \
				minio server "$WORKDIR/minio" --quiet --address "127.0.0.1:$port" >>"$WORKDIR/$kind.log" 2>&1 &
			;;
		fakegcs)
			fake-gcs-server -scheme http -host 127.0.0.1 -port "$port" -backend memory \
				-external-url "$endpoint" -public-host "127.0.0.1:$port" -log-level warn >>"$WORKDIR/$kind.log" 2>&1 &
			mk=(-kind gs)
			pool_q="endpoint=$endpoint"
			;;
		azurite)
			"$(azurite_bin)" --blobHost 127.0.0.1 --blobPort "$port" --disableTelemetry --skipApiVersionCheck \
				--inMemoryPersistence --silent >>"$WORKDIR/$kind.log" 2>&1 &
			endpoint=$endpoint/$AZURE_STORAGE_ACCOUNT
			mk=(-kind azblob)
			pool_q="endpoint=$endpoint"
			;;
		*) die "start_store: unknown store $kind" ;;
		esac
		srv_pid=$!
		for ((i = 0; i < 300; i++)); do
			kill -0 "$srv_pid" 2>/dev/null || break
			"$WORKDIR/s3raw" mkbucket "${mk[@]}" -endpoint "$endpoint" bench 2>/dev/null && return 0
			sleep 0.1
		done
		stop_pid "$srv_pid" || true
		srv_pid=
	done
	tail -20 "$WORKDIR/$kind.log" >&2
	die "$kind did not start"
}

# azurite_bin: azurite-blob from PATH or where scripts/install-test-deps.sh
# puts it.
azurite_bin() {
	local b
	b=$(command -v azurite-blob) || b=$(go env GOPATH)/azurite/node_modules/.bin/azurite-blob
	[[ -x $b ]] || die "azurite-blob not found; run scripts/install-test-deps.sh"
	echo "$b"
}

# start_gw: start_store versitygw, the S3 server of every other bench
# script; sets gw_pid, gw_port and endpoint. Needs AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY in the environment.
gw_pid=
start_gw() {
	start_store versitygw
	gw_pid=$srv_pid
	gw_port=${endpoint##*:}
}

# ud_write_read_jobs TAG REP [serve flags]: the urldisk jobs of
# encrypt.sh and stores.sh, on the fresh volume $ud_url (FIOARGS[urldisk]
# reaching it on $ud_sock), each serve starting with an empty cache:
#   seqwrite-TAG       1M sequential write, QD8, SIZE bytes, then one flush
#   seqread-cold-TAG   1M sequential read of SIZE, QD8, after restarting
#                      serve with an empty cache: every byte from the store,
#                      in the records seqwrite wrote (before randwrite-qd1
#                      scatters 4k records over the volume)
#   randwrite-qd1-TAG  4k random write, QD1, a flush after every write,
#                      RUNTIME seconds
# Results as run_fio writes them (target urldisk, repetition REP).
ud_write_read_jobs() {
	local tag=$1 rep=$2
	shift 2
	rm -rf "$cache"
	start_urldisk "$@"
	log "rep $rep $tag: seqwrite"
	run_fio urldisk "seqwrite-$tag" "$rep" --rw=write --bs=1M --iodepth=8 --size="$SIZE" --end_fsync=1
	stop_urldisk
	rm -rf "$cache"
	start_urldisk "$@"
	log "rep $rep $tag: seqread-cold"
	run_fio urldisk "seqread-cold-$tag" "$rep" --rw=read --bs=1M --iodepth=8 --size="$SIZE"
	log "rep $rep $tag: randwrite-qd1"
	run_fio urldisk "randwrite-qd1-$tag" "$rep" --rw=randwrite --bs=4k --iodepth=1 --fsync=1 --size="$SIZE" \
		--time_based --runtime="$RUNTIME"
	stop_urldisk
}

server_pid() { echo "${!PIDVAR[$1]}"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime+stime of the server process

# run_fio TARGET JOB REP fio-args...: JSON to $OUT/json/JOB.TARGET.REP.json and
# the server's CPU time during the run to ....cpu (clock ticks, see getconf
# CLK_TCK). FIOARGS[TARGET] comes first, so the job's arguments override it.
run_fio() {
	local target=$1 job=$2 rep=$3
	shift 3
	local f=${RES:-$OUT}/json/$job.$target.$rep.json pid t0
	pid=$(server_pid "$target")
	t0=$(cpu_ticks "$pid")
	# shellcheck disable=SC2086 # FIOARGS are word lists
	timeout 600 fio --name="$job" ${FIOARGS[$target]} --output-format=json --output="$f" "$@" \
		>>"$WORKDIR/fio.log" 2>&1 ||
		{ tail -5 "$WORKDIR/fio.log" >&2; server_check "$target" "$pid"; die "fio $job on $target failed"; }
	server_check "$target" "$pid"
	echo $(($(cpu_ticks "$pid") - t0)) >"${f%.json}.cpu"
}
server_check() { # target pid: die with its log and exit status if the server is gone
	kill -0 "$2" 2>/dev/null && return 0
	local rc=0
	wait "$2" || rc=$?
	printf -v "${PIDVAR[$1]}" '%s' ''
	tail -20 "$WORKDIR/$1.log" >&2
	die "$1 (pid $2) died during the run, exit status $rc (see $OUT/$1.log)"
}

# meta_common: the machine and tool versions, as key=value lines.
meta_common() {
	echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "nproc=$(nproc)"
	echo "cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	echo "kernel=$(uname -r)"
	echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
	echo "fio=$(fio --version)"
	echo "nbdkit=$(nbdkit --version | head -1)"
	echo "libnbd=$(nbdcopy --version | sed -n 's/^libnbd //p')"
	echo "urldisk=$ud_rev"
	echo "go=$(go version 2>/dev/null | awk '{print $3}')"
	echo "clk_tck=$(getconf CLK_TCK)"
}

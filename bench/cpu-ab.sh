#!/usr/bin/env bash
# cpu-ab.sh — serve's CPU per MiB on the suite's 1M sequential write, two
# binaries interleaved (issue 10).
#
# bench/cpu-account.sh runs one binary for minutes; on a shared machine the
# load drifts between two such runs by more than a change of a few tens of
# percent in serve's CPU per MiB. This script starts one versitygw and runs
# the same job (fio 1M sequential write QD8 + final flush, 512 MiB, as in
# suite.sh and cpu-account.sh) through `urldisk serve` OLD, then NEW, N
# times in turn, each binary on its own volume and cache, so both see the
# same load. One line per run: serve's and versitygw's CPU-ms per MiB
# (utime+stime), MiB/s (wall clock, load-dependent) and the load average.
#
# JOB=read measures the suite's cold 1M sequential read QD8 instead: each
# binary's volume is written once (fio, as above), then every run starts
# serve with an empty cache and reads the whole volume.
#
# Usage: flock /tmp/urldisk-bench.lock ./bench/cpu-ab.sh OLD-BIN NEW-BIN N
#   (build a revision's binary with: git archive REV | tar -x -C DIR &&
#    (cd DIR && go build -o BIN ./cmd/urldisk))
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
[[ $# == 3 ]] || { echo "usage: $0 OLD-BIN NEW-BIN N" >&2; exit 2; }
OLD=$1 NEW=$2 N=$3
JOB=${JOB:-write}
case $JOB in
write) job=(--name=seqwrite --rw=write --end_fsync=1) ;;
read) job=(--name=seqread --rw=read) ;;
*) echo "$0: JOB=$JOB: want write or read" >&2; exit 2 ;;
esac
[[ -x $OLD && -x $NEW ]] || { echo "$0: $OLD or $NEW is not an executable" >&2; exit 2; }
LOGTAG=cpu-ab
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
export PATH="$PATH:$(go env GOPATH)/bin"
bytes=$(numfmt --from=iec 512M)
WORKDIR=$(mktemp -d /var/tmp/cpu-ab.XXXXXX)
cleanup() { stop_pid "$ud_pid" || true; stop_pid "$gw_pid" || true; rm -rf "$WORKDIR"; }
trap cleanup EXIT
(cd "$repo" && go build -o "$WORKDIR/s3raw" ./bench/s3raw)
export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1
unset AWS_CA_BUNDLE AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN
start_gw
tck=$(getconf CLK_TCK)
ud_sock=$WORKDIR/ud.sock
uri="nbd+unix:///vol?socket=$ud_sock"
for tag in old new; do
	bin=$OLD; [[ $tag == new ]] && bin=$NEW
	cache=$WORKDIR/cache-$tag
	ud_url="s3://bench/ab-$tag/vol?endpoint=$endpoint&region=us-east-1&use_path_style=true"
	start_urldisk --create --size "$bytes"
	if [[ $JOB == read ]]; then
		fio --name=fill --ioengine=nbd --uri="$uri" --size="$bytes" --rw=write --bs=1M --iodepth=8 --end_fsync=1 --output-format=json >/dev/null
	fi
	stop_urldisk
done
for ((i = 1; i <= N; i++)); do
	for tag in old new; do
		bin=$OLD; [[ $tag == new ]] && bin=$NEW
		cache=$WORKDIR/cache-$tag
		ud_url="s3://bench/ab-$tag/vol?endpoint=$endpoint&region=us-east-1&use_path_style=true"
		[[ $JOB == read ]] && rm -rf "$cache"
		start_urldisk
		s0=$(cpu_ticks "$ud_pid") g0=$(cpu_ticks "$gw_pid") t0=$(date +%s%N)
		fio "${job[@]}" --ioengine=nbd --uri="$uri" --size="$bytes" --bs=1M --iodepth=8 --runtime=3 --output-format=json --output="$WORKDIR/f.json" >/dev/null
		t1=$(date +%s%N) s1=$(cpu_ticks "$ud_pid") g1=$(cpu_ticks "$gw_pid")
		moved=$(python3 -c "import json;print(json.load(open('$WORKDIR/f.json'))['jobs'][0]['$JOB']['io_bytes'])")
		stop_urldisk
		python3 -c "
m=$moved/2**20
print('$tag', $i, 'serve %.2f gw %.2f MiB/s %.0f load %s' % (($s1-$s0)*1000/$tck/m, ($g1-$g0)*1000/$tck/m, m/(($t1-$t0)/1e9), open('/proc/loadavg').read().split()[0]))"
	done
done

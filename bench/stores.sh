#!/usr/bin/env bash
# stores.sh — every object store of the compatibility table
# (docs/object-stores.md), raw and through urldisk, in one run (issue 14).
#
# Per store (started here on loopback, as the tests start it):
#   raw      bench/s3raw -url: the store through urldisk's own objstore.Store
#            (same SDK and client configuration as urldisk): 4 MiB
#            create-if-absent PUT x8 (write), 4 KiB PUT latency one at a
#            time, 4 MiB GET x8 (cold read)
#   urldisk  ud_write_read_jobs (lib.sh) on a fresh volume in that store:
#            1M seqwrite + flush, 4k write + flush QD1, cold 1M seqread
#   listing  bench/s3raw listafter: attach's listing of the records after
#            a snapshot (objstore.ListAfter) in a log of LISTN records,
#            against a List of all of them
# and Markdown tables of the medians, with the ratios urldisk/raw.
#
# Stores: versitygw, minio (s3://), fakegcs (gs://), azurite (azblob://).
# The emulators are not the services: only the ratios within one run say
# something, not the absolute numbers.
#
# Usage: flock /tmp/urldisk-bench.lock ./bench/stores.sh
# Knobs: STORES="versitygw minio fakegcs azurite" SIZE=256M RUNTIME=5
#        REPS=3 RAWDUR=2s LISTN=10000 WORKDIR=... KEEP=1
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
LOGTAG=stores
STORES=${STORES:-versitygw minio fakegcs azurite}
SIZE=${SIZE:-256M} RUNTIME=${RUNTIME:-5} REPS=${REPS:-3} RAWDUR=${RAWDUR:-2s} LISTN=${LISTN:-10000}
WORKDIR=${WORKDIR:-$(mktemp -d /var/tmp/urldisk-storesbench.XXXXXX)}
OUT=${OUT:-$WORKDIR/out}
mkdir -p "$OUT/json" "$OUT/raw"
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
export PATH=$PATH:$(go env GOPATH)/bin
check_fio_nbd
cleanup() {
	stop_pid "$ud_pid" || true
	stop_pid "$srv_pid" || true
	[[ -n ${KEEP:-} ]] || rm -rf "$WORKDIR/gw" "$WORKDIR/minio" "$WORKDIR/cache"
}
trap cleanup EXIT
URLDISK_REV=${URLDISK_REV:-worktree} build_urldisk
(cd "$repo" && go build -o "$WORKDIR/s3raw" ./bench/s3raw)
# Test-only credentials of servers started here (the azurite key is its
# published well-known development key).
export AWS_ACCESS_KEY_ID=urldisk-bench AWS_SECRET_ACCESS_KEY=urldisk-bench-secret AWS_REGION=us-east-1
export AZURE_STORAGE_ACCOUNT=devstoreaccount1 AZURE_STORAGE_CONNECTION_STRING=
export AZURE_STORAGE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
unset AWS_CA_BUNDLE
ud_sock=$WORKDIR/ud.sock cache=$WORKDIR/cache
declare -A FIOARGS PIDVAR scheme=([versitygw]=s3 [minio]=s3 [fakegcs]=gs [azurite]=azblob)
PIDVAR[urldisk]=ud_pid
RES=$OUT

{
	meta_common
	echo "command=SIZE=$SIZE RUNTIME=$RUNTIME REPS=$REPS RAWDUR=$RAWDUR LISTN=$LISTN STORES=\"$STORES\" ./bench/stores.sh"
} >"$OUT/meta.txt"

# store_version KIND: the version of the server binary start_store runs.
store_version() {
	local b=$1
	case $1 in
	azurite) "$(azurite_bin)" --version; return ;;
	fakegcs) b=fake-gcs-server ;;
	esac
	command -v "$b" >/dev/null || die "$b not found; run scripts/install-test-deps.sh"
	go version -m "$(command -v "$b")" | awk '$1 == "mod" {print $3; exit}'
}

for store in $STORES; do
	[[ -n ${scheme[$store]:-} ]] || die "unknown store $store (want: ${!scheme[*]})"
	v=$(store_version "$store") # an assignment, so that set -e sees a failure
	echo "$store=$v" >>"$OUT/meta.txt"
	log "$store: starting"
	start_store "$store"
	pool="${scheme[$store]}://bench/pool"
	for ((rep = 1; rep <= REPS; rep++)); do
		log "$store: raw run $rep/$REPS"
		"$WORKDIR/s3raw" bench -url "$pool?$pool_q" -prefix "raw-$rep/" -dur "$RAWDUR" -workers 8 \
			>"$OUT/raw/$store.$rep.json" 2>>"$WORKDIR/s3raw.log" ||
			{ tail -5 "$WORKDIR/s3raw.log" >&2; die "s3raw on $store failed"; }
		ud_url="$pool/v$rep?$pool_q"
		"$bin" create "$ud_url" --size "$SIZE" >/dev/null 2>>"$WORKDIR/urldisk.log" ||
			{ tail -5 "$WORKDIR/urldisk.log" >&2; die "urldisk create on $store failed"; }
		FIOARGS[urldisk]="--ioengine=nbd --uri=nbd+unix:///v$rep?socket=$ud_sock"
		ud_write_read_jobs "$store" "$rep"
	done
	log "$store: listing past $LISTN records"
	"$WORKDIR/s3raw" listafter -url "$pool?$pool_q" -n "$LISTN" >"$OUT/raw/$store.list.json" 2>>"$WORKDIR/s3raw.log" ||
		{ tail -5 "$WORKDIR/s3raw.log" >&2; die "s3raw listafter on $store failed"; }
	stop_pid "$srv_pid" || true
	srv_pid=
done

python3 - "$OUT" "$REPS" "$STORES" <<'PY'
import json, os, statistics, sys
out, reps, stores = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
med = statistics.median
def fio(job, store, unit):
    xs = []
    for r in range(1, reps + 1):
        j = json.load(open(os.path.join(out, "json", f"{job}-{store}.urldisk.{r}.json")))["jobs"][0]
        side = j["read"] if job.startswith("seqread") else j["write"]
        xs.append(side["bw_bytes"] / 1e6 if unit == "MB/s" else side["iops"])
    return med(xs)
def raw(store, key):
    return med(json.load(open(os.path.join(out, "raw", f"{store}.{r}.json")))[key] for r in range(1, reps + 1))
print("| store | cold read: raw 4 MiB GET x8 MB/s | urldisk cold 1M seqread MB/s | ratio "
      "| write: raw 4 MiB PUT x8 MB/s | urldisk 1M seqwrite+flush MB/s | ratio "
      "| small write: raw 4 KiB PUT ops/s (1/mean) | urldisk 4k write+flush QD1 IOPS | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|")
for s in stores:
    g, r = raw(s, "get4m_mbps"), fio("seqread-cold", s, "MB/s")
    p, w = raw(s, "put4m_mbps"), fio("seqwrite", s, "MB/s")
    k, q = 1e6 / raw(s, "put4k_mean_us"), fio("randwrite-qd1", s, "IOPS")
    print(f"| {s} | {g:.0f} | {r:.0f} | {r/g:.2f} | {p:.0f} | {w:.0f} | {w/p:.2f} | {k:.0f} | {q:.0f} | {q/k:.2f} |")
print()
print("| store | records in the log | List of all, ms | ListAfter past all but 10 (attach), ms |")
print("|---|---|---|---|")
for s in stores:
    l = json.load(open(os.path.join(out, "raw", f"{s}.list.json")))
    print(f"| {s} | {l['keys']} | {l['list_all_ms']:.0f} | {l['list_after_ms']:.0f} |")
PY

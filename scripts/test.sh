#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh machine:
#   ./scripts/test.sh
# Installs what the tests need, then vet, tests (with real S3, NBD clients,
# filesystems and VMs), the race detector on the engine packages, and a short
# run of every fuzz target. Bounded to about 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
export PATH="$PATH:$(go env GOPATH)/bin"
unset AWS_CA_BUNDLE  # some S3 clients choke on it; our servers are plain HTTP on loopback

echo "== go vet"
go vet ./...

echo "== go test"
go test -count=1 -timeout 30m ./...

echo "== go test -race (engine packages)"
URLDISK_SIM_SEEDS=300 URLDISK_MODEL_OPS=600 go test -race -count=1 -timeout 20m \
  ./internal/format/... ./internal/extmap/... ./internal/journal/... ./internal/cache/... \
  ./internal/objstore/... ./internal/volume/... ./internal/nbd/... \
  ./internal/fleet/... ./internal/agent/...

echo "== fuzz (brief)"
# A count, not a duration: with a duration, Go <= 1.26's fuzz coordinator can
# report "context deadline exceeded" as a failure at the deadline with no
# crasher (go.dev/issue/75804). 20000 inputs take 1-30 s per target here.
FUZZTIME="${URLDISK_FUZZTIME:-20000x}"
for pkg in $(go list ./internal/...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "-- $pkg $target"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" >/tmp/urldisk-fuzz.log 2>&1 || { cat /tmp/urldisk-fuzz.log; exit 1; }
  done
done
echo "== all tests passed"

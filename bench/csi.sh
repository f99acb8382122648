#!/usr/bin/env bash
# csi.sh — the CSI driver's NodeStage and failover times (issue 11), on the
# loopback profile (a local versitygw), as root with real mounts:
#   first-stage-ms  NodeStageVolume of a new 1 GiB volume: serve attach,
#                   nbdfuse, loop device, mkfs.ext4, mount
#   restage-ms      NodeStageVolume of the same volume again (no mkfs)
#   failover-ms     node A's serve and nbdfuse frozen with SIGSTOP; node B's
#                   NodeStageVolume call until B's mount answers with the
#                   file A fsynced
# Each is the mean over N rounds (internal/csi BenchmarkNodeStage and
# BenchmarkFailover).
#
# Usage: flock /tmp/urldisk-bench.lock ./bench/csi.sh
# Knobs: N=5
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
export PATH="$PATH:$(go env GOPATH)/bin"
unset AWS_CA_BUNDLE
go test -count=1 -run '^$' -bench 'BenchmarkNodeStage|BenchmarkFailover' -benchtime "${N}x" ./internal/csi/ 2>&1 |
  grep -E '^(Benchmark|goos|goarch|cpu|ok|FAIL|---)|_test\.go:'

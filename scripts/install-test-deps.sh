#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine:
# NBD clients and servers, fio, FUSE, ext4 tools, qemu, and versitygw (a
# real S3 server). Safe to run again: it installs only what is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# command -> Debian package
declare -A pkgs=(
  [qemu-img]=qemu-utils [qemu-io]=qemu-utils [qemu-nbd]=qemu-utils
  [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin [nbdfuse]=nbdfuse
  [nbdkit]=nbdkit [fio]=fio [fusermount3]=fuse3
  [mkfs.ext4]=e2fsprogs [losetup]=mount
  [qemu-system-x86_64]=qemu-system-x86 [cpio]=cpio
  [debugfs]=e2fsprogs [e2fsck]=e2fsprogs
)
missing=()
for cmd in "${!pkgs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkgs[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

GOBIN_DIR="$(go env GOPATH)/bin"
if ! command -v versitygw >/dev/null 2>&1 && [ ! -x "$GOBIN_DIR/versitygw" ]; then
  echo "installing versitygw v1.8.0"
  go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi
echo "test dependencies ready"

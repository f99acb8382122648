#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine:
# NBD clients and servers, fio, FUSE, ext4 tools, qemu, and versitygw (a
# real S3 server), MinIO, fake-gcs-server and azurite. Safe to run again: it installs only what is missing.
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
  [blkid]=util-linux [blockdev]=util-linux [prlimit]=util-linux [umount]=mount [mkfs.xfs]=xfsprogs
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
# go_tool NAME PACKAGE VERSION: go install PACKAGE@VERSION unless NAME (in
# PATH or $GOBIN_DIR) is a build of exactly that module version.
go_tool() {
  local name=$1 pkg=$2 version=$3 bin
  bin=$(command -v "$name" 2>/dev/null || echo "$GOBIN_DIR/$name")
  if [ -x "$bin" ] && go version -m "$bin" 2>/dev/null | awk '$1 == "mod" {print $3; exit}' | grep -qxF "$version"; then
    return 0
  fi
  echo "installing $name $version"
  local t0=$SECONDS
  go install "$pkg@$version"
  echo "installed $name $version in $((SECONDS - t0)) s"
}
go_tool versitygw github.com/versity/versitygw/cmd/versitygw v1.8.0
# The other object stores of the compatibility matrix (docs/object-stores.md).
# MinIO is the slow one: a cold install (module download and build) took
# 11 min 40 s wall on a busy 2-core machine, 2 min for versitygw and for
# fake-gcs-server, 41 s for azurite (npm). We found nothing faster that is
# reachable: Debian packages no MinIO server, the npm packages named after
# it are clients, and SeaweedFS's weed cannot be go-installed (replace
# directives). A machine that keeps $(go env GOPATH)/bin skips it. Pinned:
# the version the compatibility table was measured with.
go_tool fake-gcs-server github.com/fsouza/fake-gcs-server v1.56.1
go_tool minio github.com/minio/minio v0.0.0-20260212201848-7aac2a2c5b7c
AZURITE_DIR="$(go env GOPATH)/azurite"
if ! command -v azurite-blob >/dev/null 2>&1 && [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "installing azurite 3.35.0 into $AZURITE_DIR"
  mkdir -p "$AZURITE_DIR"
  npm install --prefix "$AZURITE_DIR" --no-audit --no-fund azurite@3.35.0 >/dev/null
fi
echo "test dependencies ready"

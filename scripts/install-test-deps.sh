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
# The other object stores of the compatibility matrix (docs/object-stores.md).
# CI should cache $(go env GOPATH)/bin and $(go env GOPATH)/azurite: MinIO
# takes about 5 CPU-minutes to build (9.5 min wall on a busy 2-core machine).
if ! command -v fake-gcs-server >/dev/null 2>&1 && [ ! -x "$GOBIN_DIR/fake-gcs-server" ]; then
  echo "installing fake-gcs-server v1.56.1"
  go install github.com/fsouza/fake-gcs-server@v1.56.1
fi
if ! command -v minio >/dev/null 2>&1 && [ ! -x "$GOBIN_DIR/minio" ]; then
  echo "installing minio (go install, several minutes)"
  go install github.com/minio/minio@latest
fi
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

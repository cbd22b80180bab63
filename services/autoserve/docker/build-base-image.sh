#!/usr/bin/env bash
# Build a Debian 12 + Python base image with no registry (CI machines reach none), from
# this machine's own apt mirror. Idempotent: an existing image is never overwritten.
# Usage: build-base-image.sh [IMAGE]   (default mlops-toolkit/python-base:bookworm)
set -euo pipefail
IMAGE=${1:-mlops-toolkit/python-base:bookworm}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE already exists; not rebuilding"
    exit 0
fi
MIRROR=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | head -n 1 | awk '{print $2}')
[ -n "$MIRROR" ] || MIRROR=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | head -n 1 | awk '{print $2}')
[ -n "$MIRROR" ] || { echo "no Debian mirror found in /etc/apt" >&2; exit 1; }
ROOTFS=$(mktemp -d /tmp/mlops-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
# The machine's network settings: resolver, apt sources and proxy config, CA certificates.
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
cp -a /etc/apt/sources.list.d/. "$ROOTFS/etc/apt/sources.list.d/"
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$ROOTFS/etc/apt/sources.list"
cp -a /etc/apt/apt.conf.d/. "$ROOTFS/etc/apt/apt.conf.d/"
mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
cp -a /usr/local/share/ca-certificates/. "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$ROOTFS" apt-get update -qq
chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-pip python-is-python3 ca-certificates >/dev/null
chroot "$ROOTFS" update-ca-certificates >/dev/null
chroot "$ROOTFS" apt-get clean
tar -C "$ROOTFS" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
echo "built $IMAGE"

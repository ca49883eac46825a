#!/bin/sh
# Build the base image for air-gapped builds without any container registry: debootstrap a
# minimal Debian rootfs from a Debian mirror (the plant's own mirror, or deb.debian.org) and
# `docker import` it. Every image of docker-compose.airgap.yml starts FROM it.
#
#   sudo deploy/airgap/base-image.sh [IMAGE] [SUITE] [MIRROR]
#
# Defaults: furnace-sentinel/debian:bookworm, bookworm, http://deb.debian.org/debian.
# Needs root, debootstrap (`apt-get install debootstrap`) and a running dockerd. Does nothing
# when IMAGE already exists (FORCE=1 rebuilds it). Takes 1-5 minutes.
#
# The image trusts the CA certificates the host added locally (EXTRA_CA_DIR, by default
# /usr/local/share/ca-certificates: a plant's TLS-inspecting proxy or internal package mirror),
# and pip in it uses the system store (/etc/pip.conf), so `pip install` in the builds reaches
# whatever PyPI or mirror the host reaches. EXTRA_CA_DIR= (empty) copies none.
set -eu

IMAGE=${1:-furnace-sentinel/debian:bookworm}
SUITE=${2:-bookworm}
MIRROR=${3:-http://deb.debian.org/debian}
EXTRA_CA_DIR=${EXTRA_CA_DIR-/usr/local/share/ca-certificates}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base-image: $IMAGE exists (FORCE=1 rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "base-image: debootstrap not found: apt-get install debootstrap" >&2
    exit 1
}

ROOTFS=$(mktemp -d /var/tmp/furnace-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT INT TERM

# minbase: apt and dpkg only; ca-certificates so pip and apt can use https mirrors.
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR"

# What the official debian images do: no recommends, no docs, no apt caches in layers.
cat >"$ROOTFS/etc/apt/apt.conf.d/90container" <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
CONF
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/90container" <<'CONF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CONF
echo "deb $MIRROR $SUITE main" >"$ROOTFS/etc/apt/sources.list"
if [ -n "$EXTRA_CA_DIR" ] && ls "$EXTRA_CA_DIR"/*.crt >/dev/null 2>&1; then
    cp "$EXTRA_CA_DIR"/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*

tar -C "$ROOTFS" --numeric-owner -c . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        - "$IMAGE"
echo "base-image: $IMAGE imported from $SUITE ($MIRROR)"

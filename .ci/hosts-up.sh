#!/usr/bin/env bash
# Prepare this machine for the emulated-host tests (tests/multihost): they make
# network namespaces on a bridge, veth pairs and tmpfs mounts themselves, as root,
# and remove them after; this script only installs the tools and checks that the
# kernel lets root make them. Idempotent.
#
# Usage: .ci/hosts-up.sh      (as root; CI runs it from .ci/run)
set -euo pipefail

log() { echo "hosts-up: $*"; }
die() { echo "hosts-up: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, bridges, mounts); got uid $(id -u)"

missing=()
command -v ip >/dev/null || missing+=(iproute2)
{ command -v unshare >/dev/null && command -v nsenter >/dev/null; } || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A probe of everything the tests do, under a name of this shell's pid (removed on exit).
probe="cplprobe$$"
cleanup() { ip netns del "$probe" 2>/dev/null || true; ip link del "${probe}b" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$probe" || die "ip netns add failed: no network namespaces here"
ip link add "${probe}b" type bridge || die "cannot make a bridge"
ip link add "${probe}v" type veth peer name eth0 netns "$probe" || die "cannot make a veth pair"
ip link set "${probe}v" master "${probe}b" || die "cannot join a veth to a bridge"
ip netns exec "$probe" unshare --mount --uts --propagation private \
  sh -c 'hostname probe && mount -t tmpfs -o size=1m tmpfs /dev/shm' || die "no private hostname or /dev/shm in a namespace"
log "network namespaces, bridges, veth pairs and private /dev/shm work; $(ip -V)"

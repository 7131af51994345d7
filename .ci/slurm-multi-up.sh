#!/usr/bin/env bash
# Start a Slurm of several nodes on emulated hosts, for tests/multihost/test_slurm_nodes.py.
#
# Each node is a network namespace on a bridge of its own (own address, hostname and
# private /dev/shm), and runs its own slurmd; slurmctld runs in the root namespace and
# listens on the bridge's address. A job's processes are children of the node's slurmd,
# so they live in that node's namespaces, as on separate machines: a Dask worker binds
# the node's address and sees the node's /dev/shm only.
#
# It does not touch the single-node Slurm of .ci/slurm-up.sh: its own configuration
# (SLURM_CONF=/etc/slurm-multi/slurm.conf), ports, spool, log and pid files. munge is
# shared (one key and daemon authenticate both).
#
# Idempotent: when every node is already idle it does nothing; otherwise it removes
# whatever an earlier (maybe failed) start left (.ci/slurm-multi-down.sh) and starts afresh.
# Run as root.
#
# Usage: .ci/slurm-multi-up.sh [NODES]      (default 3; nodes slurm-h1..slurm-hN)
#        SLURM_CONF=/etc/slurm-multi/slurm.conf sinfo
#        .ci/slurm-multi-down.sh            removes everything again
set -euo pipefail

N=${1:-3}
log() { echo "slurm-multi-up: $*"; }
die() { echo "slurm-multi-up: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (namespaces, a bridge, mounts, daemons); got uid $(id -u)"
case "$N" in ''|*[!0-9]*) die "NODES must be a number from 1 to 200; got '$N'" ;; esac
[ "$N" -ge 1 ] && [ "$N" -le 200 ] || die "NODES must be a number from 1 to 200; got '$N'"

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=slurm-multi-env.sh
. "$HERE/slurm-multi-env.sh"
export SLURM_CONF
# One start or removal at a time on this machine (two CI runs may share it); a removal
# that a start runs itself holds the start's lock already.
if [ -z "${SLURM_MULTI_LOCKED:-}" ]; then
  exec 9>"$LOCK"
  flock -w 120 9 || { echo "slurm-multi: error: another start or removal holds $LOCK for 120 s" >&2; exit 1; }
  export SLURM_MULTI_LOCKED=1
fi

idle_nodes() { timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 == "idle" {print $1}' | sort -u | wc -l; }
# Nodes that run or can run jobs: a Slurm in use (by another run's jobs) is healthy too.
usable_nodes() {
  timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mixed|allocated|completing)$/ {print $1}' | sort -u | wc -l
}
# running PID: the process exists and is no zombie (this VM's pid 1 reaps late, and a
# zombie answers kill -0).
running() { local st; st=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }
alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && running "$pid"; }

daemons_alive() {
  alive "$STATE/slurmctld.pid" || return 1
  for i in $(seq "$N"); do alive "$STATE/slurmd-${NODE_PREFIX}$i.pid" || return 1; done
}

# slurmctld notices a dead slurmd only after SlurmdTimeout: look at the daemons too.
if [ -s "$SLURM_CONF" ] && command -v sinfo >/dev/null && [ "$(grep -c '^NodeName=' "$SLURM_CONF")" = "$N" ] \
   && daemons_alive && [ "$(usable_nodes)" = "$N" ]; then
  log "$N nodes already up; nothing to do"
  exit 0
fi
# Whatever is there is broken or of another size: remove it by pid and by name first.
bash "$HERE/slurm-multi-down.sh"
# A start that fails half-way leaves nothing running either (the logs stay).
trap 'rc=$?; if [ "$rc" != 0 ]; then log "start failed (exit $rc); removing what it made"; bash "$HERE/slurm-multi-down.sh" >&2 || true; fi' EXIT

# --- packages (as .ci/slurm-up.sh) ----------------------------------------------------
missing=()
for c in slurmctld slurmd sbatch munged ip unshare nsenter; do command -v "$c" >/dev/null || missing+=("$c"); done
if [ "${#missing[@]}" -gt 0 ]; then
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # no init system: stop package scripts starting services
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  log "installing slurmctld slurmd slurm-client munge iproute2 util-linux (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

mkdir -p "$STATE"
# --- munge: shared with the single-node Slurm; started here only if nobody runs it ----
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  touch "$STATE/munged-ours"   # so that slurm-multi-down.sh may stop it again
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || die "munge does not work (munge -n | unmunge failed)"

# --- network: a bridge and one namespace per node --------------------------------------
if ip -o -4 addr show | awk '{print $4}' | grep -q "^${NET}\."; then
  die "an interface already has an address in ${NET}.0/24: $(ip -o -4 addr show | grep " ${NET}\." | awk '{print $2, $4}' | tr '\n' ' ')"
fi
ip link add "$BRIDGE" type bridge
ip addr add "$CTLD_ADDR/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in $(seq "$N"); do
  ns="${NODE_PREFIX}$i"
  ip netns add "$ns"
  ip link add "${VETH_PREFIX}$i" type veth peer name eth0 netns "$ns"
  ip link set "${VETH_PREFIX}$i" master "$BRIDGE" up
  ip -n "$ns" addr add "${NET}.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done

# --- slurm.conf -------------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_KB=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
# Every node sees the whole VM and declares (as .ci/slurm-up.sh) 90 % of it, at most what
# `slurmd -C` reports: together they promise more than there is, as emulated hosts share
# one kernel; a small VM still takes a job of the tests' size (2 GiB) on every node.
MEM_MB=$(( MEM_KB * 9 / 10 / 1024 ))
mkdir -p "$(dirname "$SLURM_CONF")" "$SPOOL/ctld" "$LOGS"
chown slurm:slurm "$SPOOL/ctld" "$LOGS"
{
  echo "# Written by coupler's .ci/slurm-multi-up.sh: $N nodes on emulated hosts, no cgroups, no accounting."
  echo "ClusterName=coupler-multi"
  echo "SlurmctldHost=$HOST($CTLD_ADDR)"
  echo "SlurmctldPort=$CTLD_PORT"
  echo "SlurmdPort=$SLURMD_PORT"
  cat <<EOF
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmctldLogFile=$LOGS/slurmctld.log
# Per node (%n: the node's name), since every node's slurmd shares this machine's files.
SlurmdSpoolDir=$SPOOL/%n
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmdLogFile=$LOGS/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
EOF
  for i in $(seq "$N"); do
    echo "NodeName=${NODE_PREFIX}$i NodeAddr=${NET}.$i CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
  done
  # A job gets a whole node, as on most HPC partitions: N jobs land on N different nodes.
  echo "PartitionName=multi Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=EXCLUSIVE"
} > "$SLURM_CONF"

# --- daemons ----------------------------------------------------------------------------
log "starting slurmctld on $CTLD_ADDR:$CTLD_PORT"
slurmctld -i   # -i: ignore state an earlier run saved
for i in $(seq "$N"); do
  node="${NODE_PREFIX}$i"
  mkdir -p "$SPOOL/$node"
  # The node's hostname and a private /dev/shm live in a mount and UTS namespace that
  # slurmd (which daemonizes) keeps alive; its jobs inherit them and the network namespace.
  # nsenter, not `ip netns exec`: that mounts a fresh /sys without /sys/fs/cgroup, and
  # slurmd will not start without its cgroup mounts even with task/none.
  nsenter --net="/run/netns/$node" unshare --mount --uts --propagation private \
    sh -c "hostname $node && mount -t tmpfs -o size=$SHM_SIZE tmpfs /dev/shm && exec slurmd" \
    || die "slurmd of $node did not start; see $LOGS/slurmd-$node.log"
done

for _ in $(seq 150); do
  [ "$(idle_nodes)" = "$N" ] && break
  sleep 0.2
done
if [ "$(idle_nodes)" != "$N" ]; then
  sinfo -N -o '%N %T %E' >&2 || true
  tail -n 5 "$LOGS"/*.log >&2 || true
  die "not all $N nodes became idle within 30 s (logs: $LOGS)"
fi
log "$N nodes idle: $(sinfo -h -N -o '%N(%T)' | sort -u | tr '\n' ' ')(SLURM_CONF=$SLURM_CONF)"

#!/usr/bin/env bash
# Install and start a single-node Slurm (Debian's slurmctld, slurmd, munge) on a
# machine without an init system, for the system tests. Run as root. Idempotent:
# packages, key and config are kept when present, and running daemons are reused.
# The facts it follows are in ../shared/notes/local-slurm.md (verified on this
# machine kind: Debian 12, no systemd, no cgroups).
#
# Usage: .ci/slurm-up.sh        (then `sinfo` shows one idle node)
#        .ci/slurm-down.sh      stops the daemons again
set -euo pipefail

log() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons); got uid $(id -u)"

HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1 | tr -d '*~#!%$@^-'; }
alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

if command -v sinfo >/dev/null && [ "$(node_state)" = idle ]; then
  log "node $HOST is already idle; nothing to do"
  exit 0
fi

# --- packages ---------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  # Package scripts try to start services; without an init system that fails.
  # A policy-rc.d that exits 101 stops them; keep one that is already there.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# --- munge ------------------------------------------------------------------------
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0700 /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || die "munge does not work (munge -n | unmunge failed)"

# --- slurm.conf -------------------------------------------------------------------
# Addresses are explicit so that nothing depends on DNS.
if ! getent hosts "$HOST" >/dev/null; then
  echo "127.0.0.1 $HOST" >> /etc/hosts
fi
CPUS=$(nproc)
MEM_KB=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
MEM_MB=$(( MEM_KB * 9 / 10 / 1024 ))   # at most what `slurmd -C` reports
mkdir -p /etc/slurm /var/log/slurm /var/spool/slurmd /var/spool/slurmctld
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
cat > "$CONF.new" <<EOF
# Written by coupler's .ci/slurm-up.sh: one node, no cgroups, no accounting.
ClusterName=coupler-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$CONF.new" "$CONF"; then
  mv "$CONF.new" "$CONF"
  restart=1
else
  rm -f "$CONF.new"
  restart=0
fi

# --- daemons ----------------------------------------------------------------------
stop_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}
if [ "$restart" = 1 ]; then
  stop_pid /run/slurmd.pid
  stop_pid /run/slurmctld.pid
fi
if ! alive /run/slurmctld.pid; then
  log "starting slurmctld"
  slurmctld -i   # -i: ignore state saved by an earlier run
fi
if ! alive /run/slurmd.pid; then
  log "starting slurmd"
  slurmd
fi

for _ in $(seq 100); do
  state=$(node_state || true)
  [ "$state" = idle ] && break
  # A node that was down (e.g. after a config change) returns with ReturnToService=2,
  # but a stale "drain" from an earlier run needs an explicit resume.
  case "$state" in drain*|down*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;; esac
  sleep 0.2
done
[ "$(node_state)" = idle ] || die "node $HOST did not become idle (state: '$(node_state)'); see /var/log/slurm/"
log "node $HOST idle: $(sinfo -h -o '%P %D %c CPUs %m MB')"

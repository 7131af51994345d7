#!/usr/bin/env bash
# Remove the several-node Slurm that .ci/slurm-multi-up.sh started, also after a failed
# or half-done start: jobs, slurmd and slurmctld by the pids in their pid files, every
# process still inside a node's network namespace by its pid (`ip netns pids`: only
# processes of the namespaces this script's names own), then the namespaces and the
# bridge by name. Never kills by process name, and leaves the single-node Slurm of
# .ci/slurm-up.sh alone. munged is stopped only if slurm-multi-up.sh started it and
# the single-node Slurm does not run. Run as root; safe to run when nothing is up.
set -uo pipefail

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

log() { echo "slurm-multi-down: $*"; }
[ "$(id -u)" = 0 ] || { echo "slurm-multi-down: error: must run as root; got uid $(id -u)" >&2; exit 1; }

# running PID: the process exists and is no zombie (this VM's pid 1 reaps late, and a
# zombie answers kill -0).
running() { local st; st=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }
# stop_pid PID NAME: SIGTERM, up to 5 s, then SIGKILL.
stop_pid() {
  local pid=$1 what=$2
  running "$pid" || return 0
  log "stopping $what (pid $pid)"
  kill "$pid" 2>/dev/null
  for _ in $(seq 50); do running "$pid" || return 0; sleep 0.1; done
  log "$what (pid $pid) still running after 5 s: SIGKILL"
  kill -9 "$pid" 2>/dev/null
}
stop_pidfile() {
  local f=$1 pid
  pid=$(cat "$f" 2>/dev/null) || return 0
  [ -n "$pid" ] && stop_pid "$pid" "$(basename "$f" .pid)"
  rm -f "$f"
}
namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NODE_PREFIX}[0-9]*$"; }

# Jobs first, while slurmctld can still end them cleanly (a short timeout: it may be gone).
if [ -s "$STATE/slurmctld.pid" ] && running "$(cat "$STATE/slurmctld.pid")"; then
  timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
fi
# All slurmd at once (each takes seconds to end).
slurmds=()
for f in "$STATE"/slurmd-*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f" 2>/dev/null) && [ -n "$pid" ] && running "$pid" && slurmds+=("$pid")
  rm -f "$f"
done
if [ "${#slurmds[@]}" -gt 0 ]; then
  log "stopping slurmd (pids ${slurmds[*]})"
  kill "${slurmds[@]}" 2>/dev/null
  for _ in $(seq 100); do
    alive_any=0
    for pid in "${slurmds[@]}"; do running "$pid" && alive_any=1; done
    [ "$alive_any" = 0 ] && break
    sleep 0.1
  done
  for pid in "${slurmds[@]}"; do running "$pid" && { log "slurmd $pid still running after 10 s: SIGKILL"; kill -9 "$pid"; }; done
fi
# What is left in a node (jobs' processes, a slurmd without a pid file): by pid, per namespace.
for ns in $(namespaces); do
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  [ -n "$pids" ] || continue
  log "stopping what still runs in $ns: pids $pids"
  kill $pids 2>/dev/null
  for _ in $(seq 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  [ -n "$pids" ] && { log "SIGKILL $pids in $ns"; kill -9 $pids 2>/dev/null; sleep 0.2; }
done
stop_pidfile "$STATE/slurmctld.pid"

# By name: the namespaces (each takes its veth pair along), any veth left, the bridge.
for ns in $(namespaces); do
  ip netns del "$ns" || log "could not delete namespace $ns"
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^${VETH_PREFIX}[0-9]*$"); do
  ip link del "$link" 2>/dev/null || true
done
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link del "$BRIDGE" || log "could not delete bridge $BRIDGE"
fi

if [ -e "$STATE/munged-ours" ]; then
  if [ -s /run/slurmctld.pid ] && running "$(cat /run/slurmctld.pid)"; then
    log "leaving munged running: the single-node Slurm uses it"
  else
    stop_pidfile /run/munge/munged.pid
  fi
  rm -f "$STATE/munged-ours"
fi
# Spool (saved state, job scripts) and configuration go; logs stay for a look after a failure.
rm -rf "$SPOOL"
rm -f "$SLURM_CONF"
rmdir "$(dirname "$SLURM_CONF")" 2>/dev/null || true
rmdir "$STATE" 2>/dev/null || true

left=$(namespaces; ip link show "$BRIDGE" 2>/dev/null | head -n 1)
[ -z "$left" ] || { echo "slurm-multi-down: error: still there: $left" >&2; exit 1; }
exit 0

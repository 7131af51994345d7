#!/usr/bin/env bash
# Stop the single-node Slurm that .ci/slurm-up.sh started: by the PIDs in the
# daemons' pid files, never by process name (other software may run slurmd or
# munged on a shared machine). Cancels remaining jobs first. Run as root.
set -uo pipefail

stop_pid() {
  local f=$1 pid
  pid=$(cat "$f" 2>/dev/null) || return 0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    echo "slurm-down: stopping $(basename "$f" .pid) (pid $pid)"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    echo "slurm-down: $(basename "$f" .pid) still running after 5 s" >&2
    return 1
  fi
}

command -v scancel >/dev/null && scancel --user="$(id -un)" 2>/dev/null
stop_pid /run/slurmd.pid
stop_pid /run/slurmctld.pid
stop_pid /run/munge/munged.pid

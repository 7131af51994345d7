"""Emulated hosts on one Linux machine: network namespaces on a bridge, each with its own IP, hostname and /dev/shm.

Each host is a network namespace joined to a bridge of its own by a veth pair
(``10.78.<net>.<i>``; the bridge has ``10.78.<net>.254``, so the root namespace,
where the scheduler and the driver run, reaches every host). A "holder" process
started in that namespace under ``unshare --mount --uts`` sets the host's
hostname and mounts a private tmpfs on ``/dev/shm``; every process of the host
(a Dask worker) enters the holder's namespaces with ``nsenter``, so processes of
one host share ``/dev/shm`` and those of two hosts do not, as on real machines.
Taking the root end of a host's veth down cuts the host off (a partition).

Everything made is named after a random run id and recorded under
``/run/coupler-hosts/<run>/`` with the owner's pid, so that :func:`sweep_stale`
removes what a crashed run left (by the pids and start times recorded, and by
name) and leftovers never collide with a new run's names.

Needs root (``ip netns``, bridges, mounts); see :func:`problem`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Where each run records what it made (tmpfs: gone after a reboot, as the namespaces are).
STATE_DIR = Path("/run/coupler-hosts")
#: Name prefixes: network namespaces ``cplh-<run>-<i>``, bridge ``cplb<run>``, veths ``cplv<run><i>``
#: (interface names have at most 15 characters: a 6-hex-digit run id leaves room for 99 hosts).
NETNS_PREFIX, BRIDGE_PREFIX, VETH_PREFIX = "cplh-", "cplb", "cplv"
#: The /16 the hosts' subnets come from (a private range no real network of this VM uses).
SUPERNET = ipaddress.ip_network("10.78.0.0/16")
TOOLS = ("ip", "unshare", "nsenter", "mount")


def problem() -> str | None:
    """Why emulated hosts cannot be made here, or ``None`` when they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux; this is {sys.platform}"
    if os.geteuid() != 0:
        return f"needs root for network namespaces, a bridge and tmpfs mounts (uid {os.geteuid()}); .ci/run runs them as root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"commands not found: {', '.join(missing)} (run .ci/hosts-up.sh, which installs iproute2)"
    probe = subprocess.run(["unshare", "--net", "--mount", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create namespaces here: `unshare --net --mount --uts true` said {probe.stderr.strip()!r}"
    return None


class HostsError(RuntimeError):
    """A step of making or removing emulated hosts failed (the command and its output are in the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise HostsError(f"`ip {' '.join(args)}` exited {out.returncode}: {out.stderr.strip()}")
    return out


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the pid, it names one process), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the command name before ")" may hold spaces


def _kill(pid: int, started: int | None, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by ``pid`` if ``pid`` is still the process that was started then."""
    if started is None or _start_time(pid) != started:
        return  # gone, or the pid now names another process: leave it alone
    try:
        os.killpg(pid, sig)  # each process was started in a session of its own: its children go too
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class Host:
    """One emulated host.

    Attributes:
        index: 1-based; the last byte of its address.
        netns: its network namespace's name.
        hostname: what ``socket.gethostname()`` says inside it.
        ip: its address on the bridge.
        veth: the root namespace's end of its link; down = the host is cut off.
        holder: pid of the process that holds its mount and UTS namespaces.
    """

    index: int
    netns: str
    hostname: str
    ip: str
    veth: str
    holder: int


@dataclass
class _Process:
    proc: subprocess.Popen[bytes]
    started: int | None
    log: Path


@dataclass
class EmulatedHosts:
    """``n`` emulated hosts; a context manager that removes everything it made, even after a failure.

    Args:
        n: how many hosts.
        shm_size: size of each host's private ``/dev/shm`` (a tmpfs).
    """

    n: int
    shm_size: str = "1g"
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[Host] = field(default_factory=list)
    bridge_ip: str = ""
    _procs: list[_Process] = field(default_factory=list)
    _subnet: ipaddress.IPv4Network | None = None

    @property
    def state(self) -> Path:
        """This run's record of what it made."""
        return STATE_DIR / self.run

    @property
    def bridge(self) -> str:
        """The bridge's interface name."""
        return f"{BRIDGE_PREFIX}{self.run}"

    def __enter__(self) -> EmulatedHosts:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Sweep what crashed runs left, then make the bridge and the hosts.

        Raises:
            HostsError: a command failed (its output is in the message).
        """
        sweep_stale()
        self.state.mkdir(parents=True, exist_ok=False)
        (self.state / "owner").write_text(json.dumps({"pid": os.getpid(), "started": _start_time(os.getpid())}))
        self._subnet = _free_subnet()
        hosts_ip = list(self._subnet.hosts())
        self.bridge_ip = str(hosts_ip[253])  # .254
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.n + 1):
            self.hosts.append(self._make_host(i, str(hosts_ip[i - 1])))

    def _make_host(self, i: int, ip: str) -> Host:
        netns, veth, hostname = f"{NETNS_PREFIX}{self.run}-{i}", f"{VETH_PREFIX}{self.run}{i}", f"h{i}-{self.run}"
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        # The holder: hostname and a private /dev/shm in namespaces of their own, kept alive
        # for the host's processes to enter (a worker restarted on the host finds the same /dev/shm).
        script = f"hostname {hostname} && mount -t tmpfs -o size={self.shm_size} tmpfs /dev/shm && echo ready && exec sleep 1000000"
        argv = ["ip", "netns", "exec", netns, "unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script]
        holder = self._spawn(argv, f"holder-{i}", stdout=subprocess.PIPE)
        line = holder.proc.stdout.readline() if holder.proc.stdout else b""
        if line.strip() != b"ready":
            raise HostsError(f"host {i}'s holder did not start ({argv}): {holder.log.read_text()[-2000:]}")
        return Host(i, netns, hostname, ip, veth, holder.proc.pid)

    def _spawn(self, argv: list[str], tag: str, stdout: int | None = None, env: dict[str, str] | None = None) -> _Process:
        log = self.state / f"{tag}.log"
        with open(log, "ab") as f:
            proc = subprocess.Popen(argv, stdout=stdout if stdout is not None else f, stderr=f, start_new_session=True, env=env)
        p = _Process(proc, _start_time(proc.pid), log)
        self._procs.append(p)
        with open(self.state / "pids", "a") as f:  # for sweep_stale, should this process die before close()
            f.write(json.dumps({"pid": proc.pid, "started": p.started}) + "\n")
        return p

    def popen(self, host: Host, argv: list[str], tag: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host`` (its network, mount and UTS namespaces); output goes to a log in the run's state dir.

        Args:
            host: where.
            argv: the command.
            tag: names its log file.
            env: its environment (default: this process's).

        Returns:
            The process (stopped by :meth:`close` if still running).
        """
        enter = ["nsenter", "-t", str(host.holder), "--net", "--mount", "--uts", "--"]
        return self._spawn(enter + argv, tag, env=env).proc

    def start_worker(self, host: Host, scheduler: str, env: dict[str, str] | None = None, tag: str = "") -> subprocess.Popen[bytes]:
        """A Dask worker (no nanny, one thread) on ``host``, named after the host, listening on its address.

        Args:
            host: where.
            scheduler: the scheduler's address (reachable from the hosts: on the bridge).
            env: extra environment variables (e.g. ``DASK_...`` settings).
            tag: told apart from earlier workers of the host in its log name.

        Returns:
            The worker process.
        """
        argv = [
            sys.executable, "-m", "distributed.cli.dask_worker", scheduler,
            "--host", host.ip, "--name", host.hostname, "--nthreads", "1", "--no-nanny", "--no-dashboard",
        ]  # fmt: skip
        return self.popen(host, argv, f"worker-{host.index}{tag}", env={**os.environ, **(env or {})})

    def cut(self, host: Host) -> None:
        """Cut ``host`` off the network (its processes keep running; their TCP connections stall)."""
        _ip("link", "set", host.veth, "down")

    def heal(self, host: Host) -> None:
        """Bring ``host``'s link back."""
        _ip("link", "set", host.veth, "up")

    def limit_rate(self, host: Host, rate: str) -> None:
        """Limit the traffic into ``host`` to ``rate`` (``tc`` syntax, e.g. ``"1gbit"``) with a token bucket.

        The kernel here has ``tbf`` but not ``netem``: rates, not delays or losses.
        The 4 MB bucket lets a 10 Gb/s-like rate through at a 1000 Hz timer.
        """
        out = subprocess.run(
            ["tc", "qdisc", "replace", "dev", host.veth, "root", "tbf", "rate", rate, "burst", "4mb", "latency", "50ms"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if out.returncode != 0:
            raise HostsError(f"tc tbf {rate} on {host.veth} failed: {out.stderr.strip()}")

    def shm_names(self, host: Host) -> list[str]:
        """What is in ``host``'s private ``/dev/shm``."""
        out = subprocess.run(
            ["nsenter", "-t", str(host.holder), "--mount", "--", "ls", "-A", "/dev/shm"], capture_output=True, text=True, timeout=30
        )
        if out.returncode != 0:
            raise HostsError(f"listing host {host.index}'s /dev/shm failed: {out.stderr.strip()}")
        return sorted(out.stdout.split())

    def logs(self) -> str:
        """The tails of every process's log (for a failure's message)."""
        return "\n".join(f"--- {p.log.name}\n{p.log.read_text(errors='replace')[-1500:]}" for p in self._procs if p.log.exists())

    def close(self) -> None:
        """Stop every process started (by pid), remove the namespaces, the bridge and the run's record.

        Raises:
            HostsError: something could not be removed (after trying to remove everything else).
        """
        errors = []
        for p in self._procs:
            _kill(p.proc.pid, p.started, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self._procs:
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(p.proc.pid, p.started)
                p.proc.wait(10)
            if p.proc.stdout:
                p.proc.stdout.close()
        errors += _remove_names(self.run)
        shutil.rmtree(self.state, ignore_errors=True)
        if errors:
            raise HostsError("; ".join(errors))


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of :data:`SUPERNET` that no interface of this machine uses (another run's, or anything else)."""
    out = _ip("-o", "-4", "addr", "show").stdout
    used = {ipaddress.ip_interface(w).network for line in out.splitlines() for w in line.split() if "/" in w and w[0].isdigit()}
    free = [s for s in SUPERNET.subnets(new_prefix=24) if not any(s.overlaps(u) for u in used)]
    if not free:
        raise HostsError(f"no free /24 in {SUPERNET}")
    return random.choice(free[:64])  # random: two runs starting at once rarely pick the same


def _remove_names(run: str) -> list[str]:
    """Delete run ``run``'s namespaces and bridge by name; return what failed."""
    errors = []
    namespaces = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]
    for ns in namespaces:
        if ns.startswith(f"{NETNS_PREFIX}{run}-"):
            out = _ip("netns", "del", ns, check=False)  # takes its veth pair with it
            if out.returncode != 0:
                errors.append(f"ip netns del {ns}: {out.stderr.strip()}")
    if _ip("link", "show", f"{BRIDGE_PREFIX}{run}", check=False).returncode == 0:
        out = _ip("link", "del", f"{BRIDGE_PREFIX}{run}", check=False)
        if out.returncode != 0:
            errors.append(f"ip link del {BRIDGE_PREFIX}{run}: {out.stderr.strip()}")
    return errors


def sweep_stale() -> list[str]:
    """Remove what runs whose owner process is gone left behind: their processes, namespaces and bridges.

    A run's processes are signalled only if their pid still names the process started
    then (pid and start time recorded), so a reused pid is never hit.

    Returns:
        The run ids swept.
    """
    swept = []
    runs = {p.name for p in STATE_DIR.iterdir()} if STATE_DIR.is_dir() else set()
    # Names whose record is gone (removed by hand, or a run killed between its first `ip` and its record).
    for line in _ip("netns", "list").stdout.splitlines():
        if line.startswith(NETNS_PREFIX):
            runs.add(line.split()[0][len(NETNS_PREFIX) :].split("-")[0])
    for line in _ip("-o", "link", "show", "type", "bridge").stdout.splitlines():
        name = line.split(":")[1].strip()
        if name.startswith(BRIDGE_PREFIX):
            runs.add(name[len(BRIDGE_PREFIX) :])
    for run in sorted(runs):
        owner_file = STATE_DIR / run / "owner"
        if owner_file.exists():
            owner = json.loads(owner_file.read_text())
            if _start_time(owner["pid"]) == owner["started"]:
                continue  # its owner is alive: a run going on now
        pids = STATE_DIR / run / "pids"
        for line in pids.read_text().splitlines() if pids.exists() else []:
            rec = json.loads(line)
            _kill(rec["pid"], rec["started"])
        _remove_names(run)
        shutil.rmtree(STATE_DIR / run, ignore_errors=True)
        swept.append(run)
    return swept

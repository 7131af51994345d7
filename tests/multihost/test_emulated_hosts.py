"""The emulated-host helper: isolation between hosts, and no leftovers even when its owner is killed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import emulated_hosts
from emulated_hosts import STATE_DIR, EmulatedHosts, sweep_stale
from services import require

pytestmark = pytest.mark.multihost

OWNER = """
import sys, time
sys.path.insert(0, {here!r})
from emulated_hosts import EmulatedHosts
hosts = EmulatedHosts(2)
hosts.start()
print(hosts.run, flush=True)
time.sleep(600)
"""


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture
def root() -> None:
    require("emulated hosts", emulated_hosts.problem())


def test_each_host_has_its_own_hostname_and_dev_shm_and_reaches_the_others(root: None) -> None:
    with EmulatedHosts(2) as hosts:
        h1, h2 = hosts.hosts
        script = "import socket, os; print(socket.gethostname()); open('/dev/shm/mark', 'w').close()"
        for h in (h1, h2):
            proc = hosts.popen(h, [sys.executable, "-c", script], f"probe-{h.index}")
            assert proc.wait(30) == 0
        assert hosts.shm_names(h1) == ["mark"] and hosts.shm_names(h2) == ["mark"]
        assert not Path("/dev/shm/mark").exists()  # the root namespace's /dev/shm is untouched
        names = [(hosts.state / f"probe-{h.index}.log").read_text().strip() for h in (h1, h2)]
        assert names == [h1.hostname, h2.hostname]
        talk = f"import socket; socket.create_connection(({h2.ip!r}, 9), timeout=5)"
        # Nothing listens on port 9 of host 2: a refusal (not a timeout) proves the packet got there and back.
        proc = hosts.popen(h1, [sys.executable, "-c", talk], "talk")
        proc.wait(30)
        assert "ConnectionRefusedError" in (hosts.state / "talk.log").read_text()
        hosts.cut(h2)
        proc = hosts.popen(h1, [sys.executable, "-c", talk.replace("timeout=5", "timeout=1")], "talk-cut")
        proc.wait(30)
        assert "timed out" in (hosts.state / "talk-cut.log").read_text()  # cut: no answer at all
        run = hosts.run
    assert not any(ns.startswith(f"{emulated_hosts.NETNS_PREFIX}{run}-") for ns in _netns())
    assert not (STATE_DIR / run).exists()


def test_what_a_killed_owner_left_is_swept_by_pid_and_by_name(root: None) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER.format(here=str(Path(__file__).parent))], stdout=subprocess.PIPE, text=True
    )
    try:
        run = owner.stdout.readline().strip() if owner.stdout else ""
        assert run, "the owner did not start its hosts"
        pids = [json.loads(line)["pid"] for line in (STATE_DIR / run / "pids").read_text().splitlines()]
        assert len(pids) == 2 and {f"{emulated_hosts.NETNS_PREFIX}{run}-{i}" for i in (1, 2)} <= _netns()
    finally:
        owner.kill()  # SIGKILL: no clean-up runs
        owner.wait(10)
    assert run in sweep_stale()
    assert not any(ns.startswith(f"{emulated_hosts.NETNS_PREFIX}{run}-") for ns in _netns())
    assert subprocess.run(["ip", "link", "show", f"{emulated_hosts.BRIDGE_PREFIX}{run}"], capture_output=True).returncode != 0
    assert not (STATE_DIR / run).exists()
    for pid in pids:  # the holders are gone (or dead, waiting for init to reap them)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", stat.read_text()

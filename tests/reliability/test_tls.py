"""TLS through Dask's Security: a coupled run works over TLS, and outsiders are refused.

Certificates are made in the test by ``make_tls_files`` (the ``openssl`` command;
the ``cryptography`` package is not installed here): one CA for the cluster and
another one for an outsider.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import pytest

import chaos_actors
from chaos_actors import QueueLearner, Simulator
from coupler.runtime.dataplane import wire
from coupler.runtime.launch.cli import main
from coupler.runtime.launch.cluster import TLSFiles, connect, make_tls_files, tls_security
from coupler.runtime.coupling import Coupling
from coupler.runtime.dataplane.endpoint import ENDPOINT_NAME
from coupler.runtime.policies import Queue
from distributed.comm import connect as comm_connect

cloudpickle.register_pickle_by_value(chaos_actors)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[TLSFiles, TLSFiles]:
    base = tmp_path_factory.mktemp("tls")
    return make_tls_files(base / "cluster"), make_tls_files(base / "outsider")


@pytest.fixture(scope="module")
def tls_coupling(certs: tuple[TLSFiles, TLSFiles]) -> Iterator[Coupling]:
    ours, _ = certs
    tls = {"coupler.tls.enabled": True, "coupler.tls.ca-file": ours.ca_file, "coupler.tls.cert": ours.cert, "coupler.tls.key": ours.key}
    with dask.config.set(tls), Coupling(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cp:
        yield cp


def _stream_addresses(cp: Coupling) -> dict[str, tuple[str, list[bool]]]:
    def streams(dask_worker) -> tuple[str, list[bool]]:  # type: ignore[no-untyped-def]
        listener = dask_worker.plugins[ENDPOINT_NAME].listener
        return listener.address, [isinstance(r.sock, ssl.SSLSocket) for r in list(listener.receivers)]

    return cp.client.run(streams)


def test_a_coupled_run_streams_over_tls(tls_coupling: Coupling) -> None:
    cp = tls_coupling
    assert cp.client.scheduler.address.startswith("tls://")
    assert all(w.startswith("tls://") for w in cp.workers())
    ch = cp.channel("tls-samples", Queue(8))
    w = cp.workers()
    n = 50
    learner = cp.spawn(QueueLearner, name="tls-learner", inputs={"data": ch}, workers=w[0])
    sim = cp.spawn(Simulator, n, 5, name="tls-sim", outputs={"out": ch}, workers=w[1])
    learner.start()
    sim.start()
    assert sim.wait(60).state == "finished"
    deadline = time.monotonic() + 30
    while learner.status().info["count"] < n:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [q for _, q in learner.call("record")["trained"]] == list(range(n))
    _, encrypted = _stream_addresses(cp)[w[0]]
    assert encrypted and all(encrypted)  # the data stream from the simulator's worker is TLS
    learner.stop()


def _open_comm(address: str, **connection_args: Any) -> None:
    """Open and close a Dask comm to ``address``, as a client does first.

    At the comm level, not with a ``Client``: a ``Client`` that fails starts and
    stops an IO loop thread, and on a loaded machine that thread once did not start
    within distributed's 10 s (an ``AssertionError`` instead of the refusal).
    """

    async def attempt() -> None:
        comm = await comm_connect(address, timeout=10, **connection_args)
        await comm.close()

    asyncio.run(attempt())


def test_clients_without_the_clusters_certificates_are_refused(
    tls_coupling: Coupling, certs: tuple[TLSFiles, TLSFiles], caplog: pytest.LogCaptureFixture
) -> None:
    address = tls_coupling.client.scheduler.address
    ours, outsider = certs
    _open_comm(address, **tls_security(ours).get_connection_args("client"))  # the cluster's own certificate: accepted
    with pytest.raises(OSError, match="TLS certificate does not match"):
        _open_comm(address, **tls_security(outsider).get_connection_args("client"))  # a certificate of another CA
    trusting = ssl.create_default_context(cafile=ours.ca_file)  # trusts the cluster, shows no certificate of its own
    trusting.check_hostname = False
    # In TLS 1.3 the client sees the server's alert or, when the server has closed first, an EOF
    # (both seen here); the scheduler's own log says why it refused.
    with pytest.raises(OSError, match="CERTIFICATE_REQUIRED|EOF occurred in violation of protocol"):
        _open_comm(address, ssl_context=trusting)
    deadline = time.monotonic() + 10
    while "did not return a certificate" not in caplog.text:
        assert time.monotonic() < deadline, f"the scheduler logged no refusal for want of a certificate: {caplog.text!r}"
        time.sleep(0.05)
    with pytest.raises(OSError):
        _open_comm(address.replace("tls://", "tcp://"))  # plain TCP to the TLS port
    with dask.config.set({"coupler.tls.enabled": False}):
        with pytest.raises(ValueError, match="uses TLS: set coupler.tls.enabled"):
            connect(address)
    # The cluster still works for its own clients.
    assert len(tls_coupling.client.scheduler_info()["workers"]) == 2


def test_the_data_plane_refuses_plain_and_foreign_streams(tls_coupling: Coupling, certs: tuple[TLSFiles, TLSFiles]) -> None:
    stream, _ = next(iter(_stream_addresses(tls_coupling).values()))
    host, port = stream.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:  # plain TCP, a well-formed HELLO
        wire.send_frame(s, wire.HELLO, {"channel": "tls-samples", "consumer": "tls-learner/data", "spec": {}, "probe": None, "pid": 0})
        try:
            reply = s.recv(1024)
        except OSError:
            reply = b""
        assert reply == b"" or not reply.startswith(bytes([wire.WELCOME]))
    _, outsider = certs
    ctx = ssl.create_default_context(cafile=outsider.ca_file)
    ctx.check_hostname = False
    ctx.load_cert_chain(outsider.cert, outsider.key)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(s).recv(1)


def test_coupler_run_tls_gives_the_script_a_tls_cluster(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from coupler.runtime.coupling import Coupling
        with Coupling() as cp:
            json.dump({{"scheduler": cp.client.scheduler.address, "workers": cp.workers()}}, open({str(out)!r}, "w"))
    """))
    with dask.config.set({"coupler.local.dashboard-address": ":0"}):
        assert main(["run", "--tls", "--workers", "1", str(script)]) == 0
    seen = json.loads(out.read_text())
    assert seen["scheduler"].startswith("tls://") and len(seen["workers"]) == 1
    assert seen["workers"][0].startswith("tls://")


def test_throwaway_tls_files_are_deleted_when_the_process_that_made_them_exits(tmp_path: Path) -> None:
    made = textwrap.dedent(
        f"""
        import dask, os
        from coupler.runtime.launch.cluster import tls_files_from_config
        with dask.config.set({{"coupler.tls.enabled": True, "coupler.tls.directory": {str(tmp_path)!r}}}):
            files = tls_files_from_config()
        assert all(os.path.exists(p) for p in (files.ca_file, files.cert, files.key))
        print(os.path.dirname(files.ca_file))
        """
    )
    done = subprocess.run([sys.executable, "-c", made], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    directory = Path(done.stdout.strip().splitlines()[-1])
    assert directory.parent == tmp_path and directory.name.startswith("coupler-tls-")
    assert not directory.exists(), f"left behind: {sorted(p.name for p in directory.iterdir())}"

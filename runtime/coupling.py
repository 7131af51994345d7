"""The coupling: the driver object a coupling script holds.

``Coupling()`` starts the embedded ``LocalCluster`` (worker processes,
dashboard on); it also accepts an existing ``Client``, a cluster object (a
dask-jobqueue cluster, say) or a scheduler address. It installs the broker on
the scheduler and an endpoint on every worker, declares channels, spawns actor
hosts where asked, and on exit closes what it started, and only that.

Example::

    with Coupling() as cp:
        cp.channel("pairs", Reservoir(4096))
        learner = cp.spawn(LearnerActor, config, name="learner", inputs={"data": "pairs"})
        sim = cp.spawn(SimulatorActor, Heat2D(), params, name="sim-0", outputs={"pairs": "pairs"})
        learner.start(); sim.start(); sim.wait()
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from distributed import Client, LocalCluster

from coupler.runtime import config
from coupler.runtime.actor_ref import ActorRef
from coupler.runtime.broker import Broker, check_name
from coupler.runtime.endpoint import Endpoint
from coupler.runtime.errors import raise_for_reply
from coupler.runtime.message import Spec
from coupler.runtime.policies import Policy, policy_to_wire
from coupler.runtime.status import ActorStatus, ChannelStats

logger = logging.getLogger(__name__)

# Set in every worker before JAX starts: actors that share a GPU must not each
# grab most of its memory.
WORKER_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


class Coupling:
    """Connect to or start a cluster and drive a coupled run.

    Args:
        cluster: ``None`` to start the embedded ``LocalCluster``; else a ``Client``,
            a cluster object (anything with ``scheduler_address``), or a scheduler
            address string.
        n_workers: workers of the embedded cluster (default: ``coupler.local.n-workers``).
        threads_per_worker: Dask threads per embedded worker.
        dashboard_address: where the embedded cluster serves its dashboard.
        **cluster_kwargs: passed on to ``LocalCluster``.

    Raises:
        TypeError: for a ``cluster`` of another kind.
    """

    def __init__(
        self,
        cluster: Client | Any | str | None = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        dashboard_address: str | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        self._own_cluster: Any = None
        self._own_client = True
        self._actors: dict[str, ActorRef] = {}
        if cluster is None:
            env = {**WORKER_ENV, **cluster_kwargs.pop("env", {})}
            self._own_cluster = LocalCluster(
                n_workers=n_workers or config.get("local.n-workers"),
                threads_per_worker=threads_per_worker or config.get("local.threads-per-worker"),
                processes=True,
                dashboard_address=dashboard_address or config.get("local.dashboard-address"),
                memory_limit=cluster_kwargs.pop("memory_limit", config.get("local.memory-limit")),
                env=env,
                **cluster_kwargs,
            )
            self.client = Client(self._own_cluster, direct_to_workers=True)
        elif isinstance(cluster, Client):
            self.client, self._own_client = cluster, False
        elif isinstance(cluster, str):
            self.client = Client(cluster, direct_to_workers=True)
        elif hasattr(cluster, "scheduler_address"):
            self.client = Client(cluster, direct_to_workers=True)
        else:
            raise TypeError(f"Coupling(cluster=...) expects None, a Client, a cluster or an address; got {cluster!r}")
        self.client.register_plugin(Broker())
        self.client.register_plugin(Endpoint(report_interval=float(config.get("report-interval"))))

    # -- context management -------------------------------------------------------------
    def __enter__(self) -> Coupling:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the actors this coupling spawned; close the client and cluster it started."""
        for ref in list(self._actors.values()):
            try:
                ref.stop(timeout=5)
            except Exception as e:  # a lost worker must not stop the teardown
                logger.info("could not stop actor %s: %s", ref.name, e)
        self._actors.clear()
        if self._own_client:
            self.client.close()
        if self._own_cluster is not None:
            self._own_cluster.close()
            self._own_cluster = None

    @property
    def dashboard_link(self) -> str:
        """URL of the Dask dashboard."""
        return self.client.dashboard_link

    def workers(self) -> list[str]:
        """Addresses of the current workers, sorted."""
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    # -- channels -----------------------------------------------------------------------
    def _broker(self, op: str, **kwargs: Any) -> dict[str, Any]:
        return raise_for_reply(self.client.sync(getattr(self.client.scheduler, op), **kwargs))

    def channel(self, name: str, policy: Policy, spec: Spec | Any | None = None) -> str:
        """Declare a channel (idempotent for the same policy and spec).

        Args:
            name: 1-200 characters of letters, digits and ``_.:/-``.
            policy: ``Queue``, ``Latest``, ``Reservoir`` or ``Window``.
            spec: a :class:`Spec`, or an example payload whose spec to fix now;
                ``None`` fixes it from the first message.

        Returns:
            The name, for wiring ports.

        Raises:
            ValueError: for a bad name.
            ChannelExists: if declared before with another policy or spec.
        """
        check_name("channel", name)
        if spec is not None and not isinstance(spec, Spec):
            spec = Spec.of(spec)
        self._broker("coupler_declare", name=name, policy=policy_to_wire(policy), spec=spec.to_wire() if spec else None)
        return name

    def close_channel(self, name: str) -> None:
        """Close a channel: sends fail, consumers drain what they hold then see it closed.

        Raises:
            UnknownChannel: if it was never declared.
        """
        self._broker("coupler_close", name=name)

    def channels(self) -> dict[str, ChannelStats]:
        """Every channel's counters (as of the workers' last reports)."""
        snap = self._broker("coupler_snapshot")
        return {name: ChannelStats.from_snapshot(name, s) for name, s in snap["channels"].items()}

    # -- actors ---------------------------------------------------------------------------
    def spawn(
        self,
        cls: type,
        *args: Any,
        name: str,
        workers: str | Sequence[str] | None = None,
        resources: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Create an actor host on a worker.

        Args:
            cls: an actor host class (a subclass of ``coupler.actors.ActorHost``).
            *args: its positional arguments.
            name: unique actor name; passed to the class as ``name=``.
            workers: worker address(es) allowed to host it.
            resources: Dask resources it needs (e.g. ``{"GPU": 1}``).
            **kwargs: its keyword arguments (e.g. ``inputs=``, ``outputs=``).

        Returns:
            A handle to control it.

        Raises:
            ValueError: for a bad or duplicate name.
        """
        check_name("actor", name)
        if name in self._actors:
            raise ValueError(f"an actor named {name!r} already exists in this coupling")
        if isinstance(workers, str):
            workers = [workers]
        fut = self.client.submit(
            cls,
            *args,
            name=name,
            actor=True,
            workers=workers,
            resources=resources,
            allow_other_workers=False,
            key=f"coupler-actor-{name}-{os.getpid()}-{id(self)}",
            **kwargs,
        )
        ref = ActorRef(name, fut.result())
        self._actors[name] = ref
        return ref

    def actors(self) -> dict[str, ActorStatus]:
        """Status of every actor this coupling spawned (asked directly)."""
        return {name: ref.status() for name, ref in self._actors.items()}

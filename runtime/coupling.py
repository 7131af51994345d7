"""The coupling: the driver object a coupling script holds.

``Coupling()`` joins the scheduler at ``coupler.scheduler-address`` when one
is set (``coupler run`` sets it), else starts the cluster ``coupler.cluster``
names: the embedded ``LocalCluster`` (worker processes, one per GPU where there
are GPUs, dashboard on) or a dask-jobqueue cluster. It also accepts an existing
``Client``, a cluster object (a dask-jobqueue cluster, say) or a scheduler
address; :meth:`Coupling.from_config` starts a batch-system cluster with job
options (jobs, GPUs per job, walltime). It installs the broker on
the scheduler and an endpoint on every worker, declares channels, spawns actor
hosts where asked, and on exit closes what it started, and only that.

Every coupling is a *run* with an id of its own (:attr:`Coupling.run_id`). The
broker ties the channels a run declares to it: when the coupling closes, or
its client goes without closing it (a driver killed), the run ends and its
channels are closed and forgotten on every worker and in the broker, so a
later coupling on the same long-lived cluster (``coupler run --cluster
ADDRESS``) starts from clean channels under the same names; requests of an
ended run are refused.

The script takes part too: :meth:`Coupling.send`, :meth:`Coupling.receive`
and :meth:`Coupling.subscribe` make it a producer or a consumer on a channel
like any actor (see :mod:`coupler.runtime.participant` and :mod:`coupler.runtime.driver`).

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
import time
import uuid
from typing import Any, Sequence

from distributed import Client

from coupler.runtime import config

from coupler.runtime.dataplane import shm
from coupler.runtime.launch.cluster import (
    KINDS,
    EmbeddedCluster,
    JobOptions,
    check_placement,
    close_cluster,
    connect,
    expected_workers,
    start_cluster,
    wait_for_workers,
)
from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.control.broker import Broker, check_name
from coupler.runtime.launch.devices import WORKER_ENV as WORKER_ENV
from coupler.runtime.dataplane.endpoint import Endpoint
from coupler.runtime.errors import ChannelClosed, NoCoupling, raise_for_reply
from coupler.runtime.observe.inspection import Inspection
from coupler.runtime.participant import Participant
from coupler.runtime.message import Spec
from coupler.runtime.policies import Policy, policy_to_wire
from coupler.runtime.control.status import ActorStatus, ChannelStats
from coupler.runtime.control.spawning import SpawnSpec, check_actor_class, check_ports
from coupler.runtime.control.supervisor import Supervisor
from coupler.runtime.settings_check import check_settings, seconds

logger = logging.getLogger(__name__)

# Seconds a declaration waits for the consumers of a closed channel of the same name to detach.
DRAIN_WAIT = 10.0


class Coupling(Participant):
    """Connect to or start a cluster and drive a coupled run.

    Args:
        cluster: ``None`` for the configured default (``coupler.scheduler-address``
            if set, else a new cluster of kind ``coupler.cluster``); a kind
            (``"local"``, ``"slurm"``, ...: a new cluster of that kind); else a
            ``Client``, a cluster object (anything with ``scheduler_address``), or
            a scheduler address string.
        n_workers: workers of the embedded cluster (default: one per GPU, else
            ``coupler.local.n-workers``); the next three apply only to it.
        threads_per_worker: Dask threads per embedded worker.
        dashboard_address: where the embedded cluster serves its dashboard.
        **cluster_kwargs: passed on to ``LocalCluster`` or the jobqueue class.

    Raises:
        TypeError: for a ``cluster`` of another kind.
        ValueError: for a string that is neither a kind nor an address, ``n_workers`` < 1, or a
            bad ``coupler.*`` setting (named).
        SchedulerUnreachable: if no scheduler answers at an address
            (within ``coupler.connect-timeout``).
        WorkersNotReady: if a started batch cluster's workers do not join in time.
    """

    _supervisor: Supervisor | None = None

    def __init__(
        self,
        cluster: Client | Any | str | None = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        dashboard_address: str | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        check_settings()  # a bad setting fails here, not in a worker's log or at the first spawn
        self._own_cluster: Any = None
        self._own_client = True
        self._actors: dict[str, ActorRef] = {}
        self.run_id = f"run-{uuid.uuid4().hex}"
        self._closed = False
        self._ending = False  # close() has begun: names are freed by the run's end, not one by one
        try:
            jobs = self._connect(cluster, n_workers, threads_per_worker, dashboard_address, cluster_kwargs)
            self.client.register_plugin(Broker())
            self.client.register_plugin(Inspection())  # after the broker: it shows the broker's state
            self.client.register_plugin(Endpoint(report_interval=seconds("report-interval", positive=True)))
            self._broker("coupler_begin_run", run=self.run_id, client=self.client.id)
        except BaseException:
            self._abandon()  # a cluster started here must not outlive a coupling that failed to start
            raise
        if jobs is not None:
            self._wait_for_jobs(jobs)  # closes the whole coupling if they do not come

    def _connect(
        self, cluster: Any, n_workers: int | None, threads_per_worker: int | None, dashboard_address: str | None,
        cluster_kwargs: dict[str, Any],
    ) -> int | None:
        """Set ``self.client`` (and ``self._own_cluster`` for a cluster started here).

        Returns:
            The batch jobs to wait for, for a batch cluster started here (``None``: none).
        """
        kind = None
        if isinstance(cluster, str) and cluster in KINDS:  # Coupling("local"), Coupling("slurm"): start one
            kind, cluster = cluster, None
        elif cluster is None:
            cluster = config.get("scheduler-address")
        if cluster is None:
            kind = kind or config.get("cluster")
            if kind == "local":
                self._own_cluster = start_cluster(
                    "local",
                    n_workers=n_workers,
                    threads_per_worker=threads_per_worker,
                    dashboard_address=dashboard_address,
                    **cluster_kwargs,
                )
                self.client = Client(self._own_cluster, direct_to_workers=True)
                return None
            options = JobOptions.from_config()
            self._own_cluster = start_cluster(kind, options, **cluster_kwargs)
            self.client = Client(self._own_cluster, direct_to_workers=True)
            return options.jobs
        if isinstance(cluster, Client):
            self.client, self._own_client = cluster, False
        elif isinstance(cluster, str):
            self.client = connect(cluster, direct_to_workers=True)
        elif hasattr(cluster, "scheduler_address"):
            self.client = Client(cluster, direct_to_workers=True)
        else:
            raise TypeError(f"Coupling(cluster=...) expects None, a Client, a cluster or an address; got {cluster!r}")
        return None

    def _abandon(self) -> None:
        """Close what a coupling that failed to start had opened: its client and the cluster it started."""
        client = getattr(self, "client", None)
        if self._own_client and client is not None:
            client.close()
        if self._own_cluster is not None:
            close_cluster(self._own_cluster)
            self._own_cluster = None
        self._closed = True

    @classmethod
    def from_config(
        cls,
        kind: str | None = None,
        *,
        jobs: int | None = None,
        gpus_per_job: int | None = None,
        walltime: str | None = None,
        queue: str | None = None,
        account: str | None = None,
        **cluster_kwargs: Any,
    ) -> Coupling:
        """Start a cluster from configuration and couple on it; the coupling owns it.

        Args:
            kind: ``local``, ``slurm``, ``pbs``, ``sge``, ``lsf`` or ``htcondor``
                (default ``coupler.cluster``).
            jobs: batch jobs (default ``coupler.jobqueue.jobs``).
            gpus_per_job: GPUs per job (default ``coupler.jobqueue.gpus-per-job``).
            walltime: per job, ``[D-]HH:MM:SS`` (default ``jobqueue.<kind>.walltime``).
            queue: queue/partition. account: account/project to charge.
            **cluster_kwargs: passed on to the cluster class.

        Returns:
            A coupling whose workers have joined (batch jobs are running).

        Raises:
            ValueError: for an unknown kind or bad options.
            WorkersNotReady: if the jobs' workers do not join within
                ``coupler.jobqueue.start-timeout``.
        """
        kind = kind or config.get("cluster")
        options = None
        if kind == "local":
            cluster = start_cluster("local", **cluster_kwargs)
        else:
            options = JobOptions.from_config(jobs=jobs, gpus_per_job=gpus_per_job, walltime=walltime, queue=queue, account=account)
            cluster = start_cluster(kind, options, **cluster_kwargs)
        try:
            cp = cls(cluster)
        except BaseException:
            cluster.close()
            raise
        cp._own_cluster = cluster  # started here, so closed with the coupling
        if options is not None:
            cp._wait_for_jobs(options.jobs)
        return cp

    def _wait_for_jobs(self, jobs: int) -> None:
        try:
            wait_for_workers(self.client, expected_workers(self._own_cluster, jobs))
        except BaseException:
            self.close()
            raise

    # -- context management -------------------------------------------------------------
    def __enter__(self) -> Coupling:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop and release the actors this coupling spawned, end its run (its channels are closed
        and forgotten everywhere), close the client and cluster it started. Idempotent."""
        if getattr(self, "_closed", False):
            return
        self._ending = True
        if self._supervisor is not None:  # first, so that it does not restart what is stopped below
            self._supervisor.close()
        self._close_ports()  # before the actors: what the driver sent goes to them first
        for ref in list(self._actors.values()):
            try:
                ref.release(timeout=5)
            except Exception as e:  # a lost worker must not stop the teardown
                logger.info("could not stop actor %s: %s", ref.name, e)
        self._supervisor = None
        self._actors.clear()
        try:
            self._broker("coupler_end_run", run=self.run_id)
        except Exception as e:  # the scheduler is gone: nothing is left to forget there
            logger.info("could not end run %s: %s", self.run_id, e)
        if self._own_client:
            self.client.close()
        if self._own_cluster is not None:
            close_cluster(self._own_cluster)
            self._own_cluster = None
            # Workers unlink their shared-memory names on exit; this catches the
            # names of any worker killed while a segment was being handed over.
            shm.sweep_orphans()
        self._closed = True  # after its own last broker call: from now on every call says so

    @property
    def dashboard_link(self) -> str:
        """URL of the Dask dashboard."""
        return self.client.dashboard_link

    @property
    def page_link(self) -> str:
        """URL of the coupler page of the Dask dashboard (live channels, actors, loss curves)."""
        from coupler.runtime.observe.dashboard import page_link  # Bokeh, only when asked

        return page_link(self.client.dashboard_link)

    def workers(self) -> list[str]:
        """Addresses of the current workers, sorted."""
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    # -- channels -----------------------------------------------------------------------
    def _broker(self, op: str, **kwargs: Any) -> dict[str, Any]:
        self._check_open()
        return raise_for_reply(self.client.sync(getattr(self.client.scheduler, op), **kwargs))

    def _check_open(self) -> None:
        if self._closed:
            raise NoCoupling(f"this coupling is closed ({self.run_id}); open a new Coupling to go on")

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
            ChannelClosed: if a closed channel of that name still has consumers
                after ``DRAIN_WAIT`` seconds, or this coupling's run has ended.
        """
        check_name("channel", name)
        if spec is not None and not isinstance(spec, Spec):
            spec = Spec.of(spec)
        deadline = time.monotonic() + DRAIN_WAIT
        while True:
            try:
                self._broker(
                    "coupler_declare", name=name, policy=policy_to_wire(policy), spec=spec.to_wire() if spec else None,
                    run=self.run_id,
                )
                return name
            except ChannelClosed:
                # A closed channel of that name whose consumers are still draining it (an earlier
                # run's, whose end closed it): they end at its end of stream, then the name is free.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close_channel(self, name: str) -> None:
        """Close a channel: sends fail, consumers drain what they hold then see it closed.

        Every worker forgets it at once (routes, links, counters, replay logs);
        the broker forgets it once its last consumer has detached (consumers
        detach when their loop ends), and from then on a declaration of the name
        starts a new channel.

        The port that :meth:`send` made on it flushes and goes first; the one :meth:`receive`
        made goes after it (a receive on the closed channel makes a new one, which sees it closed).

        Raises:
            UnknownChannel: if it was never declared.
        """
        inbox = self._close_channel_ports(name)
        self._broker("coupler_close", name=name)
        if inbox is not None and not inbox.closed:
            try:
                inbox.close()
            except Exception as e:  # its relay may be gone with a lost worker: the coupling's close tries again
                logger.info("could not close %r: %r", inbox, e)

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
            name: actor name, unique on the cluster while this coupling is open; passed to the class as ``name=``.
            workers: worker address(es) allowed to host it.
            resources: Dask resources it needs (e.g. ``{"GPU": 1}``).
            **kwargs: its keyword arguments (e.g. ``inputs=``, ``outputs=``).

        Returns:
            A handle to control it.

        Raises:
            TypeError: if ``cls`` is not an actor host class, or ``inputs``/``outputs`` are not
                dicts of port names to channel names.
            ValueError: for a bad name, or the name of an actor of this coupling that was not released.
            InvalidRequest: (a ``ValueError``) for the name of an actor of another coupling open on the
                same cluster: actor names are the cluster's.
            UnknownChannel: for an input on a channel that was never declared (an output's
                channel may be declared later; its sends raise until it is).
            ChannelClosed: for an input on a channel that was closed.
            NoSuitableWorker: if no worker has ``resources`` and matches ``workers`` within
                ``coupler.placement-timeout`` (at once on the coupling's own local cluster,
                whose workers are all there).
            NoCoupling: if the coupling is closed.
        """
        self._check_open()
        check_name("actor", name)
        check_actor_class(cls)
        for ports in ("inputs", "outputs"):
            check_ports(ports, kwargs.get(ports))
        # Inputs attach when the actor is made; an output's channel may be declared after the spawn.
        self._check_channels(kwargs, ("inputs",), open_inputs=True)
        self._forget_released()
        if name in self._actors:
            raise ValueError(f"an actor named {name!r} already exists in this coupling (release() it to reuse the name)")
        self._broker("coupler_claim_actor", name=name, run=self.run_id)  # another live coupling's name: refused
        if isinstance(workers, str):
            workers = [workers]
        workers = list(workers) if workers else None  # [] means no restriction, as None does
        # Dask would queue an actor no worker can host forever; fail with a clear error instead. The
        # embedded cluster, once all its workers joined, never gains a worker: no time to wait for one.
        if resources or workers is not None:  # an actor that asks for nothing goes to any worker, one that joins later too
            check_placement(self.client, resources, workers, timeout=0 if self._workers_fixed() else None)
        # The supervisor spawns it, and respawns it elsewhere when its worker retires or is lost.
        spec = SpawnSpec(cls, args, kwargs, name, tuple(workers) if workers else None, resources)
        try:
            ref = self.supervisor.spawn(spec)
        except BaseException:
            self._free_name(name)  # nothing runs under it
            raise
        self._actors[name] = ref
        return ref

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor that moves and restarts this coupling's actors (created on first use)."""
        if self._supervisor is None:
            self._supervisor = Supervisor(
                self.client, key_prefix=f"coupler-actor-{os.getpid()}-{id(self)}", on_release=self._free_name
            )
        return self._supervisor

    def _workers_fixed(self) -> bool:
        """Whether this coupling's cluster is its own embedded one with every worker it will have joined."""
        own = self._own_cluster
        if not isinstance(own, EmbeddedCluster):
            return False
        return len(self.client.scheduler_info(n_workers=-1)["workers"]) >= len(own.worker_spec)

    def _spawn_relay(self, spec: SpawnSpec) -> ActorRef:
        self._check_channels(spec.kwargs, ("inputs", "outputs"))  # a driver port is on a declared channel
        return self.supervisor.spawn(spec)

    def _check_channels(self, kwargs: dict[str, Any], kinds: tuple[str, ...], open_inputs: bool = False) -> None:
        """Raise ``UnknownChannel`` or ``ChannelClosed`` for the channel of a port of ``kinds``, here
        rather than on the worker, where the same error also fills the worker's log with a failed task.

        With ``open_inputs``, an input on a channel that is closed but not yet forgotten (its
        consumers still draining) is refused too: a new consumer would get nothing from it.
        """
        for ports in kinds:
            for channel in (kwargs.get(ports) or {}).values():
                table = self._broker("coupler_routing", name=channel)
                if open_inputs and ports == "inputs" and table.get("closed"):
                    raise ChannelClosed(f"channel {channel!r} was closed: a new consumer would get nothing from it")

    def _relay_checkpoint(self, name: str) -> dict[str, Any] | None:
        sup = self._supervisor  # not the property: a question must not start a supervisor
        try:
            return None if sup is None else sup.last_checkpoint(name)
        except KeyError:  # released meanwhile
            return None

    def actors(self) -> dict[str, ActorStatus]:
        """Status of every actor this coupling spawned and has not released (asked directly).

        A released actor's final status stays with its handle (``ref.status()``) and in the broker.
        """
        self._forget_released()
        return {name: ref.status() for name, ref in self._actors.items()}

    def _forget_released(self) -> None:
        # A released handle keeps only its final status; the coupling lets it go, so that a script
        # spawning actor after actor (an ensemble's members, a steered pool) holds no more than it runs.
        for name, ref in list(self._actors.items()):  # a snapshot: another thread may spawn meanwhile
            if ref.ending is not None and self._actors.get(name) is ref:
                self._actors.pop(name, None)

    def _free_name(self, name: str) -> None:
        """Actor ``name`` was released: other couplings on the cluster may take the name now."""
        if self._ending:
            return  # the run's end frees every name at once
        try:
            self._broker("coupler_free_actors", names=[name], run=self.run_id)
        except Exception as e:  # the scheduler is unreachable: the run's end frees it
            logger.info("could not free actor name %s: %s", name, e)

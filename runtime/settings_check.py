"""``coupler.*`` settings checked at once, before a cluster starts.

The sections are read where they are used: the supervision policy by the driver,
the data plane's settings by each worker's endpoint, the timeouts by the calls
that wait. A bad value would then fail late and far away: in a worker's log
minutes after the start, or at the first ``spawn``. :func:`check_settings` reads
them in the driver, so that ``Coupling()`` and the ``coupler`` command refuse a
bad one at once, in one line that names it. ``local.gpus: auto`` is not
detected here (that is the local cluster's start); its spelling is checked.
"""

from __future__ import annotations


from coupler.runtime import config
from coupler.runtime.control.supervisor import SupervisionPolicy
from coupler.runtime.dataplane.settings import delivery_config, transport_config
from coupler.runtime.launch.cluster import KINDS, JobOptions
from coupler.runtime.launch.devices import resolve_gpus

#: Durations read with ``parse_timedelta`` where they are used.
DURATIONS = ("connect-timeout", "placement-timeout", "report-interval", "jobqueue.start-timeout")
#: Durations that may also be ``"auto"`` (a share of the walltime).
AUTO_DURATIONS = ("jobqueue.lifetime-margin", "jobqueue.lifetime-stagger")
#: Counts of the embedded cluster.
COUNTS = ("local.n-workers", "local.threads-per-worker")


def seconds(key: str, *, positive: bool = False) -> float:
    """The duration ``coupler.<key>`` in seconds (a number, or e.g. ``"30s"``).

    Raises:
        ValueError: naming the setting, for anything else, a negative one, or 0 where ``positive``.
    """
    return config.duration(f"coupler.{key}", config.get(key), positive=positive)


def check_settings() -> None:
    """Read the ``coupler.*`` settings (see the module) the way their users do, so that a bad one fails here.

    Raises:
        ValueError: naming the first bad setting, what it must be and what it is.
    """
    SupervisionPolicy.from_config()
    delivery_config()
    transport_config()
    config.flag("tls", config.section("tls"), "enabled", False)
    kind = config.get("cluster")
    if kind not in KINDS:
        raise ValueError(f"coupler.cluster must be one of {', '.join(KINDS)}, got {kind!r}")
    address = config.get("scheduler-address")
    if address is not None and not isinstance(address, str):
        raise ValueError(f"coupler.scheduler-address must be an address like tcp://host:8786 (or null), got {address!r}")
    for key in DURATIONS:
        seconds(key, positive=key in ("report-interval", "connect-timeout"))
    for key in AUTO_DURATIONS:
        if config.get(key) != "auto":
            seconds(key)
    for key in COUNTS:
        config.count(f"coupler.{key}", config.get(key), minimum=1)
    JobOptions.from_config()  # jobs and gpus-per-job
    resolve_gpus(config.get("local.gpus"), detect=list)  # the spelling only: no detection
    config.memory_limit("coupler.local.memory-limit", config.get("local.memory-limit"))

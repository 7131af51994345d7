"""coupler's settings in ``dask.config`` under the ``coupler`` key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dask.config
import dask.utils
import yaml

_DEFAULTS = os.path.join(os.path.dirname(__file__), "coupler.yaml")

with open(_DEFAULTS) as f:
    dask.config.update_defaults(yaml.safe_load(f))


def get(key: str) -> Any:
    """A coupler setting, e.g. ``get("local.n-workers")``.

    Raises:
        KeyError: for a key that has no default.
    """
    return dask.config.get(f"coupler.{key}")


def section(key: str) -> dict[str, Any]:
    """A section of coupler's settings as a dict with hyphenated keys, e.g. ``section("supervision")``.

    Dask keeps a key in the spelling it was first set in: an environment variable
    (``DASK_COUPLER__SUPERVISION__MAX_RESTARTS=5``) or a YAML file may bring
    ``max_restarts``, and ``dask.config.get("coupler.supervision")["max-restarts"]``
    would then miss it. Read sections through this, never as a plain dict.

    Returns:
        The section's keys with underscores as hyphens (``{}`` if it is not set).
    """
    return hyphenated(dask.config.get(f"coupler.{key}", default=None) or {})


def hyphenated(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with every top-level key spelled with hyphens (``max_restarts`` as ``max-restarts``)."""
    return {str(k).replace("_", "-"): v for k, v in settings.items()}


def flag(section_name: str, c: Mapping[str, Any], key: str, default: bool) -> bool:
    """The switch ``coupler.<section_name>.<key>`` in the section ``c``: a YAML boolean, or ``true``/``false`` (``yes``/``no``,
    ``on``/``off``, ``1``/``0``) as an environment variable brings it (Dask keeps ``false`` a string,
    which ``bool()`` would read as on).

    Raises:
        ValueError: for anything else.
    """
    value = c.get(key, default)
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if isinstance(value, (str, int)) and str(value).strip().lower() in words:
        return words[str(value).strip().lower()]
    raise ValueError(f"coupler.{section_name}.{key} must be true or false, got {value!r}")


def duration(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as seconds: a number, or text Dask reads (``"30s"``, ``"2 minutes"``, ``"100us"``).

    Args:
        name: what it is, for the error (``coupler.transport.spin``).
        value: the setting's value.
        positive: refuse 0 too.

    Raises:
        ValueError: naming ``name``, for anything else, a negative duration, or 0 where ``positive``.
    """
    try:
        seconds = float(dask.utils.parse_timedelta(value, default="seconds"))
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError):  # each kind of bad text
        raise ValueError(f"{name} must be a duration (seconds or e.g. '30s'), got {value!r}") from None
    if seconds < 0 or (positive and seconds == 0):
        raise ValueError(f"{name} must be a duration {'> 0' if positive else '>= 0'}, got {value!r}")
    return seconds


def count(name: str, value: Any, *, minimum: int = 0) -> int:
    """``value`` as a whole number of at least ``minimum`` (a count of workers, jobs, GPUs).

    Args:
        name: what it is, for the error (``coupler.jobqueue.jobs``).
        value: the setting's value.
        minimum: the least it may be.

    Raises:
        ValueError: naming ``name``, for anything else (``True``, ``2.5`` and ``"2"`` included).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def memory_limit(name: str, value: Any) -> Any:
    """``value`` if Dask takes it as a worker's memory limit, else an error that names the setting.

    Dask takes ``"auto"``, ``None`` or 0 (no limit), a number of bytes, a
    fraction of the machine's memory (0 to 1), or text such as ``"4 GiB"``.

    Raises:
        ValueError: naming ``name``, for a negative number, a switch, or text that is no size.
    """
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        try:
            dask.utils.parse_bytes(value)
        except ValueError:
            raise ValueError(f"{name} must be 'auto', a size such as '4 GiB', a fraction of the memory or null, got {value!r}") from None
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
        raise ValueError(f"{name} must be 'auto', a size such as '4 GiB', a fraction of the memory or null, got {value!r}")
    return value


def load_file(path: str) -> dict[str, Any]:
    """Merge a YAML file of Dask settings (``jobqueue:``, ``coupler:``...) into ``dask.config``.

    Its values take precedence over what is set already, as for a file named in
    ``DASK_CONFIG``; this is what ``coupler --config FILE`` does.

    Returns:
        The file's settings.

    Raises:
        OSError: if it cannot be read.
        ValueError: if it is not a YAML mapping.
    """
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of settings (e.g. 'jobqueue:' or 'coupler:'); got {type(data).__name__}")
    dask.config.update(dask.config.config, data, priority="new")
    return data

"""coupler's settings in ``dask.config`` under the ``coupler`` key."""

from __future__ import annotations

import os
from typing import Any

import dask.config
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

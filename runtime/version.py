"""coupler's version, from one source: the installed package's metadata (``pyproject.toml``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def coupler_version() -> str:
    """The version of the installed ``coupler`` distribution, e.g. ``"0.1.0"``.

    Read from the package metadata that ``pip install`` (editable or wheel) writes
    from ``pyproject.toml``, so there is no second copy of the number to forget.

    Returns:
        The version string, or ``"0+unknown"`` when the source tree is imported
        without being installed (no metadata to read).
    """
    try:
        return version("coupler")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = coupler_version()

__all__ = ["__version__", "coupler_version"]

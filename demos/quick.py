"""The ``--quick`` option every demo has: the same coupling, smaller, for smoke runs and tests."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def parse_with_quick(parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: dict[str, Any]) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``, plus ``--quick``, which swaps in the defaults ``quick``.

    Options given explicitly still win over the quick defaults, so
    ``--quick --workers 1`` means "small, on one worker".

    Args:
        parser: the demo's parser (``--quick`` is added to it here).
        argv: the arguments (``None``: ``sys.argv[1:]``).
        quick: destination name -> default under ``--quick`` (e.g. ``{"train_seconds": 8.0}``).

    Returns:
        The parsed options; ``quick`` is ``True`` when ``--quick`` was given.

    Raises:
        ValueError: if ``quick`` names an option the parser does not have (a demo and its quick set drifted).
    """
    known = {a.dest for a in parser._actions}  # argparse has no public list of destinations
    unknown = sorted(set(quick) - known)
    if unknown:
        raise ValueError(f"--quick sets options the parser does not have: {', '.join(unknown)}")
    shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in quick.items())
    parser.add_argument("--quick", action="store_true", help=f"a small, fast run for smoke tests: {shown}")
    first, _ = parser.parse_known_args(argv)
    if first.quick:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)

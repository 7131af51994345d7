"""The demos' progress bars: live on a terminal, a line every few seconds in a log."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 10.0
"""Seconds between progress lines when the output is not a terminal (a log file, CI)."""


def progress_bar(**kwargs: Any) -> tqdm:
    """A ``tqdm`` bar on standard output.

    On a terminal it redraws in place as usual. Written to a file or a pipe, each
    redraw is a new line of the log, so it redraws every ``LOG_INTERVAL_S`` seconds
    instead of ten times a second.

    Args:
        **kwargs: passed to ``tqdm`` (``total``, ``desc``, ``unit``, ...).

    Returns:
        The bar.
    """
    interactive = sys.stdout.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else LOG_INTERVAL_S)
    if not interactive:
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
    return tqdm(file=sys.stdout, **kwargs)


def advance(bar: tqdm, n: int, **postfix: Any) -> None:
    """Move ``bar`` to ``n`` done with ``postfix`` shown, redrawing only as often as the bar's interval allows.

    Args:
        bar: a bar of :func:`progress_bar`.
        n: items done so far (a count polled from an actor, so it may jump or stay).
        **postfix: values shown after the count (``loss``, ``train_steps``, ...).
    """
    bar.set_postfix(refresh=False, **postfix)
    bar.update(n - bar.n)

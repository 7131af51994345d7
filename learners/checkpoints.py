"""Trainer checkpoints on disk: ``OnlineTrainer.checkpoint()`` output as one msgpack file.

``OnlineTrainer.checkpoint`` already returns everything needed to resume
exactly (model variables, optimiser state including Adam moments and step
count, loss history) as plain numpy data; this module writes and reads it with
``flax.serialization`` (msgpack; numpy arrays bit-exact, any dtype), so a
restored trainer continues bit for bit where the saved one was.

msgpack maps need string keys on reading, so integer keys (list entries such
as ``layers/0``) are written as strings; ``OnlineTrainer.restore`` turns digit
strings back into integer paths.

Example:
    >>> save_checkpoint(path, trainer.checkpoint())
    >>> fresh = OnlineTrainer(config, seed=1)
    >>> fresh.restore(load_checkpoint(path))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

CHECKPOINT_KEYS = ("model", "optimizer", "loss_history")


def _string_keys(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return np.asarray(tree)


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Mapping[str, Any]) -> Path:
    """Write ``checkpoint`` (``OnlineTrainer.checkpoint()`` output) to ``path`` atomically.

    The file is written next to ``path`` and renamed over it, so a crash never
    leaves a half-written checkpoint behind.

    Args:
        path: file to write (parent directories are created).
        checkpoint: ``{"model": ..., "optimizer": ..., "loss_history": [(step, loss), ...]}``.

    Returns:
        The path written.

    Raises:
        ValueError: if a key is missing.
    """
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}; expected keys {list(CHECKPOINT_KEYS)}, got {sorted(checkpoint)}")
    history = list(checkpoint["loss_history"])
    payload = {
        "model": _string_keys(checkpoint["model"]),
        "optimizer": _string_keys(checkpoint["optimizer"]),
        "history_steps": np.asarray([s for s, _ in history], np.int64),
        "history_losses": np.asarray([v for _, v in history], np.float64),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(payload))
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by ``save_checkpoint``; pass the result to ``OnlineTrainer.restore``.

    Args:
        path: the checkpoint file.

    Returns:
        ``{"model": ..., "optimizer": ..., "loss_history": [(step, loss), ...]}``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a checkpoint of this format.
    """
    payload = serialization.msgpack_restore(Path(path).read_bytes())
    expected = {"model", "optimizer", "history_steps", "history_losses"}
    if not isinstance(payload, dict) or set(payload) != expected:
        got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a trainer checkpoint: expected keys {sorted(expected)}, got {got}")
    history = [(int(s), float(v)) for s, v in zip(payload["history_steps"], payload["history_losses"])]
    return {"model": payload["model"], "optimizer": payload["optimizer"], "loss_history": history}

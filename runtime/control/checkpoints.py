"""Durable checkpoints: actors' checkpoints written to a directory or an fsspec URL.

The supervisor keeps every actor's last checkpoint in the driver's memory,
which is enough to restart an actor whose worker was lost. To survive the loss
of the whole cluster (and of the driver) it also writes them to a
:class:`CheckpointStore` (``coupler.supervision.checkpoint-dir``): a local
directory, or any URL fsspec understands (``s3://``, ``gs://``, ``memory://``...)
when fsspec is importable (it comes with dask). A later run with
``coupler.supervision.resume`` restores each actor it spawns from the stored
checkpoint of the same name.

The format is msgpack with numpy arrays as typed byte blocks: no pickle, so a
checkpoint read back cannot run code. Each actor's checkpoint is one file,
``<name>.ckpt`` (``/`` in names becomes ``%2F``), replaced atomically where the
file system allows (a local rename; object stores replace whole objects).
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from coupler.runtime.errors import CheckpointError

SUFFIX = ".ckpt"
_ARRAY = 1  # msgpack extension type of a numpy array
_TUPLE = 2  # ... of a tuple (kept apart from lists, for state dicts that care)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray) or isinstance(obj, np.generic):
        a = np.asarray(obj)
        if a.dtype.hasobject:
            raise TypeError(f"arrays of Python objects cannot be checkpointed, got dtype {a.dtype}")
        head = msgpack.packb([a.dtype.str, list(a.shape)])
        return msgpack.ExtType(_ARRAY, head + np.ascontiguousarray(a).tobytes())
    if isinstance(obj, tuple):
        return msgpack.ExtType(_TUPLE, encode(list(obj)))
    raise TypeError(f"checkpoints hold numpy arrays, numbers, strings, bytes, lists, tuples and dicts; got {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _ARRAY:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        dtype, shape = next(unpacker)
        offset = unpacker.tell()
        return np.frombuffer(data, np.dtype(dtype), offset=offset).reshape(shape).copy()
    if code == _TUPLE:
        return tuple(decode(data))
    raise ValueError(f"unknown extension type {code} in a checkpoint")


def encode(checkpoint: Any) -> bytes:
    """A checkpoint as bytes.

    Raises:
        TypeError: for a value that is not plain data, naming where it is (``state/w``).
    """
    try:
        return msgpack.packb(checkpoint, default=_default, use_bin_type=True, strict_types=True)
    except TypeError as e:
        found = first_not_plain(checkpoint)
        if found is None:  # msgpack's own refusal of something the walk takes for plain
            raise
        where, value = found
        jax_hint = " (a JAX array: np.asarray(x) or jax.device_get(x) in state_dict)" if "jax" in type(value).__module__ else ""
        raise TypeError(f"{e} at {where or 'the top'}{jax_hint}") from None


_PLAIN = (type(None), bool, int, float, str, bytes)


def first_not_plain(value: Any, path: str = "") -> tuple[str, Any] | None:
    """Where (``state/w``) and what the first value a checkpoint cannot hold is (``None``: all plain).

    A walk that copies nothing, with :func:`encode`'s rules: dicts and lists of exactly those
    types (a subclass is refused), tuples (named ones too), numpy arrays and scalars without
    Python objects, and ``None``, bools, numbers, strings and bytes.
    """
    if type(value) is dict:
        items: Any = ((str(k), v) for k, v in value.items())
    elif type(value) is list or isinstance(value, tuple):
        items = ((str(i), v) for i, v in enumerate(value))
    elif isinstance(value, (np.ndarray, np.generic)):
        return (path, value) if np.asarray(value).dtype.hasobject else None
    else:
        return None if type(value) in _PLAIN else (path, value)
    for key, item in items:
        found = first_not_plain(item, f"{path}/{key}" if path else key)
        if found is not None:
            return found
    return None


def decode(data: bytes) -> Any:
    """The inverse of :func:`encode`.

    Raises:
        ValueError: for bytes that are not an encoded checkpoint.
    """
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError, TypeError) as e:
        raise ValueError(f"not a coupler checkpoint ({e!r})") from None


def _file_name(actor: str) -> str:
    return urllib.parse.quote(actor, safe="") + SUFFIX


class CheckpointStore:
    """Actors' checkpoints in a directory or at an fsspec URL, one file per actor.

    Args:
        location: a local path, or a URL with a scheme (``s3://bucket/run``,
            ``memory://run``...) read and written through fsspec.

    Raises:
        CheckpointError: for a URL when fsspec (or its protocol's package) is not installed,
            or a location that cannot be created or written.

    Examples:
        >>> store = CheckpointStore(tempfile.mkdtemp())
        >>> _ = store.save("sim", {"format": 1, "state": {"u": np.zeros(3)}})
        >>> store.load("sim")["state"]["u"].tolist()
        [0.0, 0.0, 0.0]
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.location = str(location)
        self._fs: Any = None
        if "://" in self.location and not self.location.startswith("file://"):
            try:
                import fsspec
            except ImportError:
                raise CheckpointError(f"checkpoints at {self.location!r} need fsspec (pip install fsspec)") from None
            try:
                self._fs, self._root = fsspec.core.url_to_fs(self.location)
                self._fs.makedirs(self._root, exist_ok=True)
            except (ImportError, ValueError, OSError) as e:  # an unknown protocol, its package missing, no access
                raise CheckpointError(f"cannot keep checkpoints at {self.location!r}: {e}") from None
        else:
            root = Path(self.location.removeprefix("file://")).expanduser()
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # not a directory, no permission, read-only file system
                raise CheckpointError(f"cannot keep checkpoints in {self.location!r}: {e}") from None
            self._root = str(root)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.location!r})"

    def path(self, actor: str) -> str:
        """Where actor ``actor``'s checkpoint lives."""
        return f"{self._root.rstrip('/')}/{_file_name(actor)}"

    def save(self, actor: str, checkpoint: dict[str, Any]) -> str:
        """Write ``checkpoint`` as actor ``actor``'s (replacing the previous one); return its path.

        Raises:
            CheckpointError: if it could not be encoded or written.
        """
        try:
            data = encode(checkpoint)
        except (TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"checkpoint of actor {actor!r} cannot be stored: {e}") from None
        target = self.path(actor)
        try:
            if self._fs is None:
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self._root)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)  # readers see the old file or the new one, never half of one
            else:
                with self._fs.open(target, "wb") as f:
                    f.write(data)
        except OSError as e:
            raise CheckpointError(f"could not write the checkpoint of actor {actor!r} to {target}: {e}") from None
        return target

    def load(self, actor: str) -> dict[str, Any] | None:
        """Actor ``actor``'s stored checkpoint (``None`` if there is none).

        Raises:
            CheckpointError: if the file exists but cannot be read or decoded.
        """
        target = self.path(actor)
        try:
            if self._fs is None:
                if not os.path.exists(target):
                    return None
                data = Path(target).read_bytes()
            else:
                if not self._fs.exists(target):
                    return None
                with self._fs.open(target, "rb") as f:
                    data = f.read()
            ck = decode(data)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"could not read the checkpoint of actor {actor!r} at {target}: {e}") from None
        if not isinstance(ck, dict):
            raise CheckpointError(f"{target} holds {type(ck).__name__}, not a checkpoint")
        return ck

    def actors(self) -> list[str]:
        """The names of the actors with a stored checkpoint, sorted."""
        if self._fs is None:
            names = os.listdir(self._root)
        else:
            names = [p.rsplit("/", 1)[-1] for p in self._fs.ls(self._root, detail=False)]
        return sorted(urllib.parse.unquote(n[: -len(SUFFIX)]) for n in names if n.endswith(SUFFIX) and not n.startswith(".tmp-"))


__all__ = ["CheckpointError", "CheckpointStore", "decode", "encode"]

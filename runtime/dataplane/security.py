"""How a worker's streams are secured: TLS as the Dask comm is, and the cluster's stream secret.

Streams do not go through Dask's comms, so they take their protection from
them: a worker whose comm is ``tls://`` or ``wss://`` encrypts its streams with
the contexts of its Dask ``Security`` (:func:`ssl_contexts`). Every stream,
encrypted or not, is authenticated with the secret the broker hands out
(:func:`fetch_stream_secret`, :mod:`~coupler.runtime.dataplane.auth`).
"""

from __future__ import annotations

import ssl
from typing import Any, Awaitable, Callable

from coupler.runtime.dataplane.auth import StreamKey

SECURED_SCHEMES = ("tls://", "wss://")


def ssl_contexts(worker: Any) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """TLS contexts from the worker's Dask ``Security`` whenever its comm is secured (``tls://``, ``wss://``).

    Args:
        worker: the Dask worker (its ``address`` and ``security`` are read).

    Returns:
        ``(server, client)``: the context the worker's listener serves with and
        the one its links dial with; ``(None, None)`` on an unsecured comm.
    """
    if not str(worker.address).startswith(SECURED_SCHEMES):
        return None, None
    server = worker.security.get_listen_args("worker").get("ssl_context")
    client = worker.security.get_connection_args("worker").get("ssl_context")
    return server, client


async def fetch_stream_secret(key: StreamKey, ask: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Ask the broker for the cluster's stream secret and set ``key`` to it.

    Streams wait for the key (:meth:`StreamKey.secret`), so the worker starts
    before the answer comes. Without one (no broker, or an old one) the key
    fails: every stream is then refused, saying why, rather than left waiting.

    Args:
        key: the worker's stream key, set or failed here.
        ask: the broker call (``coupler_stream_secret``); its reply holds ``secret``.
    """
    try:
        key.set((await ask())["secret"])
    except Exception as e:  # no broker, or an old one: every stream is refused, saying why
        key.fail(f"the broker did not hand out the cluster's stream secret: {e!r}")


__all__ = ["fetch_stream_secret", "ssl_contexts"]

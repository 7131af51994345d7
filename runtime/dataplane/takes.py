"""Gathering a restarted merging actor's recorded takes from the workers of its consumers.

The notes an actor's messages carried (:mod:`~coupler.runtime.dataplane.lineage`)
are kept by its consumers' ``Queue`` buffers, on whatever workers those run.
When the actor restarts, its worker asks each of them for the takes since the
checkpoint (:meth:`TakeGathering.gather`); a worker answers from the buffers it
holds (:meth:`TakeGathering.held`, the ``coupler_takes`` handler). The actor
joins the answers with :func:`~coupler.runtime.dataplane.lineage.replay_order`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Mapping

from coupler.runtime.dataplane.buffers import ConsumerBuffer, QueueBuffer
from coupler.runtime.control.routing_table import RoutingTable
from coupler.runtime.dataplane.lineage import Take
from coupler.runtime.errors import raise_for_reply

logger = logging.getLogger(__name__)

Broker = Callable[..., Awaitable[dict[str, Any]]]


class TakeGathering:
    """One worker's side of take gathering: what its consumers hold, and asking the others.

    Args:
        worker: the Dask worker (its ``rpc`` reaches the other workers).
        buffers: this worker's consumer buffers, by (channel, consumer) (shared with the endpoint).
        address: this worker's address (asked on each call; a worker answers itself without a message).
        broker: calls a broker operation by name with keyword arguments; returns its checked reply.
    """

    def __init__(
        self,
        worker: Any,
        buffers: Mapping[tuple[str, str], ConsumerBuffer],
        address: Callable[[], str],
        broker: Broker,
    ) -> None:
        self.worker, self.buffers, self.address, self.broker = worker, buffers, address, broker

    def held(self, channel: str, source: str, since: int) -> dict[str, Any]:
        """What each consumer of ``channel`` on this worker holds of ``source``'s takes from ``since`` on.

        Args:
            channel: channel name.
            source: the producing actor's name.
            since: the number of the first take wanted.

        Returns:
            The ``coupler_takes`` reply: ``parts``, one list per ``Queue``
            consumer here of ``[number, channel, source, seq]`` rows.
        """
        parts = [
            [[n, *take] for n, take in buf.takes_since(str(source), int(since)).items()]
            for (ch, _), buf in list(self.buffers.items())
            if ch == channel and isinstance(buf, QueueBuffer)
        ]
        return {"status": "OK", "parts": parts}

    async def gather(self, channels: list[str], source: str, since: int) -> list[dict[int, Take]]:
        """Ask every consumer of ``channels`` for the takes ``source``'s messages told it, from ``since`` on.

        A consumer whose worker does not answer is left out, with a warning:
        only one failure at a time is covered (see docs/reliability.md).

        Args:
            channels: the actor's output channels (only ``Queue`` ones carry notes that matter).
            source: the actor's name.
            since: the number of the first take after the checkpoint it restarts from.

        Returns:
            One dict (take number -> take) per consumer.

        Raises:
            CouplerError: as :func:`~coupler.runtime.errors.raise_for_reply`, when the broker
                or a consumer's worker refuses.
        """
        asks = []
        for channel in channels:
            table = RoutingTable.from_wire(await self.broker("coupler_routing", name=channel, forgotten_ok=True))
            if table.is_queue:
                asks += [self._ask(channel, a, source, since) for a in sorted({c.worker for c in table.consumers})]
        parts: list[dict[int, Take]] = []
        for reply in await asyncio.gather(*asks):
            parts += [{int(n): (str(ch), str(src), int(seq)) for n, ch, src, seq in part} for part in reply]
        return parts

    async def _ask(self, channel: str, address: str, source: str, since: int) -> list[list[list[Any]]]:
        if address == self.address():
            return self.held(channel, source, since)["parts"]
        try:
            reply = await self.worker.rpc(address).coupler_takes(channel=channel, source=source, since=since)
        except (OSError, asyncio.TimeoutError) as e:
            logger.warning("takes of %r on %r: consumer worker %s did not answer: %s", source, channel, address, e)
            return []
        return raise_for_reply(reply)["parts"]


__all__ = ["TakeGathering"]

"""Gathering what a restarted producer's consumers hold of its predecessor's messages.

Two records live in the consumers' ``Queue`` buffers, on whatever workers those run:

- the takes notes a merging actor's messages carried
  (:mod:`~coupler.runtime.dataplane.lineage`): the restarted actor joins them with
  :func:`~coupler.runtime.dataplane.lineage.replay_order` to repeat its takes;
- the numbers each member of a work-sharing queue received
  (:mod:`~coupler.runtime.dataplane.receipts`): the restarted producer builds a
  :class:`~coupler.runtime.dataplane.receipts.ReplayPlan` from them.

The restarted producer's worker asks every consumer's worker (:meth:`ConsumerRecords.gather_takes`,
:meth:`ConsumerRecords.gather_receipts`); a worker answers from the buffers it holds
(the ``coupler_takes`` and ``coupler_receipts`` handlers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Mapping

from coupler.runtime.dataplane.buffers import ConsumerBuffer, QueueBuffer
from coupler.runtime.control.routing_table import RoutingTable
from coupler.runtime.dataplane.lineage import Take
from coupler.runtime.dataplane.receipts import ReplayPlan
from coupler.runtime.errors import raise_for_reply

logger = logging.getLogger(__name__)

Broker = Callable[..., Awaitable[dict[str, Any]]]

ASK_TIMEOUT = 10.0
"""Seconds one consumer's worker has to answer; then it is left out, as one that refused the connection.

A worker cut off by a partition would otherwise hold the restart for the whole
gathering's timeout, and fail it.
"""


class ConsumerRecords:
    """One worker's side of the gathering: what its consumers hold, and asking the others.

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

    def held_takes(self, channel: str, source: str, since: int) -> dict[str, Any]:
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

    async def gather_takes(self, channels: list[str], source: str, since: int) -> list[dict[int, Take]]:
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
            return self.held_takes(channel, source, since)["parts"]
        try:
            reply = await asyncio.wait_for(
                self.worker.rpc(address).coupler_takes(channel=channel, source=source, since=since), ASK_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError) as e:
            logger.warning("takes of %r on %r: consumer worker %s did not answer: %s", source, channel, address, e)
            return []
        return raise_for_reply(reply)["parts"]

    def held_receipts(self, channel: str, consumer: str, source: str, since: int) -> dict[str, Any]:
        """What work-sharing member ``consumer`` of ``channel`` here had of ``source``'s messages.

        Returns:
            The ``coupler_receipts`` reply: ``mark`` (its highest number from
            ``source``, ``-1`` for none) and ``seqs`` (those from ``since`` on),
            or ``mark`` ``-1`` and no ``seqs`` when the member is not here (it moved
            or ended: nothing it had can be sent to it again here).
        """
        buf = self.buffers.get((str(channel), str(consumer)))
        if not isinstance(buf, QueueBuffer) or buf.receipts is None:
            return {"status": "OK", "mark": -1, "seqs": []}
        mark, seqs = buf.receipts_since(str(source), int(since))
        return {"status": "OK", "mark": mark, "seqs": seqs}

    async def gather_receipts(self, channel: str, source: str, since: int) -> ReplayPlan | None:
        """Ask every member of work-sharing ``channel`` what it had of ``source``'s messages from ``since`` on.

        A member whose worker does not answer is left out, with a warning (one
        failure at a time, see docs/reliability.md): the plan then routes as if it
        had nothing.

        Args:
            channel: one of the restarted producer's output channels.
            source: the producer's name.
            since: its checkpoint's next number on ``channel``.

        Returns:
            The plan for the messages it sends again, or ``None`` when the channel
            is not a work-sharing ``Queue`` (or no member had anything from ``since`` on).

        Raises:
            CouplerError: as :func:`~coupler.runtime.errors.raise_for_reply`, when the broker
                or a member's worker refuses.
        """
        table = RoutingTable.from_wire(await self.broker("coupler_routing", name=channel, forgotten_ok=True))
        if not (table.is_queue and table.shared):
            return None
        members = list(table.consumers)
        replies = await asyncio.gather(*[self._ask_receipts(channel, c.cid, c.worker, source, since) for c in members])
        plan = ReplayPlan.from_records(since, [(c.cid, r["mark"], r["seqs"]) for c, r in zip(members, replies) if r])
        return None if plan.over(since) else plan

    async def _ask_receipts(self, channel: str, cid: str, address: str, source: str, since: int) -> dict[str, Any] | None:
        if address == self.address():
            return self.held_receipts(channel, cid, source, since)
        try:
            reply = await asyncio.wait_for(
                self.worker.rpc(address).coupler_receipts(channel=channel, consumer=cid, source=source, since=since),
                ASK_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError) as e:
            logger.warning("receipts of %r on %r: member worker %s did not answer: %s", source, channel, address, e)
            return None
        return raise_for_reply(reply)


__all__ = ["ConsumerRecords"]

"""A ``Queue`` buffer's producer links from other workers: their credits, commits and reader roles.

Part of :class:`~coupler.runtime.dataplane.buffers.QueueBuffer` (a base class of
it): a stream's receiver registers its link here when it opens, asks for credits
for it, and removes it at the stream's end. Every method takes the buffer's
lock; the grant and commit callbacks are called after releasing it.
"""

from __future__ import annotations

import threading
from typing import Any

from coupler.runtime.dataplane.credits import CreditLedger, GrantFn
from coupler.runtime.dataplane.marks import CommitFn, DeliveryMarks
from coupler.runtime.dataplane.read_role import ReadRole


class CreditedLinks:
    """The links part of a ``Queue`` buffer (see the module docstring).

    The buffer sets these attributes; this class only uses them.
    """

    _cond: threading.Condition
    credits: CreditLedger
    marks: DeliveryMarks
    _roles: dict[int, ReadRole | None]  # per link: its reader role, if it offers one
    _pull: bool
    _cursor: Any

    def add_link(self, link: int, grant: GrantFn, commit: CommitFn | None = None, role: ReadRole | None = None) -> None:
        """Register a producer link and how to tell it about new credits (and commits).

        Args:
            link: the link's id.
            grant: called with (slots granted, slots reserved for the link in all) when
                slots are reserved for it.
            commit: called with the consumer's committed marks, now if there are any and
                at every :meth:`commit` (the producer then forgets what they cover).
            role: the link's reader role, which a waiting consumer takes while this
                is the queue's only link (see read_role.py).
        """
        with self._cond:
            self._roles[link] = role
            self.credits.add(link, grant)
            if commit is not None:
                self.marks.fns[link] = commit
            marks = dict(self.marks.committed)
        if commit is not None and marks:
            commit(marks)

    def remove_link(self, link: int) -> None:
        """Forget a link; its unused credits become free slots again."""
        with self._cond:
            self._roles.pop(link, None)
            self.credits.remove(link)
            self.marks.fns.pop(link, None)
            grants = self.credits.hand_out()
            self._cond.notify_all()
        self.credits.notify(grants)

    def want(self, link: int, n: int, returned: int = 0) -> None:
        """A link would like ``n`` more slots than it holds; grant what is free now, the rest later.

        Args:
            link: the link's id.
            n: slots wanted beyond those held.
            returned: unused slots the link gives back (its producer went idle).
        """
        with self._cond:
            self.credits.want(link, n, returned)
            if returned:
                self._cond.notify_all()
            grants = self.credits.hand_out()
        self.credits.notify(grants)

    def reserved(self, link: int) -> int:
        """Slots reserved for ``link``: credits it holds, plus messages on their way, plus grants not yet sent."""
        with self._cond:
            return self.credits.reserved(link)

    def _reader_role(self) -> ReadRole | None:
        # One stream only: a consumer reading one socket would leave the others' messages waiting. Not for
        # work-sharing members (their room is offered while they wait) nor a restored actor following an order.
        if len(self._roles) != 1 or self._pull or self._cursor.order is not None:
            return None
        return next(iter(self._roles.values()))


__all__ = ["CreditedLinks"]

"""The data plane: tensors from producers to consumers, one hop, worker to worker.

Modules, one concept each:

- :mod:`~coupler.runtime.dataplane.endpoint`: the worker plugin that assembles the
  parts below and connects them to the broker (routing updates, commits). Its
  own parts: ``consumers`` (attaching and detaching the consumers on the worker),
  ``retention`` (dropping a channel's routes, links and outboxes once nothing
  needs them), ``gathering`` (a restarted producer's takes and receipts from its
  consumers' workers), ``report`` (the periodic report to the broker) and
  ``security`` (TLS as the Dask comm has it; the cluster's stream secret).
- :mod:`~coupler.runtime.dataplane.sender` (sequence numbers, broadcast, work
  sharing, flush) over :mod:`~coupler.runtime.dataplane.dispatch` (one message to
  one consumer, after what it is owed), which keeps the worker's links in a
  ``link_table`` and its outboxes in an ``outbox_table``, and hands a message for
  a consumer on its own worker to ``local_delivery``; ``flush`` waits until a
  channel's messages from this worker were all accepted.
- :mod:`~coupler.runtime.dataplane.outbox` (sans-IO): what one worker owes one
  consumer: its replay log, its owed messages, its incarnation, its resend.
- :mod:`~coupler.runtime.dataplane.routing`: a worker's copy of a channel's routing
  table, and the waits on it.
- :mod:`~coupler.runtime.dataplane.payloads`: who owns a payload, and every copy.
- :mod:`~coupler.runtime.dataplane.link` (producer side) and
  :mod:`~coupler.runtime.dataplane.receiver` (consumer side): one stream per
  (channel, consumer, producing worker). A link's parts: ``dial`` (opening the
  stream), ``staging`` (its copies and segments), ``window`` (sans-IO: credits,
  batching, acknowledgements), ``link_waits`` (waiting for room and for
  acknowledgements) and ``acks`` (the thread reading the stream back).
- :mod:`~coupler.runtime.dataplane.fence` (sans-IO): producer instances' epochs, and the
  rule by which a consumer's worker refuses a replaced instance once its successor delivered.
- :mod:`~coupler.runtime.dataplane.wire`: framing and the checks of every frame.
- :mod:`~coupler.runtime.dataplane.read_role` (its state sans-IO): which of a stream's
  receiver thread and its waiting consumer's thread reads the socket.
- :mod:`~coupler.runtime.dataplane.spin` (sans-IO): how long a consumer waiting on its
  stream polls before it sleeps.
- :mod:`~coupler.runtime.dataplane.auth`: the per-cluster stream secret and handshake.
- :mod:`~coupler.runtime.dataplane.shm`: shared-memory segments on one host.
- :mod:`~coupler.runtime.dataplane.buffers`: the consumer buffer each policy implies.
  A ``Queue``'s parts: ``queue_links`` (its links from other workers: credits, commits,
  reader roles), ``credits`` (slots granted to producers' links, sans-IO),
  ``marks`` (taken and committed sequence numbers, dedupe) and ``order_cursor``
  (an input's place in a restored actor's recorded take order).
- :mod:`~coupler.runtime.dataplane.lineage`: input-order logging (sans-IO): exactly-once
  across the restart of an actor that merges inputs.
- :mod:`~coupler.runtime.dataplane.ports`: the ports actors send and receive on.
- :mod:`~coupler.runtime.dataplane.cancel`: the flag that interrupts an actor's blocked sends.
- :mod:`~coupler.runtime.dataplane.settings`: ``coupler.transport`` and ``coupler.delivery``.

Thread model (one worker process):

- *Actor run-loop threads* (one per actor) call ``send`` and ``receive``. A send
  runs the delivery in the calling thread: it writes to the link's socket itself
  when no other thread is writing (the "writer role", ``Link.pump``).
- *The worker's event loop* runs broker calls (attach, detach, routing), applies
  routing updates pushed by the broker, and the periodic report.
- Per link, one *acknowledgement reader* thread (``coupler-acks-*``, ``acks.AckReader``) reads the
  consumer's ACK and GRANT frames; it hands what a broken stream owed back to the
  consumer's outbox (``on_orphans``) and passes commits on.
- Per worker, one *listener* thread accepts streams; per accepted stream one
  *receiver* thread (``coupler-recv``) reads frames into the consumer's buffer.
  A consumer's thread waiting on an empty ``Queue`` fed by one plain-TCP stream
  takes that stream's *reader role* and reads the next frame itself
  (:mod:`~coupler.runtime.dataplane.read_role`): one reader at a time, the
  receiver thread asleep meanwhile and reading again at most ``PARK_S`` after
  the consumer left. A consumer whose last wait was short spins (polls without
  sleeping, :mod:`~coupler.runtime.dataplane.spin`) before it sleeps in ``poll``.
- Short-lived threads: a resend per consumer owed messages (``Dispatch.resend_owed``), a
  stream's closing writer (``coupler-link-bye``), idle-credit returns.

Waits: a blocked send or flush waits on the condition that the awaited change
notifies (a link's ``cond`` for credits, acknowledgements and failures; a
route's ``cond`` for routing updates; a buffer's for free slots), with its
deadline, or the end of a lost consumer's expected return, as its only timeout.
What stops an actor is a :class:`~coupler.runtime.dataplane.cancel.Cancel`,
which notifies those conditions itself, so no wait looks at a flag in slices.
One wait still polls: a send on a work-sharing ``Queue`` whose consumers all
lack room backs off (up to 20 ms) before it looks at each link again.

Locks, outer first (a thread holding one never takes an earlier one):
``ProducerStats.lock`` (held for a whole send: one gap-free sequence per source),
``Route.cond``, ``Endpoint._lock`` (routes and counters), ``LinkTable._lock`` or
``OutboxTable._lock`` (the tables, never one under the other), then ``Link.lock`` or ``Outbox.lock`` (never one under
the other), then the leaf ``ReplayLog.lock`` (a link takes it to log a message
it queues; an outbox, to owe the log's messages). ``ConsumerBuffer._cond`` is a
leaf too: buffers call grant and commit callbacks after releasing it.
``ActorHost._takes_lock`` (lineage) is taken alone. ``ReadRole._cond`` is a leaf:
a consumer takes it under its buffer's lock (and releases that lock before it reads
as the role's holder); the receiver thread takes it alone. ``Fence._cond`` is a leaf too: a
receiving thread holds it to judge a batch, not while it puts the batch into a buffer;
a batch (or an in-memory send) that raises a mark waits on it for the batches admitted
before it, which take only buffer and ``Receiver.write_lock`` locks. ``Cancel``'s registry lock is a leaf; ``Cancel.set``
takes the conditions' locks with none of its own held, and the threads that
raise it (an actor's stop, the endpoint's teardown) hold no data-plane lock.
"""

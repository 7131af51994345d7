"""The data plane: tensors from producers to consumers, one hop, worker to worker.

Modules, one concept each:

- :mod:`~coupler.runtime.dataplane.endpoint`: the worker plugin: routes, sends, delivery
  guarantees (retention, replay, resend), consumer buffers' registry.
- :mod:`~coupler.runtime.dataplane.link` (producer side) and
  :mod:`~coupler.runtime.dataplane.receiver` (consumer side): one stream per
  (channel, consumer, producing worker).
- :mod:`~coupler.runtime.dataplane.wire`: framing and the checks of every frame.
- :mod:`~coupler.runtime.dataplane.auth`: the per-cluster stream secret and handshake.
- :mod:`~coupler.runtime.dataplane.shm`: shared-memory segments on one host.
- :mod:`~coupler.runtime.dataplane.buffers`: the consumer buffer each policy implies.
- :mod:`~coupler.runtime.dataplane.lineage`: input-order logging (sans-IO): exactly-once
  across the restart of an actor that merges inputs.
- :mod:`~coupler.runtime.dataplane.ports`: the ports actors send and receive on.

Thread model (one worker process):

- *Actor run-loop threads* (one per actor) call ``send`` and ``receive``. A send
  runs the delivery in the calling thread: it writes to the link's socket itself
  when no other thread is writing (the "writer role", ``Link._pump``).
- *The worker's event loop* runs broker calls (attach, detach, routing), applies
  routing updates pushed by the broker, and the periodic report.
- Per link, one *acknowledgement reader* thread (``coupler-acks-*``) reads the
  consumer's ACK and GRANT frames; it hands what a broken stream owed back to the
  endpoint (``on_orphans``).
- Per worker, one *listener* thread accepts streams; per accepted stream one
  *receiver* thread (``coupler-recv``) reads frames into the consumer's buffer.
- Short-lived threads: a resend per consumer owed messages (``_resend_owed``), a
  stream's closing writer (``coupler-link-bye``), idle-credit returns.

Locks, outer first (a thread holding one never takes an earlier one):
``ProducerStats.lock`` (held for a whole send: one gap-free sequence per source),
``Route.cond``, ``Endpoint._lock`` (the links and owed-message tables), then the
leaf locks ``Link.lock`` and ``ConsumerBuffer._cond``. Buffers call grant and
commit callbacks after releasing their lock. ``ActorHost._takes_lock`` (lineage)
is taken alone.
"""

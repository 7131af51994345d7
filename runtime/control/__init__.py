"""The control plane: what the coupling knows and decides, never tensor payloads.

- :mod:`~coupler.runtime.control.broker`: the scheduler extension holding channels,
  routing tables, actors and counters; pushes routing changes to producers' workers.
  Its parts: :mod:`~coupler.runtime.control.channel_record` (one channel's routing
  table and its changes, sans-IO), :mod:`~coupler.runtime.control.tallies` (workers'
  reports, actor statuses, metric series) and :mod:`~coupler.runtime.control.runs`
  (the runs under way and ended).
- :mod:`~coupler.runtime.control.departure`: how a consumer left a channel (typed).
- :mod:`~coupler.runtime.control.supervisor`: the driver's watch over actors: moves
  them off retiring workers, restarts lost ones from checkpoints, commits checkpoints.
  Its parts: :mod:`~coupler.runtime.control.spawning` (one instance on a worker,
  brought to a state), :mod:`~coupler.runtime.control.roster` (live workers, their
  retirement times, candidates), :mod:`~coupler.runtime.control.keeping` (hold,
  store, then commit checkpoints; periodic ones asked and collected across polls)
  and :mod:`~coupler.runtime.control.journal` (the events it records).
- :mod:`~coupler.runtime.control.checkpoints`: durable checkpoint files.
- :mod:`~coupler.runtime.control.actor_ref`: the driver's handle that follows an
  actor across moves and restarts.
- :mod:`~coupler.runtime.control.status`: the status and counter records reported.
"""

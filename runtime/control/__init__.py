"""The control plane: what the coupling knows and decides, never tensor payloads.

- :mod:`~coupler.runtime.control.broker`: the scheduler extension holding channels,
  routing tables, actors and counters; pushes routing changes to producers' workers.
- :mod:`~coupler.runtime.control.departure`: how a consumer left a channel (typed).
- :mod:`~coupler.runtime.control.supervisor`: the driver's watch over actors: moves
  them off retiring workers, restarts lost ones from checkpoints, commits checkpoints.
- :mod:`~coupler.runtime.control.checkpoints`: durable checkpoint files.
- :mod:`~coupler.runtime.control.actor_ref`: the driver's handle that follows an
  actor across moves and restarts.
- :mod:`~coupler.runtime.control.status`: the status and counter records reported.
"""

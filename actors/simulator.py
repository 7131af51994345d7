"""The simulator host: runs any ``coupler.physics`` simulator and publishes its fields."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import numpy as np

from coupler.actors.base import ActorHost
from coupler.physics.base import Simulator


def _is_key(leaf: Any) -> bool:
    """Whether ``leaf`` is a typed PRNG key array (``jax.random.key``), which numpy cannot hold."""
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)


def _plain(leaf: Any) -> Any:
    """A state leaf as plain data: an array, or for a typed PRNG key its key data and implementation."""
    if _is_key(leaf):
        # The docs ask simulators to keep their random draws in the state, as a key split from the
        # one init() gets (a typed key); np.array() of it raised, so no checkpoint was ever taken.
        return {"key_data": np.asarray(jax.random.key_data(leaf)), "impl": str(jax.random.key_impl(leaf))}
    return np.array(leaf)


def _leaf(plain: Any, like: Any) -> Any:
    """The JAX array ``_plain`` made ``plain`` from, with the dtype of ``like``."""
    if isinstance(plain, dict):
        return jax.random.wrap_key_data(jax.numpy.asarray(plain["key_data"]), impl=plain["impl"])
    return jax.numpy.asarray(plain, getattr(like, "dtype", None) or np.asarray(like).dtype)


def _shape(plain: Any) -> tuple[int, ...]:
    if isinstance(plain, dict):  # a key's data has the key's shape plus the implementation's words
        return jax.eval_shape(lambda d: jax.random.wrap_key_data(d, impl=plain["impl"]), np.asarray(plain["key_data"])).shape
    return np.shape(plain)


def _fill(like: Any, leaves: list[Any], what: str) -> Any:
    """``like``'s pytree structure with ``leaves`` (``_plain`` data, checked against its shapes) as JAX arrays."""
    expected = jax.tree.leaves(like)
    got = [_shape(a) for a in leaves]
    if len(leaves) != len(expected) or any(g != np.shape(e) or isinstance(a, dict) != _is_key(e) for a, g, e in zip(leaves, got, expected)):
        raise ValueError(
            f"checkpoint {what} do not fit the simulator: expected shapes {[np.shape(e) for e in expected]} "
            f"(PRNG keys at {[i for i, e in enumerate(expected) if _is_key(e)]}), got {got} "
            f"(keys at {[i for i, a in enumerate(leaves) if isinstance(a, dict)]})"
        )
    return jax.tree.unflatten(jax.tree.structure(like), [_leaf(a, e) for a, e in zip(leaves, expected)])


def _build(sim: Simulator, k: int, field: str, ensemble: bool) -> tuple[Callable, Callable, Callable]:
    """Jitted ``init``, ``k``-step ``advance`` and ``observe`` (vmapped over members if ``ensemble``)."""

    def advance(state: Any, params: Any) -> Any:
        return jax.lax.fori_loop(0, k, lambda _, s: sim.step(s, params), state)

    def observe(state: Any) -> Any:
        return sim.observe(state)[field]

    if not ensemble:
        return jax.jit(sim.init), jax.jit(advance), jax.jit(observe)

    def init(key: jax.Array, params: Any) -> Any:
        members = jax.tree.leaves(params)[0].shape[0]
        return jax.vmap(sim.init)(jax.random.split(key, members), params)

    return jax.jit(init), jax.jit(jax.vmap(advance)), jax.jit(jax.vmap(observe))


_build_cached = functools.lru_cache(maxsize=32)(_build)


def _compiled(sim: Simulator, k: int, field: str, ensemble: bool) -> tuple[Callable, Callable, Callable]:
    """``_build``, shared by every actor of a worker process with an equal simulator configuration.

    A launcher that starts many short-lived simulator actors (a new ensemble each
    time, as Melissa does) then compiles once per worker and shape, not once per
    actor: XLA compilation of a simulator's loop takes seconds on a CPU.
    Unhashable simulators are built afresh.
    """
    try:
        hash(sim)
    except TypeError:
        return _build(sim, k, field, ensemble)
    return _build_cached(sim, k, field, ensemble)


def _time(state: Any, steps: int) -> Any:
    """The simulation time of ``state``: its ``t`` (an attribute, or a key of a dict state), else ``steps``."""
    if isinstance(state, Mapping) and "t" in state:
        return state["t"]
    return getattr(state, "t", steps)


class SimulatorActor(ActorHost):
    """Host a pure JAX simulator (one run, or an ensemble of runs as a ``vmap``).

    Each loop iteration advances the state by ``publish_every`` steps inside one
    jitted ``fori_loop`` and publishes on the output port ``"fields"``:

    - ``mode="snapshots"``: ``{"field": x_t, "params": f}`` every ``publish_every`` steps
      (and after the last step, when ``steps`` is no multiple of it);
    - ``mode="pairs"``: ``{"input": x_t, "target": x_{t+publish_every}, "params": f}``,
      the training pairs of a surrogate that jumps ``publish_every`` steps.

    ``f`` is the run's conditioning vector ``features`` (left out when ``None``).
    With ``lineage=True`` every payload also carries ``"weights_version"``: the
    training step of the learned weights the block ran with (``-1``: none, a
    plain solver), so that a learner drawing it from a replay buffer can say
    which parameters and which weights produced each training sample. Subclasses
    that run learned weights (``HybridSimulatorActor``) also put it in the
    message's ``meta``.

    A checkpoint (``state_dict``) holds the simulator state, the parameters, the
    PRNG key, the last published field, the counters and the messages of the
    current block not yet sent; a restored instance publishes exactly what the
    old one would have published next. Randomness inside a simulation lives in
    its (pure) state, so it is checkpointed with it.

    A message's ``timestamp`` is the state's simulation time: its ``t`` (an
    attribute, or a key of a dict state; the first member's with an ensemble),
    else the number of steps taken.

    With an ensemble (``ensemble=True``: every leaf of ``params`` and ``features``
    has a leading member axis) each member's data goes out as its own message.

    Args:
        simulator: the simulator (pickled to the worker; a frozen dataclass).
        params: its parameters (a pytree; batched over members if ``ensemble``).
        name: actor name.
        steps: simulator steps to run in total (a multiple of ``publish_every`` for ``"pairs"``).
        publish_every: steps between publications.
        field: key of ``simulator.observe(state)`` to publish.
        features: per-run conditioning vector published with each message (e.g.
            the diffusivity); shape ``(P,)`` or ``(members, P)``.
        mode: ``"pairs"`` or ``"snapshots"``.
        lineage: add ``"weights_version"`` to every payload (see above).
        ensemble: whether ``params`` carry a leading member axis.
        seed: PRNG seed for ``simulator.init``.
        outputs: must map ``"fields"`` to a channel.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for non-positive ``steps``/``publish_every``, an unknown mode,
            ``"pairs"`` with ``steps`` no multiple of ``publish_every``, or ``outputs``
            without a ``"fields"`` port.
    """

    def __init__(
        self,
        simulator: Simulator,
        params: Any,
        *,
        name: str,
        steps: int,
        publish_every: int = 1,
        field: str = "u",
        features: np.ndarray | None = None,
        mode: Literal["pairs", "snapshots"] = "snapshots",
        lineage: bool = False,
        ensemble: bool = False,
        seed: int = 0,
        outputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if steps < 1 or publish_every < 1:
            raise ValueError(f"steps and publish_every must be >= 1, got steps={steps}, publish_every={publish_every}")
        if mode not in ("pairs", "snapshots"):
            raise ValueError(f"mode must be 'pairs' or 'snapshots', got {mode!r}")
        if mode == "pairs" and steps % publish_every:
            # A shorter last block would make a pair that spans fewer steps than every other one.
            raise ValueError(
                f"mode='pairs' publishes pairs {publish_every} steps apart: steps must be a multiple of "
                f"publish_every={publish_every}, got steps={steps}"
            )
        if "fields" not in (outputs or {}):
            raise ValueError(f"SimulatorActor needs outputs={{'fields': <channel>}}, got outputs={outputs!r}")
        super().__init__(name=name, outputs=outputs, **kwargs)
        self.simulator = simulator
        self.params = params
        self.total_steps = steps
        self.publish_every = publish_every
        self.field = field
        self.mode = mode
        self.lineage = lineage
        self.ensemble = ensemble
        self.seed = seed
        self.features = None if features is None else np.asarray(features, np.float32)
        self.sim_steps = 0
        self.published = 0
        self.publish_seconds = 0.0
        self.compute_seconds = 0.0
        self.last_publish_at = 0.0
        self._pending: list[tuple[dict[str, Any], float, int, dict[str, Any]]] = []
        self._restored: dict[str, Any] | None = None

    def setup(self) -> None:
        self._key = jax.random.key(self.seed)
        init, self._advance, self._observe = _compiled(self.simulator, self.publish_every, self.field, self.ensemble)
        shapes = jax.eval_shape(init, self._key, self.params)  # the state's structure, computing nothing
        self._check_field(shapes)
        restored, self._restored = self._restored, None
        if restored is None:
            self.state = init(self._key, self.params)
            self._prev = np.asarray(self._observe(self.state))
            return
        # The structure of the state comes from the simulator, the values from the checkpoint.
        self._key = jax.random.wrap_key_data(np.asarray(restored["key"]))
        self.params = _fill(self.params, restored["params"], "params")
        self.state = _fill(shapes, restored["state"], "state")
        self._prev = np.array(restored["prev"])
        self.sim_steps = int(restored["sim_steps"])
        self.published = int(restored["published"])
        self._pending = [(dict(p), float(t), int(k_), dict(m)) for p, t, k_, m in restored["pending"]]

    def _check_field(self, state: Any) -> None:
        """Refuse a ``field`` that the simulator's ``observe`` does not give, naming the ones it does.

        Args:
            state: the state's shapes (``jax.eval_shape`` of ``init``; members first with an ensemble).

        Raises:
            ValueError: naming the field asked for and those ``observe`` returns.
        """
        # Shapes only (no computation): otherwise the first observe raised a bare KeyError from inside JAX.
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state) if self.ensemble else state
        observed = jax.eval_shape(self.simulator.observe, one)
        if not isinstance(observed, dict) or self.field not in observed:
            have = sorted(observed) if isinstance(observed, dict) else type(observed).__name__
            raise ValueError(
                f"actor {self.name!r}: field={self.field!r}, but {type(self.simulator).__name__}.observe() gives {have}"
            )

    def step(self) -> bool:
        if not self._pending:
            if self.sim_steps >= self.total_steps:
                return False
            self._compute_block()
        # Send what the block produced, one message at a time, so that a step interrupted
        # by a hand-over leaves only the messages not yet sent in the checkpoint.
        t1 = time.perf_counter()
        while self._pending:
            payload, sim_time, step, meta = self._pending[0]
            self.outputs["fields"].send(payload, timestamp=sim_time, step=step, meta=meta)
            self._pending.pop(0)
            self.published += 1
        self.publish_seconds += time.perf_counter() - t1
        self.last_publish_at = time.time()
        return True

    def _compute_block(self) -> None:
        t0 = time.perf_counter()
        k = min(self.publish_every, self.total_steps - self.sim_steps)
        if k == self.publish_every:
            self.state = self._advance(self.state, self.params)
        else:  # the last block of a run whose steps are no multiple of publish_every: the plain solver
            self.state = _compiled(self.simulator, k, self.field, self.ensemble)[1](self.state, self.params)
        current = np.asarray(self._observe(self.state))  # blocks until computed
        self.sim_steps += k
        self.compute_seconds += time.perf_counter() - t0
        sim_time = float(np.ravel(np.asarray(_time(self.state, self.sim_steps)))[0])
        members = range(current.shape[0]) if self.ensemble else [None]
        for m in members:
            x_prev = self._prev if m is None else self._prev[m]
            x_now = current if m is None else current[m]
            f = self.features if (m is None or self.features is None) else self.features[m]
            payload: dict[str, Any] = {"input": x_prev, "target": x_now} if self.mode == "pairs" else {"field": x_now}
            if f is not None:
                payload["params"] = f
            version = self.weights_version()
            if self.lineage:
                payload["weights_version"] = np.int64(-1 if version is None else version)
            meta: dict[str, Any] = {"member": m or 0}
            if version is not None:
                meta["weights_version"] = version
            self._pending.append((payload, sim_time, self.sim_steps, meta))
        self._prev = current

    def weights_version(self) -> int | None:
        """Training step of the learned weights the last block ran with; ``None`` for a plain solver."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Simulator state, parameters, PRNG key, last field, counters and unsent messages (numpy).

        Before the loop has set up, the restored state (if any) or an empty dict.
        """
        if not hasattr(self, "state"):
            return {} if self._restored is None else self._restored
        return {
            "key": np.asarray(jax.random.key_data(self._key)),
            "state": [_plain(a) for a in jax.tree.leaves(self.state)],
            "params": [_plain(a) for a in jax.tree.leaves(self.params)],
            "prev": np.array(self._prev),
            "sim_steps": self.sim_steps,
            "published": self.published,
            "pending": [({k: np.array(v) for k, v in p.items()}, t, k_, dict(m)) for p, t, k_, m in self._pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` of another instance; applied when the loop sets up.

        Raises:
            ValueError: if keys are missing (shapes are checked at set-up, against the simulator's).
        """
        if not state:
            self._restored = None
            return
        missing = sorted({"key", "state", "params", "prev", "sim_steps", "published", "pending"} - set(state))
        if missing:
            raise ValueError(f"SimulatorActor {self.name!r}: checkpoint state lacks {missing}; got keys {sorted(state)}")
        self._restored = state

    def info(self) -> dict[str, Any]:
        return {
            "sim_steps": self.sim_steps,
            "published": self.published,
            "compute_seconds": round(self.compute_seconds, 4),
            "publish_seconds": round(self.publish_seconds, 4),
            "last_publish_at": self.last_publish_at,
        }

"""The coupling script takes part: it steers a running simulation and plots its stream as it arrives.

A ``SteeredLorenz96`` actor integrates Lorenz-96 on a worker. Before each frame
it reads the newest forcing ``F`` the script sent on a ``Latest`` channel
(without waiting), and it publishes every frame on a ``Queue``. The script has
no actor of its own: it sends the forcing with ``cp.send`` and iterates over
the frames with ``for msg in cp.subscribe(...)``, drawing them as they come.
Halfway it lowers the forcing, and the chaos in the plot settles into waves.

    channels:  forcing  Latest()    script -> simulator (the newest F only)
               frames   Queue(16)   simulator -> script (every frame, in order;
                                    a slow plot holds the simulator up)

Run ``coupler demo live_stream`` (``--help`` for the options). It prints what
it received and writes a PNG of the stream (``--out``); in a Jupyter notebook,
``main([...])`` redraws the figure in place while the frames arrive.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from coupler.actors import ActorHost
from coupler.demos.quick import parse_with_quick
from coupler.runtime import Coupling, Latest, Queue

QUICK = {"frames": 120, "redraw_every": 40}


class SteeredLorenz96(ActorHost):
    """Lorenz-96 whose forcing comes from a ``Latest`` input; one frame ``{"x", "forcing"}`` out per step.

    Args:
        n: variables on the ring.
        frames: frames to publish, then finish.
        steps_per_frame: RK4 steps of ``dt = 0.05`` between frames.
        seed: seed of the initial perturbation.
        name, inputs, outputs: as ``ActorHost``; needs ``inputs={"forcing": ...}``
            and ``outputs={"frames": ...}``.
    """

    def __init__(self, n: int, frames: int, steps_per_frame: int = 2, seed: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.frames, self.steps_per_frame, self.seed = n, frames, steps_per_frame, seed
        self.sent = 0

    def setup(self) -> None:
        import jax  # on the worker only: the script that plots needs no JAX

        from coupler.physics.lorenz import Lorenz96, Lorenz96Params

        self._params = Lorenz96Params
        sim = Lorenz96(n=self.n)
        self._advance = jax.jit(lambda s, p: sim.advance(s, p, self.steps_per_frame))
        self._init = lambda forcing: sim.init(jax.random.key(self.seed), self._params(forcing=np.float32(forcing)))
        self.state: Any = None

    def step(self) -> bool:
        if self.sent >= self.frames:
            return False
        if self.state is None:
            # The first forcing decides the initial state (the rest state x_i = F): wait for it,
            # in a step, where a wait gives way to the actor's control requests.
            self.forcing = float(self.inputs["forcing"].receive().data["F"])
            self.state = self._init(self.forcing)
        newer = self.inputs["forcing"].receive(timeout=0, default=None)  # the script may have steered
        if newer is not None:
            self.forcing = float(newer.data["F"])
        self.state = self._advance(self.state, self._params(forcing=np.float32(self.forcing)))
        frame = {"x": np.asarray(self.state.x, np.float32), "forcing": np.float32(self.forcing)}
        self.outputs["frames"].send(frame, timestamp=float(self.state.t), step=self.sent)
        self.sent += 1
        return True

    def info(self) -> dict[str, Any]:
        return {"frames": self.sent, "forcing": getattr(self, "forcing", None)}


class LivePlot:
    """A Hovmöller diagram (time x site) and the energy of the stream, redrawn as frames arrive.

    In a Jupyter notebook the figure is shown once and updated in place; in a
    script it is drawn off screen and only saved. Without matplotlib it does
    nothing and says so once.

    Args:
        n: variables per frame.
        frames: frames expected (the diagram's height).
    """

    def __init__(self, n: int, frames: int) -> None:
        self.rows = np.full((frames, n), np.nan, np.float32)
        self.t = np.full(frames, np.nan)
        self.energy = np.full(frames, np.nan)
        self.forcing = np.full(frames, np.nan)
        self.count = 0
        self._fig: Any = None
        self._handle: Any = None
        try:
            import matplotlib
        except ImportError:
            print("matplotlib is not installed: the stream is received but not plotted (pip install matplotlib)", flush=True)
            return
        if not _in_notebook():
            matplotlib.use("Agg")  # no window from a script or a worker-less CI machine
        import matplotlib.pyplot as plt

        self._fig, (self._ax_h, self._ax_e) = plt.subplots(2, 1, figsize=(9, 6), height_ratios=(3, 1))
        self._ax_f = self._ax_e.twinx()  # once: a twin made per redraw would stay behind the cleared axes
        if _in_notebook():
            from IPython.display import display

            self._handle = display(self._fig, display_id=True)

    def add(self, t: float, x: np.ndarray, forcing: float) -> None:
        """Record one frame (model time ``t``, state ``x``, the forcing it was computed with)."""
        i = self.count
        self.rows[i], self.t[i], self.forcing[i] = x, t, forcing
        self.energy[i] = 0.5 * float(np.sum(np.square(x, dtype=np.float64)))
        self.count += 1

    def draw(self) -> None:
        """Redraw with the frames so far (in a notebook: in place)."""
        if self._fig is None:
            return
        k = self.count
        ax_h, ax_e, ax_f = self._ax_h, self._ax_e, self._ax_f
        for ax in (ax_h, ax_e, ax_f):
            ax.clear()
        top = self.t[k - 1] if k else 1.0
        ax_h.imshow(self.rows[:k].T, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-10, vmax=12,
                    extent=(self.t[0] if k else 0.0, top, 0, self.rows.shape[1]))
        ax_h.set_ylabel("site i")
        ax_h.set_title(f"Lorenz-96 streamed to the coupling script: {k} frames")
        ax_e.plot(self.t[:k], self.energy[:k], "k-", lw=1)
        ax_f.plot(self.t[:k], self.forcing[:k], "C3--", lw=1)
        ax_f.yaxis.tick_right()  # clear() moved the twin's axis to the left
        ax_f.yaxis.set_label_position("right")
        ax_f.set_ylabel("forcing F", color="C3")
        ax_e.set_xlabel("model time")
        ax_e.set_ylabel("energy")
        self._fig.tight_layout()
        if self._handle is not None:
            self._handle.update(self._fig)

    def save(self, path: str) -> str | None:
        """Save the figure as a PNG; returns the path, or ``None`` without matplotlib."""
        if self._fig is None:
            return None
        self.draw()
        self._fig.savefig(path, dpi=110)
        return path


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where the figure can be updated in place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=600, help="frames the simulator publishes (default 600)")
    p.add_argument("--n", type=int, default=40, help="Lorenz-96 variables (default 40)")
    p.add_argument("--forcing", type=float, default=8.0, help="forcing F at the start (default 8: chaos)")
    p.add_argument("--late-forcing", type=float, default=3.0, help="forcing F the script sends halfway (default 3)")
    p.add_argument("--redraw-every", type=int, default=25, help="frames between redraws (default 25)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=str, default="artifacts", help="folder for live_stream.png (default artifacts)")
    return parse_with_quick(p, argv, QUICK)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    plot = LivePlot(args.n, args.frames)
    with Coupling(n_workers=args.workers) as cp:
        print(f"coupler: dashboard at {cp.dashboard_link}", flush=True)
        cp.channel("forcing", Latest())
        cp.channel("frames", Queue(16))
        # Subscribe before the simulator starts: the script then gets every frame.
        frames = cp.subscribe("frames", timeout=300)
        sim = cp.spawn(SteeredLorenz96, args.n, args.frames, name="lorenz96",
                       inputs={"forcing": "forcing"}, outputs={"frames": "frames"})
        cp.send("forcing", {"F": np.float32(args.forcing)})
        sim.start()
        start, seqs, steered = time.perf_counter(), [], None
        for msg in frames:
            plot.add(msg.timestamp, msg.data["x"], float(msg.data["forcing"]))
            seqs.append(msg.seq)
            if len(seqs) == args.frames // 2:
                cp.send("forcing", {"F": np.float32(args.late_forcing)})  # steer the running simulation
                steered = msg.timestamp
            if len(seqs) % args.redraw_every == 0:
                plot.draw()
            if len(seqs) == args.frames:
                break  # the simulator is done
        seconds = time.perf_counter() - start
        frames.close()  # detach (the coupling's close would, too)
        sim.wait(60)
    half = args.frames // 2
    first, last = plot.energy[: half // 2], plot.energy[-(half // 2):]
    png = plot.save(os.path.join(args.out, "live_stream.png"))
    print()
    print(f"frames received by the script: {len(seqs)} in {seconds:.1f} s ({len(seqs) / seconds:.0f} frames/s), "
          f"in order: {seqs == list(range(args.frames))}")
    first_late = int(np.argmax(plot.forcing == np.float32(args.late_forcing)))
    print(f"forcing {args.forcing:g} -> {args.late_forcing:g} sent after frame {half - 1} (model time {steered:.2f}); "
          f"first frame computed with it: {first_late} (the simulator runs ahead by what its Queue(16) and the stream hold)")
    print(f"mean energy: {np.mean(first):.1f} in the first quarter, {np.mean(last):.1f} in the last")
    print(f"plot: {png}" if png else "plot: none (no matplotlib)")
    return {
        "frames": len(seqs),
        "in_order": seqs == list(range(args.frames)),
        "seconds": seconds,
        "energy_first_quarter": float(np.mean(first)),
        "energy_last_quarter": float(np.mean(last)),
        "png": png,
    }


if __name__ == "__main__":
    main()

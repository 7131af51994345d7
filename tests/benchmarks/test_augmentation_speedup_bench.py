"""The speed-up benchmark's code path at a tiny size: JSON schema and sane values (not timings)."""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import augmentation_speedup as bench  # noqa: E402


def test_tiny_run_writes_the_documented_json(tmp_path, capsys) -> None:
    path = tmp_path / "speedup.json"
    result = bench.main(["--tiny", "--unroll", "2", "--json", str(path)])
    on_disk = json.loads(path.read_text())
    assert on_disk["rows"] == json.loads(json.dumps(result["rows"]))
    methods = [(r["method"], r["resolution"]) for r in on_disk["rows"]]
    # Every plain solver at its own step and at twice it (TINY's corrected solver's step is the latter too).
    assert methods == [("plain", 16), ("plain-2dt", 16), ("plain-pad", 16), ("plain-pad-2dt", 16), ("reference", 32),
                       ("corrected-1step", 16), ("corrected-unroll2", 16)]
    for r in on_disk["rows"]:
        assert {"method", "resolution", "wall_s_per_time_unit", "time_to_corr_095", "rel_l2_final"} <= set(r)
        assert r["wall_s_per_time_unit"] > 0 and 0 <= r["time_to_corr_095"] <= bench.TINY.eval_time
        assert math.isfinite(r["rel_l2_final"]) and len(r["correlation"]) == 5  # 0.8 time units, a frame every 2 x 0.08
    reference = on_disk["rows"][4]
    assert reference["rel_l2_final"] == 0 and reference["censored"] and all(c > 0.9999 for c in reference["correlation"])
    assert all(r["training_s"] > 0 for r in on_disk["rows"][5:])
    summary = on_disk["summary"]
    assert {"matched_resolution", "speedup_at_matched_accuracy"} <= set(summary)
    assert summary["matched_resolution"] in (None, 16, 32)
    assert not summary["payoff"] or summary["matched_resolution"] > 16
    assert "held-out runs" in capsys.readouterr().out


def _row(method: str, n: int, ttc: float, wall: float, censored: bool = False) -> dict:
    return {"method": method, "resolution": n, "time_to_corr_095": ttc, "wall_s_per_time_unit": wall,
            "censored": censored, "rel_l2_final": 0.1}


def test_summary_needs_a_finer_match_and_a_learned_gain() -> None:
    plain = [_row("plain", 16, 2.0, 1.0), _row("plain-pad", 16, 5.0, 2.0), _row("plain", 32, 8.0, 9.0),
             _row("reference", 64, 12.0, 90.0, censored=True)]
    # Beats plain 32 with a learned gain over both 16^2 rows: a payoff, against the cheapest matched 32^2 row.
    s = bench.summarize(plain + [_row("corrected-a", 16, 9.0, 2.5)])
    assert (s["matched_resolution"], s["matched_method"], s["learned_adds"], s["payoff"]) == (32, "plain", True, True)
    assert s["speedup_at_matched_accuracy"] == 9.0 / 2.5 and not s["censored_match"]
    # Never the reference, even when the corrected run stays correlated to the horizon like it.
    assert bench.summarize(plain + [_row("corrected-a", 16, 12.0, 2.5, censored=True)])["matched_resolution"] == 32
    # Matching only its own grid: no payoff.
    assert not bench.summarize(plain + [_row("corrected-a", 16, 6.0, 2.5)])["payoff"]
    # When the padded 16^2 solver alone gets as far, the learned model adds nothing: no payoff.
    padded_enough = [_row("plain-pad", 16, 9.0, 2.0) if r["method"] == "plain-pad" else r for r in plain]
    s = bench.summarize(padded_enough + [_row("corrected-a", 16, 9.0, 2.5)])
    assert s["matched_resolution"] == 32 and not s["learned_adds"] and not s["payoff"]
    # A plain solver on the coarse grid at the corrected solver's long step is a plain row of that grid too.
    s = bench.summarize(plain + [_row("plain-pad-2dt", 16, 9.5, 1.0), _row("corrected-a", 16, 9.0, 2.5)])
    assert s["coarse_plain_time_to_corr_095"] == 9.5 and not s["learned_adds"] and not s["payoff"]


def test_a_run_that_blows_up_counts_as_decorrelated() -> None:
    setup = bench.replace(bench.TINY, eval_runs=2, eval_time=0.48, frame_every=2)  # 3 frames, 0.16 apart
    reference = jnp.ones((3, 2, 4, 4)).at[..., 0, 0].set(2.0)
    frames = reference.at[1:, 1].set(jnp.nan)  # the second run blows up at the second frame
    r = bench.row(setup, "plain", 16, frames, reference, wall=1.0)
    # Its correlation is 0 from then on: the mean (1 + 0) / 2 is below 0.95 at the second frame.
    assert r["correlation"] == [1.0, 0.5, 0.5] and r["time_to_corr_095"] == pytest.approx(0.16)
    assert not r["censored"] and r["unstable_runs"] == 1


def test_the_long_step_must_divide_the_frame_interval() -> None:
    with pytest.raises(ValueError, match="learned_step"):
        bench.replace(bench.QUICK, learned_step=3)  # frame_every is 4


def test_schedules_name_their_rows_and_validation_draws_other_runs(capsys) -> None:
    held_out = bench.main(["--tiny", "--schedules", "1,2"])
    validation = bench.main(["--tiny", "--schedules", "1,2", "--validation", "--ic-bound"])
    methods = [r["method"] for r in validation["rows"]]
    assert methods[-1] == "corrected-unroll1-2" and "reference-coarse-ic" not in [r["method"] for r in held_out["rows"]]
    # The fine solver from the coarse initial field: the dropped modes make it differ from the reference.
    bound = validation["rows"][methods.index("reference-coarse-ic")]
    assert bound["resolution"] == 32 and bound["rel_l2_final"] > 0
    assert (held_out["eval_set"], validation["eval_set"]) == ("held-out", "validation")
    assert validation["schedules"] == [[1, 2]] and validation["setup"]["window"] >= 3
    # Other initial conditions and parameters: the plain solver's error differs.
    plain = [r["rel_l2_final"] for res in (held_out, validation) for r in res["rows"] if r["method"] == "plain"]
    assert plain[0] != plain[1]
    assert "validation runs" in capsys.readouterr().out


def test_plain_rows_at_longer_steps_are_rows_of_their_grid(capsys) -> None:
    result = bench.main(["--tiny", "--schedules", "2"])
    rows = {(r["method"], r["resolution"]): r for r in result["rows"]}
    # By default every plain solver also at twice its own step; on the coarse grid the padded one at 2 dt is the
    # corrected solver's step (learned_step 2), listed once. '--plain-steps 1' keeps only that one.
    assert [m for m, n in rows if m.startswith("plain")] == ["plain", "plain-2dt", "plain-pad", "plain-pad-2dt"]
    assert tuple(result["setup"]["plain_steps"]) == (1, 2)
    # The same frames compared: the 2 dt rows are sampled at the same times as the others.
    assert all(len(r["correlation"]) == 5 for r in result["rows"])
    # The long step is a different solver: its error is not the short step's.
    assert rows[("plain-2dt", 16)]["rel_l2_final"] != rows[("plain", 16)]["rel_l2_final"]
    only = bench.main(["--tiny", "--schedules", "2", "--plain-steps", "1"])
    assert [r["method"] for r in only["rows"] if r["method"].startswith("plain")] == ["plain", "plain-pad", "plain-pad-2dt"]
    capsys.readouterr()


def test_plain_steps_must_divide_the_frame_interval() -> None:
    with pytest.raises(ValueError, match="plain_steps"):
        bench.replace(bench.QUICK, plain_steps=(1, 3))  # frame_every is 4


def test_the_speedup_is_against_the_cheapest_plain_row_as_accurate_long_steps_included() -> None:
    rows = [_row("plain", 16, 2.0, 1.0), _row("plain", 32, 8.0, 9.0), _row("plain-2dt", 32, 8.0, 4.5),
            _row("plain-4dt", 32, 3.0, 2.3), _row("corrected-a", 16, 8.5, 1.5)]
    s = bench.summarize(rows)
    # It matches plain 32^2 (8.0); plain 32^2 at twice its step is as accurate and cheaper: that is the baseline.
    # At four times its step it is cheaper still but lost accuracy: never the baseline.
    assert (s["matched_resolution"], s["matched_method"], s["matched_time_to_corr_095"]) == (32, "plain-2dt", 8.0)
    assert s["speedup_at_matched_accuracy"] == 4.5 / 1.5
    # Without the long-step rows the same model would read 6x faster than plain 32^2.
    assert bench.summarize(rows[:2] + rows[-1:])["speedup_at_matched_accuracy"] == 9.0 / 1.5


def test_a_finer_solver_that_blows_up_at_a_long_step_is_no_match() -> None:
    # Measured on validation runs (32^2 corrected against 64^2): plain 64^2 at 4x its step blew up (t = 0.32).
    rows = [_row("plain", 32, 4.16, 1.5), _row("plain-pad", 32, 8.16, 3.3), _row("plain", 64, 11.52, 12.0),
            _row("plain-2dt", 64, 11.52, 5.9), _row("plain-4dt", 64, 0.32, 3.4), _row("corrected-a", 32, 8.48, 1.8)]
    s = bench.summarize(rows)
    assert (s["matched_resolution"], s["matched_method"], s["payoff"]) == (32, "plain-pad", False)


def test_training_that_diverges_stops_the_benchmark_with_what_it_saw() -> None:
    import jax

    setup = bench.replace(bench.TINY, learning_rate=1e30, train_steps=20)  # steps of 1e30 overflow at once
    data, _ = bench.training_windows(setup, jax.random.key(0))
    with pytest.raises(FloatingPointError, match=r"training diverged at step \d+ .*expected a finite loss"):
        bench.train(setup, data, 1, seed=0)


def test_several_models_train_on_the_same_data_and_name_their_rows(capsys) -> None:
    result = bench.main(["--tiny", "--model", "closure", "interp", "--schedules", "2"])
    corrected = [r["method"] for r in result["rows"] if r["method"].startswith("corrected")]
    assert corrected == ["corrected-closure-unroll2", "corrected-interp-unroll2"]
    assert set(result["models"]) == {"closure", "interp"} and result["models"]["interp"]["stencil"] == 4
    assert all(r["training_s"] > 0 for r in result["rows"] if r["method"] in corrected)
    assert "corrected-interp-unroll2" in capsys.readouterr().out


def test_the_subgrid_tendency_model_trains_and_runs_in_the_benchmark() -> None:
    result = bench.main(["--tiny", "--model", "tendency", "--schedules", "1,2"])
    rows = [r for r in result["rows"] if r["method"].startswith("corrected")]
    assert [r["method"] for r in rows] == ["corrected-unroll1-2"]
    assert result["models"]["tendency"]["width"] == 32 and rows[0]["training_s"] > 0


def test_the_forcing_wavenumber_reaches_every_solver() -> None:
    setup = bench.replace(bench.TINY, forcing_wavenumber=2, eval_runs=1, eval_time=0.16, plain_steps=(1,))
    cg = setup.coarse_grained()
    assert cg.fine.forcing_wavenumber == cg.coarse().forcing_wavenumber == 2
    key = jax.random.key(0)
    rows = {r["method"]: r for r in bench.evaluate(setup, {}, key)}
    default = {r["method"]: r for r in bench.evaluate(bench.replace(setup, forcing_wavenumber=4), {}, key)}
    # A different force is a different flow, for the reference and for every plain solver.
    assert rows.keys() == default.keys()
    assert all(rows[m]["rel_l2_final"] != default[m]["rel_l2_final"] for m in rows if m != "reference")


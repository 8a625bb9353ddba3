"""The automatic sampler choice (``sjd_jax.tuning``): its cache, acceptance statistics, cost model,
and ``method="auto"`` / ``window="auto"`` in ``generate``, the pipelines and the CLI.

Timings on a shared 2-core machine are noise, so the choice is tested with stated forward costs
(``costs.forward_seconds`` replaced): what it must pick follows from the cost model by hand."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sjd_jax as S
from sjd_jax.cli.main import main
from sjd_jax.families import presets
from sjd_jax.sampling.recipes import LOSSLESS
from sjd_jax.tuning import acceptance, auto, cache, costs
from sjd_jax.tuning.acceptance import Cell
from tiny import class_cond, tiny_config


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SJD_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def bundled():
    return presets.load("fashion-mnist")


def stated_costs(monkeypatch, seconds_of, timed=None, compile_s=0.0):
    """Replace the timing: ``seconds_of(W)`` per forward, ``compile_s`` per loop compile; records
    the windows "timed" and honours ``stop`` as the real one does."""
    def fake(params, config, rows, windows, stop=None, **kw):
        out, compiles = {}, {}
        for W in sorted({1, *windows}):
            out[W], compiles[W] = seconds_of(W, rows), compile_s
            if timed is not None:
                timed.append(W)
            if stop is not None and stop(W, out, compiles):
                break
        return out, compiles
    monkeypatch.setattr(costs, "forward_seconds", fake)


# ---- cache ---------------------------------------------------------------------------------------

def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SJD_JAX_CACHE", str(tmp_path / "a"))
    assert cache.directory() == tmp_path / "a"
    monkeypatch.delenv("SJD_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.directory() == tmp_path / "x" / "sjd-jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.directory() == tmp_path / "home" / ".cache" / "sjd-jax"


def test_cache_round_trip_and_damaged_entries_are_ignored(fresh_cache):
    key = {"model": "m", "rows": 2}
    assert cache.load("costs", key) is None
    assert cache.store("costs", key, {"seconds": {"1": 0.5}})
    assert cache.load("costs", key) == {"seconds": {"1": 0.5}}
    assert cache.load("costs", {"model": "m", "rows": 4}) is None
    (path,) = (fresh_cache / "costs").iterdir()
    for bad in ("{not json", "[]", json.dumps({"version": 0, "key": key, "value": {}}),
                json.dumps({"version": cache.VERSION, "key": {"other": 1}, "value": {}})):
        path.write_text(bad)
        assert cache.load("costs", key) is None
    assert cache.store("costs", key, {"seconds": {"1": 0.25}})  # rewritten over the damaged one
    assert cache.load("costs", key) == {"seconds": {"1": 0.25}}
    assert not [p for p in (fresh_cache / "costs").iterdir() if p.name.startswith(".")]  # no temp left


def test_unwritable_cache_is_a_note_not_a_failure(monkeypatch, tmp_path, caplog, bundled):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SJD_JAX_CACHE", str(tmp_path / "file" / "below"))
    assert not cache.store("costs", {"k": 1}, {"v": 1})
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * (1 + W / 8))
    with caplog.at_level(logging.INFO, "sjd_jax"):
        choice = auto.choose(bundled.gpt_params, bundled.gpt_config, 1, bundled.preset.knobs())
    assert choice.costs == "measured" and "not written" in caplog.text


def test_fingerprint_names_the_weights_not_their_dtype_or_place(bundled):
    p, c = bundled.gpt_params, bundled.gpt_config
    fp = cache.fingerprint(p, c)
    assert cache.fingerprint(jax.tree.map(lambda x: x.astype(jnp.bfloat16), p), c) == fp
    assert cache.fingerprint(jax.tree.map(np.asarray, p), c) == fp
    first = jax.tree_util.tree_leaves(p)[0]
    changed = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(p),
                                           [first.at[(0,) * first.ndim].add(1.0)] + jax.tree_util.tree_leaves(p)[1:])
    assert cache.fingerprint(changed, c) != fp
    import dataclasses
    assert cache.fingerprint(p, dataclasses.replace(c, norm_eps=1e-6)) != fp
    text = tiny_config(caption_dim=16, cls_token_num=8, num_classes=0)  # a prompt's length is not the model
    tp = S.init_params(text, jax.random.key(0))
    assert cache.fingerprint(tp, dataclasses.replace(text, cls_token_num=5)) == cache.fingerprint(tp, text)
    assert fp == acceptance.load_prior()["fingerprint"]  # the shipped statistics are this model's


# ---- acceptance statistics -----------------------------------------------------------------------

def synthetic_prior(cells: dict, knobs=None, fingerprint="prior-model", overhead=None, compile_ratio=None):
    return {"cells": {c: np.asarray(s, np.float64) for c, s in cells.items()},
            "overhead": overhead or {2: {"ar": {1: 0.5}, "sjd": {8: 0.1}}}, "compile": compile_ratio or {},
            "model": "x", "knobs": knobs or {"cfg_scale": 2.0}, "fingerprint": fingerprint}


def test_static_batches_wait_for_the_slowest_row_continuous_ones_do_not():
    cell = Cell("sjd", 8, "uniform")
    t = acceptance.Table(synthetic_prior({cell: [4 / 1, 4 / 2, 4 / 3, 4 / 4]}), bundled=True)  # NFE 1, 2, 3, 4
    assert t.iterations(cell, 4, 1) == pytest.approx(2.5)  # one row: the mean
    # two rows: E[max] over the 16 equally likely pairs, counted by hand
    assert t.iterations(cell, 4, 2) == pytest.approx(np.mean([max(a, b) for a in range(1, 5) for b in range(1, 5)]))
    its = [t.iterations(cell, 4, b) for b in (1, 2, 8, 64, 1024)]
    assert its == sorted(its) and its[-1] == pytest.approx(4.0)
    assert t.iterations(cell, 4, 64, "continuous") == pytest.approx(2.5 / acceptance.CONTINUOUS_USEFUL)
    assert t.iterations(Cell("ar", 1, "uniform"), 4, 64) == 4


def test_observed_rows_scale_the_prior_to_a_new_model(fresh_cache):
    a, b = Cell("sjd", 8, "uniform"), Cell("sjd-ac", 16, "uniform")
    prior = synthetic_prior({a: [3.0] * 20, b: [5.0] * 20})
    t = acceptance.Table.for_model("new-model", {"cfg_scale": 2.0}, prior)
    assert t.k == 1.0 and t.source == "prior (uncalibrated)"
    acceptance.observe("new-model", {"cfg_scale": 2.0}, a, [128] * 8, N=256)  # s = 2: half the prior's gain
    t = acceptance.Table.for_model("new-model", {"cfg_scale": 2.0}, prior)
    assert t.k == pytest.approx((8 * 1 + 8 * 0.5) / 16)  # 8 pseudo-rows of the prior at k = 1
    assert t.compressions(b) == pytest.approx(np.full(20, 1 + 4 * 0.75))
    assert t.source.startswith("calibrated (k=0.75, 8 rows)")
    acceptance.observe("new-model", {"cfg_scale": 2.0}, a, [128] * 8, N=256)  # 16 rows: the cell's own
    t = acceptance.Table.for_model("new-model", {"cfg_scale": 2.0}, prior)
    assert t.compressions(a) == pytest.approx(np.full(16, 2.0))
    # other knobs, other statistics; the prior's own model at its knobs uses it as measured
    assert not acceptance.Table.for_model("new-model", {"cfg_scale": 4.0}, prior).observed
    assert acceptance.Table.for_model("prior-model", {"cfg_scale": 2.0}, prior).source == "shipped"


def test_only_lossless_sampling_recipes_are_recorded_or_chosen(fresh_cache, monkeypatch, bundled):
    fp = cache.fingerprint(bundled.gpt_params, bundled.gpt_config)
    knobs = bundled.preset.knobs()
    for m in ("lantern", "jacobi", "ar"):
        acceptance.observe(fp, knobs, Cell(m, 8, "uniform"), [10] * 20, N=256)
    assert not acceptance.Table.for_model(fp, knobs).observed
    # a planted cache entry claiming lantern needs 2 forwards per image: never a candidate
    key = {"model": fp, "knobs": acceptance.knobs_key(knobs)}
    cache.store("acceptance", key, {"cells": {"lantern|8|uniform": [128.0] * 32}})
    stated_costs(monkeypatch, lambda W, rows: 1e-3)
    choice = auto.choose(bundled.gpt_params, bundled.gpt_config, 1, knobs)
    assert choice.method in LOSSLESS and choice.method != "jacobi"
    assert all(not name.startswith("lantern") for name, _ in choice.ranking)


def test_observations_keep_the_latest_rows(fresh_cache):
    c = Cell("sjd", 8, "uniform")
    for i in range(6):
        acceptance.observe("m", {}, c, np.full(100, 64 + i), N=256)
    rows = acceptance.Table.for_model("m", {}, synthetic_prior({c: [2.0]})).observed[c]
    assert len(rows) == acceptance.KEEP_ROWS and rows[-1] == pytest.approx(256 / 69, rel=1e-4)  # (kept to 4 decimals)


def test_overhead_follows_recipe_and_rows():
    """Per recipe (median over its windows, not below 0), interpolated in log rows between the
    measured row counts, clamped beyond them; a recipe the prior lacks takes the drafting median."""
    over = {2: {"ar": {1: -0.1}, "sjd": {4: 0.1, 8: 0.5, 16: 0.2}, "sjd-pac": {4: 0.2}},
            80: {"ar": {1: 0.1}, "sjd": {4: 0.3}, "sjd-pac": {4: 0.9}}}
    t = acceptance.Table(synthetic_prior({}, overhead=over), bundled=True)
    ar, sjd, pac = Cell("ar", 1, "uniform"), Cell("sjd", 16, "x"), Cell("sjd-pac", 8, "x")
    assert t.overhead(ar, 2) == 0.0 and t.overhead(ar, 80) == 0.1 and t.overhead(ar, 1000) == 0.1
    assert t.overhead(sjd, 2) == 0.2 and t.overhead(Cell("sjd", 64, "x"), 2) == 0.2 and t.overhead(sjd, 80) == 0.3
    assert t.overhead(pac, 1) == 0.2 and t.overhead(pac, 80) == 0.9
    assert t.overhead(pac, 12) == pytest.approx(0.2 + 0.7 * np.log(12 / 2) / np.log(40))
    assert t.overhead(Cell("sjd-gumbel", 4, "x"), 80) == pytest.approx(0.6)  # median of 0.3 and 0.9
    assert acceptance.Table(synthetic_prior({}, overhead={2: {"ar": {1: 0.5}}})).overhead(sjd, 2) == 0.0


def test_prior_from_bench_reads_overheads_and_compile_ratios():
    def row(method, window, batch, wall, forwards, compile_s, init="uniform"):
        return {"method": method, "window": window, "init": init, "batch": batch, "schedule": "static",
                "nfe_per_row": [forwards / batch] * batch, "wall_s": wall, "forwards": forwards, "compile_s": compile_s}
    rep = {"image_tokens": 256, "model": "m", "knobs": {"cfg_scale": 2.0},
           "forward_cost": {"1": {"1": {"seconds": 1e-3, "compile_s": 0.5}, "4": {"seconds": 2e-3}},
                            "40": {"1": {"seconds": 0.01}, "4": {"seconds": 0.02}}},
           "results": [row("ar", 1, 1, 0.256 * 1.5, 256, 1.5), row("sjd", 4, 1, 100 * 2.2e-3, 100, 2.0),
                       row("sjd", 4, 1, 100 * 2.6e-3, 100, 3.0, "vertical-sample"),
                       row("ar", 1, 40, 256 * 11e-3, 256, 1.0), row("sjd", 4, 40, 200 * 30e-3, 200, 2.0),
                       {**row("sjd", 4, 40, 1.0, 1, 9.0), "auto": {}}]}  # the auto row: not a cell
    prior = acceptance.prior_from_bench([rep], "fp")
    assert prior["overhead"] == {"2": {"ar": {"1": 0.5}, "sjd": {"4": 0.2}},
                                 "80": {"ar": {"1": 0.1}, "sjd": {"4": 0.5}}}
    assert prior["compile"] == {"ar": 3.0, "sjd": 5.0}  # batch 1's unit (0.5 s); batch 40 has none
    assert len(prior["cells"]) == 3  # batch 1's cells only


# ---- the choice ----------------------------------------------------------------------------------

def predicted(table, cell, timed: dict, N, batch):
    """The cost model by hand: windows between the timed ones cost the linear interpolation."""
    if cell.window > max(timed):
        return float("inf")
    lo = max(w for w in timed if w <= cell.window)
    hi = min(w for w in timed if w >= cell.window)
    t = timed[lo] if hi == lo else timed[lo] + (timed[hi] - timed[lo]) * (cell.window - lo) / (hi - lo)
    return table.iterations(cell, N, batch) * t * (1 + table.overhead(cell, 2 * batch)) / batch


@pytest.mark.parametrize("shape", ["cpu-like", "accelerator-like", "windows-expensive"])
def test_choice_is_the_least_predicted_time(monkeypatch, bundled, shape):
    seconds_of = {"cpu-like": lambda W, rows: 1e-3 * (1 + 0.15 * W),  # grows with every token
                  "accelerator-like": lambda W, rows: 1e-3 * max(1.0, W / 48),  # flat until compute-bound
                  "windows-expensive": lambda W, rows: 1e-3 * W}[shape]
    windows = []
    stated_costs(monkeypatch, seconds_of, windows)
    c, knobs = bundled.gpt_config, bundled.preset.knobs()
    choice = auto.choose(bundled.gpt_params, c, 1, knobs)
    timed = {w: seconds_of(w, 2) for w in windows}
    assert windows[:2] == [1, 16] and set(windows) <= {1, 16, 64}
    table = acceptance.Table.for_model(cache.fingerprint(bundled.gpt_params, c), knobs)
    cands = [Cell("ar", 1, "uniform")] + table.cells()
    best = min(cands, key=lambda x: (predicted(table, x, timed, 256, 1), x.window))
    assert choice.cell == best and choice.acceptance == "shipped"
    assert choice.seconds_per_image == pytest.approx(predicted(table, best, timed, 256, 1))
    assert choice.speedup == pytest.approx(predicted(table, Cell("ar", 1, "uniform"), timed, 256, 1)
                                           / choice.seconds_per_image)
    want = {"cpu-like": lambda w: w <= 16, "accelerator-like": lambda w: w >= 32,
            "windows-expensive": lambda w: w == 1}[shape]
    assert want(choice.window), choice.line()
    assert (choice.method == "ar") == (shape == "windows-expensive")


def test_explicit_method_window_and_init_restrict_the_choice(monkeypatch, bundled):
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * (1 + 0.15 * W))
    p, c, knobs = bundled.gpt_params, bundled.gpt_config, bundled.preset.knobs()
    assert auto.choose(p, c, 1, knobs, methods=["sjd-pac"]).method == "sjd-pac"
    assert auto.choose(p, c, 1, knobs, windows=[32]).window == 32  # a drafting window asked for: not AR
    assert auto.choose(p, c, 1, knobs, methods=["sjd"], windows=[32]).cell.window == 32
    assert auto.choose(p, c, 1, knobs, methods=["sjd"], inits=["horizon-repeat"]).init == "horizon-repeat"
    # a window without statistics borrows the nearest window's (W = 4's for 5)
    five = auto.choose(p, c, 1, knobs, methods=["sjd"], windows=[5], inits=["uniform"])
    table = acceptance.Table.for_model(cache.fingerprint(p, c), knobs)
    assert five.cell == Cell("sjd", 5, "uniform")
    np.testing.assert_array_equal(table.compressions(five.cell), table.compressions(Cell("sjd", 4, "uniform")))
    with pytest.raises(ValueError, match="no automatic choice"):
        auto.choose(p, c, 1, knobs, methods=["jacobi"])


def test_larger_windows_that_cannot_win_are_not_timed_and_timings_are_cached(monkeypatch, bundled):
    timed = []
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * W, timed)  # steep: past W = 16 nothing can win
    p, c, knobs = bundled.gpt_params, bundled.gpt_config, bundled.preset.knobs()
    first = auto.choose(p, c, 1, knobs)
    assert timed == [1, 16] and first.costs == "measured"
    again = auto.choose(p, c, 1, knobs)
    assert timed == [1, 16] and again.costs == "cached" and again.cell == first.cell
    auto.choose(p, c, 4, knobs)  # another batch: timed again
    assert timed[2:] == [1, 16]


def test_batch_and_schedule_move_the_choice(monkeypatch, bundled):
    """At a large static batch the slowest row sets the pace: the predicted time per image of a
    drafting recipe grows with the batch while AR's does not."""
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * (1 + 0.05 * W))
    p, c, knobs = bundled.gpt_params, bundled.gpt_config, bundled.preset.knobs()
    one, many = auto.choose(p, c, 1, knobs), auto.choose(p, c, 256, knobs)
    assert many.speedup < one.speedup
    cont = auto.choose(p, c, 256, knobs, schedule="continuous")
    assert cont.speedup > many.speedup


def test_recipe_overheads_at_large_batches_and_compile_for_few_images_move_the_choice(monkeypatch, bundled):
    """A recipe whose sampling work grows with the rows loses at a large batch to one that needs
    more forwards; a one-image command does not pay a drafting sampler's longer compile."""
    cheap, heavy = Cell("sjd", 8, "uniform"), Cell("sjd-pac", 8, "uniform")
    prior = synthetic_prior({cheap: [3.0] * 20, heavy: [3.6] * 20}, knobs=bundled.preset.knobs(),
                            fingerprint=cache.fingerprint(bundled.gpt_params, bundled.gpt_config),
                            overhead={2: {"ar": {1: 0.1}, "sjd": {8: 0.1}, "sjd-pac": {8: 0.1}},
                                      80: {"ar": {1: 0.1}, "sjd": {8: 0.2}, "sjd-pac": {8: 0.8}}},
                            compile_ratio={"ar": 2.0, "sjd": 4.0, "sjd-pac": 6.0})
    monkeypatch.setattr(acceptance, "load_prior", lambda path=None: prior)
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * (1 + 0.1 * W), compile_s=1.0)
    p, c, knobs = bundled.gpt_params, bundled.gpt_config, bundled.preset.knobs()
    assert auto.choose(p, c, 1, knobs).cell == heavy  # 3.6x fewer forwards at the same cost per iteration
    many = auto.choose(p, c, 40, knobs)
    assert many.cell == cheap, many.ranking  # at 80 rows pac's iteration costs 1.8/1.2 of plain SJD's
    assert many.seconds_per_image == pytest.approx(256 / 3.0 * 1.8e-3 * 1.2 / 40)
    # one image: 256 x 1.1 ms of AR against 71 x 1.98 ms of pac plus 4 s more compile
    one = auto.choose(p, c, 1, knobs, images=1)
    assert one.method == "ar" and one.compile_s == pytest.approx(2.0) and "compile over 1 image;" in one.line()
    assert auto.choose(p, c, 1, knobs, images=10**5).cell == heavy  # spread over many images: steady state


def test_real_timings_are_positive_and_interpolated(bundled):
    s, compiles = costs.forward_seconds(bundled.gpt_params, bundled.gpt_config, 2, [8], reps=4, repeats=1)
    assert sorted(s) == sorted(compiles) == [1, 8] and all(v > 0 for v in s.values())
    assert all(v > 0 for v in compiles.values())
    assert costs.interpolate({1: 1.0, 9: 5.0}, 5) == 3.0
    assert costs.interpolate({1: 1.0, 8: 4.0}, 16) == 8.0  # past the largest: proportional


# ---- generate(method="auto"), the pipelines, calibration -----------------------------------------

def test_generate_auto_runs_the_choice_and_learns_from_it(monkeypatch, bundled, caplog):
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * (1 + 0.15 * W))  # a drafting cell wins (real timings: any)
    p, c = bundled.gpt_params, bundled.gpt_config
    labels = jnp.arange(3)
    with caplog.at_level(logging.INFO, "sjd_jax"):
        out = S.generate(p, c, labels, 7, method="auto", window="auto", cfg_scale=2.0)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("auto: "))
    fp = cache.fingerprint(p, c)
    (cell, rows), = acceptance.Table.for_model(fp, {"cfg_scale": 2.0}).observed.items()
    assert cell.name().split(" W=")[0] in line and len(rows) == 3  # the run's rows, recorded
    kw = auto.Choice(cell.method, cell.window, cell.init, 1, 1, "", "", 0, 3).keywords()
    same = S.generate(p, c, labels, 7, cfg_scale=2.0, **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(same.tokens))
    # a named method keeps its recipe: window auto among plain SJD's cells only
    caplog.clear()
    with caplog.at_level(logging.INFO, "sjd_jax"):
        S.generate(p, c, labels, 7, method="sjd", window="auto", cfg_scale=2.0)
    assert "auto: sjd W=" in caplog.text or "auto: ar " in caplog.text


def test_generate_stream_auto_chooses_for_the_stream_and_learns(monkeypatch, bundled, caplog):
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * (1 + 0.15 * W))
    p, c = bundled.gpt_params, bundled.gpt_config
    with caplog.at_level(logging.INFO, "sjd_jax"):
        stream = S.generate_stream(p, c, [0, 1, 2, 3, 4], 7, batch=2, method="auto", window="auto", cfg_scale=2.0)
        items = sorted(stream, key=lambda it: it.index)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("auto: "))
    (cell, rows), = acceptance.Table.for_model(cache.fingerprint(p, c), {"cfg_scale": 2.0}).observed.items()
    assert line.startswith(f"auto: {cell.method} W={cell.window} init {cell.init} ") and "over 5 images" in line
    assert sorted(rows) == pytest.approx(sorted(256 / it.nfe for it in items), rel=1e-4)  # every item's, at the end
    kw = auto.Choice(cell.method, cell.window, cell.init, 1, 1, "", "", 0, 2).keywords()
    same = sorted(S.generate_stream(p, c, [0, 1, 2, 3, 4], 7, batch=2, cfg_scale=2.0, **kw), key=lambda it: it.index)
    for a, b in zip(items, same):
        np.testing.assert_array_equal(a.tokens, b.tokens)


def test_converted_model_is_calibrated_by_a_short_run(monkeypatch):
    c = tiny_config(grid_size=(8, 8))
    p = S.init_params(c, jax.random.key(0))
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * (1 + 0.1 * W))
    knobs = {"cfg_scale": 2.0}
    fp = cache.fingerprint(p, c)
    run = auto.calibration_run(S.generate, p, c, class_cond(0, 1, 2), knobs)
    no_cal = auto.choose(p, c, 2, knobs, calibrate=run, images=1)  # not worth it for 1 image
    assert no_cal.acceptance == "prior (uncalibrated)"
    choice = auto.choose(p, c, 2, knobs, calibrate=run, images=10**6)
    (cell, rows), = acceptance.Table.for_model(fp, knobs).observed.items()
    assert cell == auto.CALIBRATION_CELL and len(rows) == 3  # the 3 conditions given (up to 4 rows)
    assert choice.acceptance.startswith("calibrated (k=")


def test_pipelines_default_to_auto():
    from sjd_jax.families.pipelines import auto_by_default

    seen = []
    run = auto_by_default(lambda texts, key, **kw: seen.append(kw))
    run(["a"], 0)
    run(["a"], 0, method="sjd")
    run(["a"], 0, window=32, cfg_scale=3.0)
    assert seen == [{"method": "auto", "window": "auto"}, {"method": "sjd"}, {"window": 32, "cfg_scale": 3.0}]


# ---- the CLI -------------------------------------------------------------------------------------

def test_generate_cli_defaults_to_auto_and_explicit_flags_win(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["generate", "--class", "0", "--n", "1", "--out", str(out), "--json"]) == 0
    cap = capsys.readouterr()
    st = json.loads(cap.out)
    assert st["auto"]["method"] == st["method"] and st["auto"]["window"] == (st["window"] if st["method"] != "ar" else 1)
    assert st["lossless"] and st["auto"]["speedup"] > 0 and cap.err.count("auto: ") == 1
    assert main(["generate", "--class", "0", "--n", "1", "--out", str(out), "--json", "--method", "sjd",
                 "--window", "16"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert "auto" not in st and (st["method"], st["window"]) == ("sjd", 16)
    assert main(["generate", "--class", "0", "--n", "1", "--out", str(out), "--json", "--method", "sjd-gumbel"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["method"] == "sjd-gumbel" and st["auto"]["method"] == "sjd-gumbel"
    assert st["auto"]["costs"] == "cached"  # same model, batch and device as the first run
    assert main(["generate", "--class", "0", "--n", "1", "--out", str(out), "--quiet", "--param-dtype",
                 "bfloat16", "--method", "ar"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv,what", [(["--window", "big"], "--window"), (["--window", "0"], "--window"),
                                       (["--coupling", "gumbel"], "--coupling"), (["--method", "fast"], "fast"),
                                       (["--param-dtype", "half"], "--param-dtype")])
def test_generate_cli_bad_sampler_flags_are_one_line(tmp_path, capsys, argv, what):
    assert main(["generate", "--class", "0", "--n", "1", "--out", str(tmp_path / "g.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and what in err and not (tmp_path / "g.png").exists()


def test_bench_reports_the_auto_choice_next_to_its_grid(tmp_path):
    from sjd_jax.cli import bench

    out = tmp_path / "b.json"
    argv = ["--methods", "sjd-ac,sjd", "--windows", "4,8", "--inits", "vertical-sample", "--images", "2",
            "--no-plot", "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    grid = [r for r in report["results"] if "auto" not in r]
    (row,) = [r for r in report["results"] if "auto" in r]
    a = row["auto"]
    assert (row["method"], row["window"] if a["method"] != "ar" else 1) == (a["method"], a["window"])
    assert (a["method"], a["window"], a["init"]) in {(r["method"], r["window"], r["init"]) for r in grid} | {
        ("ar", 1, "uniform")}  # chosen among the grid it ran next to
    (s,) = report["summary"]["auto"]
    fastest = min(grid, key=lambda r: r["wall_s"])
    assert s["vs_fastest_cell"] == pytest.approx(fastest["wall_s"] / row["wall_s"])
    assert s["fastest_cell"]["method"] == fastest["method"] and len(report["summary"]) >= 3
    assert "auto" not in bench.markdown_table(report)


def test_batch_mode_resume_keeps_the_runs_choice(tmp_path, capsys, monkeypatch):
    """A rerun of ``--out-dir`` with nothing pinned continues the run's recipe (from run.json) even
    where a fresh choice would now differ (here: costs that make AR the winner)."""
    d = tmp_path / "d"
    argv = ["generate", "--class", "0", "--n", "2", "--out-dir", str(d), "--no-png", "--json",
            "--batch-per-device", "2"]
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * (1 + 0.05 * W))
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["auto"]["method"] != "ar" and first["generated_this_run"] == 2
    monkeypatch.setenv("SJD_JAX_CACHE", str(tmp_path / "other-cache"))
    stated_costs(monkeypatch, lambda W, rows: 1e-3 * W)
    assert main(argv) == 0
    cap = capsys.readouterr()
    second = json.loads(cap.out)
    assert second["skipped_done"] == 2 and second["generated_this_run"] == 0 and "auto" not in second
    assert "resuming" in cap.err

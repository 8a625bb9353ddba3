"""Continuous batching (``sampling.batching`` / ``sampling.continuous``): every item's tokens, NFE and
commits equal what ``generate`` gives it alone (its example id), whatever the schedule, batch size,
refill width, recipe or mesh; the scheduler keeps rows busier than static batches; a refill that
leaves the previous item's cache behind is caught (negative control)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sjd_jax as S
from sjd_jax.parallel import sharding as shd
from sjd_jax.sampling import continuous, generate, recipes
from sjd_jax.sampling.batching import SCHEDULES, default_refill_rows, generate_stream, pick_schedule
from tiny import scaled_params, tiny_config

CONFIG = tiny_config(grid_size=(4, 4), vocab_size=32, num_classes=5)
KNOBS = dict(cfg_scale=2.0, top_k=12)


@pytest.fixture(scope="module")
def params():
    return scaled_params(CONFIG, seed=3, scale=2.0)


def _alone(params, config, conds, options, n, **kw):
    """Each item as ``generate`` gives it: one static batch of every item, example id = index."""
    out = generate(params, config, conds, 11, options, example_ids=np.arange(n), **kw)
    return tuple(np.asarray(x) for x in (out.tokens, out.nfe, out.committed, out.branch_hits))


def _streamed(items, n):
    items = sorted(items, key=lambda it: it.index)
    assert [it.index for it in items] == list(range(n))  # every item exactly once
    return (np.stack([it.tokens for it in items]), np.asarray([it.nfe for it in items]),
            np.stack([it.committed for it in items]), np.asarray([it.branch_hits for it in items]))


def _same(a, b, what):
    for x, y, name in zip(a, b, ("tokens", "nfe", "committed", "branch hits")):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}: {name} differ")


# recipe -> (options, items): a few hundred items over the cases, each recipe with its drafting rule
CASES = {
    "sjd": (recipes.options("sjd", 6), 240),
    "sjd-pac (tree, maximal coupling)": (recipes.options("sjd-pac", 8), 80),
    "sjd-gumbel vertical-sample (history)": (recipes.options("sjd-gumbel", 6, init="vertical-sample"), 60),
    "ar": (recipes.options("ar", 1), 40),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "sjd" else c for c in CASES])
def test_every_item_equals_generate_alone(params, case):
    options, n = CASES[case]
    labels = np.arange(n) % CONFIG.num_classes
    ref = _alone(params, CONFIG, jnp.asarray(labels), options, n, **KNOBS)
    runs = [("static", 8, None, "keep"), ("continuous", 8, 1, "keep"), ("continuous", 16, 3, "shrink")]
    if case == "sjd":
        runs += [("continuous", 5, 2, "shrink"), ("continuous", 64, None, "shrink"), ("continuous", 8, 1, "shrink")]
    fractions = {}
    for schedule, B, R, drain in runs:
        st = generate_stream(params, CONFIG, list(labels), 11, options, batch=B, schedule=schedule, refill_rows=R,
                             drain=drain, **KNOBS)
        _same(ref, _streamed(list(st), n), f"{case}, {schedule} batch {B} refill {R} drain {drain}")
        s = st.stats
        assert s.items == n and s.row_iterations == int((ref[1] - 1).sum())
        assert s.slot_iterations <= B * s.iterations and (drain == "shrink" or s.slot_iterations == B * s.iterations)
        fractions[(schedule, B, drain)] = s.useful_fraction
    if case != "ar":  # rows of different lengths: refilling keeps the batch busier than chunks
        assert fractions[("continuous", 8, "keep")] > fractions[("static", 8, "keep")]
    else:  # every AR row takes N - 1 iterations: nothing to gain, nothing lost
        assert fractions[("static", 8, "keep")] == 1.0 and fractions[("continuous", 8, "keep")] == 1.0
    if case == "sjd":  # the drain moves the last rows to smaller batches
        assert fractions[("continuous", 8, "shrink")] > fractions[("continuous", 8, "keep")]


def test_greedy_continuous_equals_ar(params):
    labels = list(np.arange(30) % CONFIG.num_classes)
    ar = _alone(params, CONFIG, jnp.asarray(labels), recipes.options("ar", 1), 30, cfg_scale=2.0,
               temperature=0.0)[0]
    st = generate_stream(params, CONFIG, labels, 11, recipes.options("sjd-pac", 8), batch=8, refill_rows=2,
                         cfg_scale=2.0, temperature=0.0)
    np.testing.assert_array_equal(_streamed(list(st), 30)[0], ar)


def test_prompts_of_any_padding_and_ordered_output():
    """Prompt-token model: left-padded prompts of different lengths in one stream; ``ordered``
    yields in input order, the default as rows finish."""
    config = S.GPTConfig(vocab_size=32, grid_size=(4, 4), dim=32, n_layer=2, n_head=4, num_classes=None,
                         text_vocab_size=16, cls_token_num=4, rope_type="1d", rope_interleaved=False)
    p = scaled_params(config, seed=2, scale=2.0)
    n, C = 24, 4
    ids = (np.arange(n * C) * 7 % 16).reshape(n, C).astype(np.int32)
    mask = np.arange(C)[None, :] >= (np.arange(n) % 3)[:, None]  # 0, 1 or 2 pad tokens on the left
    ref = _alone(p, config, S.Prompt(jnp.asarray(ids), jnp.asarray(mask)), recipes.options("sjd", 6), n, **KNOBS)
    conds = [S.Prompt(ids[i], mask[i]) for i in range(n)]
    st = generate_stream(p, config, conds, 11, recipes.options("sjd", 6), batch=6, refill_rows=2, ordered=True,
                         **KNOBS)
    items = list(st)
    assert [it.index for it in items] == list(range(n))
    _same(ref, _streamed(items, n), "prompts")
    unordered = [it.index for it in generate_stream(p, config, conds, 11, recipes.options("sjd", 6), batch=6,
                                                    refill_rows=2, **KNOBS)]
    assert sorted(unordered) == list(range(n)) and unordered != list(range(n))  # rows finish out of order


def test_example_ids_and_a_short_stream(params):
    """``example_ids`` pick the keys; fewer items than the batch shrink it (no padding rows run)."""
    opts = recipes.options("sjd", 6)
    ids = [40, 3, 17]
    ref = generate(params, CONFIG, jnp.asarray([1, 2, 3]), 11, opts, example_ids=np.asarray(ids), **KNOBS)
    st = generate_stream(params, CONFIG, [1, 2, 3], 11, opts, batch=16, example_ids=ids, **KNOBS)
    items = sorted(st, key=lambda it: it.index)
    np.testing.assert_array_equal(np.stack([it.tokens for it in items]), np.asarray(ref.tokens))
    assert [it.example_id for it in items] == ids and st.stats.batch == 3
    assert list(generate_stream(params, CONFIG, [], 11, opts, batch=4)) == []


def test_a_refill_that_keeps_the_old_cache_is_caught(params, monkeypatch):
    """Negative control: an ``insert`` that leaves the previous row's KV cache in the slot changes
    the refilled items' tokens, and the comparison above fails on it."""
    opts = recipes.options("sjd", 6)
    n = 40
    labels = np.arange(n) % CONFIG.num_classes
    ref = _alone(params, CONFIG, jnp.asarray(labels), opts, n, **KNOBS)
    good = continuous.insert

    def stale_cache(state, new, slots):  # everything but the K/V (the condition's entries above all)
        out = good(state, new, slots)
        return out.replace(cache=out.cache.replace(k=state.cache.k, v=state.cache.v))

    monkeypatch.setattr(continuous, "insert", stale_cache)
    continuous._build.cache_clear()
    got = _streamed(list(generate_stream(params, CONFIG, list(labels), 11, opts, batch=8, refill_rows=1, **KNOBS)), n)
    continuous._build.cache_clear()
    assert (got[0][:8] == ref[0][:8]).all()  # the first batch is untouched ...
    assert (got[0] != ref[0]).any(axis=1).sum() >= n // 4  # ... the refilled rows are not


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake CPU) devices")
def test_continuous_on_a_mesh_equals_one_device(params):
    """Rows over ``data`` (4) x ``model`` (2): the same items, the state stays sharded."""
    opts = recipes.options("sjd-gumbel", 6)
    n = 36
    labels = list(np.arange(n) % CONFIG.num_classes)
    ref = _streamed(list(generate_stream(params, CONFIG, labels, 11, opts, batch=8, refill_rows=4, **KNOBS)), n)
    mesh = shd.make_mesh({"data": 4, "model": 2})
    st = generate_stream(params, CONFIG, labels, 11, opts, batch=8, refill_rows=4, mesh=mesh, **KNOBS)
    _same(ref, _streamed(list(st), n), "mesh (4, 2)")
    assert st.stats.refills > 0
    static = generate_stream(params, CONFIG, labels, 11, opts, batch=8, schedule="static", mesh=mesh, **KNOBS)
    _same(ref, _streamed(list(static), n), "mesh (4, 2), static")
    with pytest.raises(ValueError, match="multiple of the data axis"):
        generate_stream(params, CONFIG, labels, 11, opts, batch=8, refill_rows=2, mesh=mesh)


@pytest.mark.parametrize("kw, match", [
    (dict(schedule="dynamic"), "schedule must be one of auto, static, continuous"),
    (dict(batch=0), "batch must be a positive"),
    (dict(refill_rows=9), "refill_rows must be"),
    (dict(drain="later"), "drain must be one of auto, shrink, keep"),
    (dict(key=jax.random.split(jax.random.key(0), 2)), "one key"),
])
def test_bad_arguments(params, kw, match):
    args = dict(batch=8, key=0)
    args.update(kw)
    key = args.pop("key")
    with pytest.raises(ValueError, match=match):
        generate_stream(params, CONFIG, [0, 1], key, **args)


def test_bad_items_are_named(params):
    with pytest.raises(ValueError, match="class id"):
        list(generate_stream(params, CONFIG, [0, 1, 99], 0, batch=2))


def test_default_refill_rows():
    assert [default_refill_rows(b) for b in (1, 8, 40, 128)] == [1, 1, 2, 8]
    assert default_refill_rows(40, data=4) == 4 and default_refill_rows(8, data=8) == 8
    assert SCHEDULES == ("static", "continuous")
    ar, sjd = (S.sampling.resolve(CONFIG, recipes.options(m, 8), S.sampling.Knobs.make()) for m in ("ar", "sjd"))
    assert [pick_schedule("auto", s) for s in (ar, sjd)] == ["static", "continuous"]
    assert pick_schedule("static", sjd) == "static"

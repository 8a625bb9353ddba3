"""Sampler behaviour: greedy equivalences, batch invariance, statistics, compiles and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sjd_jax as S
from sjd_jax.sampling import compiled as loop  # (TRACE_COUNT)
from tiny import class_cond, scaled_params, tiny_config

CONFIG = tiny_config(grid_size=(4, 5))  # N = 20
N = CONFIG.num_image_tokens


@pytest.fixture(scope="module")
def params():
    return scaled_params(CONFIG, seed=3, scale=4.0)


@pytest.fixture(scope="module")
def greedy_ar(params):
    cond = class_cond(0, 1, 2)
    out = S.generate(params, CONFIG, cond, 0, method="ar", temperature=0.0, cfg_scale=2.0, top_k=7)
    return cond, np.asarray(out.tokens)


@pytest.mark.parametrize("window", [2, 3, 7, N])
@pytest.mark.parametrize("batch", [1, 3])
def test_jacobi_equals_greedy_ar(params, greedy_ar, window, batch):
    cond, want = greedy_ar
    out = S.generate(params, CONFIG, cond[:batch], 5, method="jacobi", window=window, cfg_scale=2.0,
                     top_k=7)
    np.testing.assert_array_equal(np.asarray(out.tokens), want[:batch])
    assert (np.asarray(out.nfe) <= N).all()


@pytest.mark.parametrize("window", [1, 4, N])
def test_sjd_at_temperature_zero_equals_greedy_ar(params, greedy_ar, window):
    cond, want = greedy_ar
    out = S.generate(params, CONFIG, cond, 9, method="sjd", window=window, temperature=0.0,
                     cfg_scale=2.0, top_k=7)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)


DRAFTING = [  # lossless drafting options (window, options); horizon-repeat: test_exact_distribution
    # (its exact case, and the draft-rule hook test, which reproduces its tokens)
    (6, dict(coupling="gumbel")),
    (6, dict(coupling="maximal")),
    (6, dict(init="horizon-sample")),
    (7, dict(init="vertical-repeat", coupling="maximal")),
    (7, dict(init="vertical-sample")),
    (7, dict(tree=(3, 2))),
    (N - 1, dict(tree=(4, 3), coupling="maximal", init="vertical-repeat")),
    (9, dict(tree=(2, 4), coupling="gumbel", init="horizon-sample")),
]
DRAFT_IDS = [f"w{w}-" + "-".join(f"{v}" for v in o.values()) for w, o in DRAFTING]


@pytest.mark.parametrize("method,window,options", [("sjd", w, o) for w, o in DRAFTING]
                         + [("jacobi", w, o) for w, o in DRAFTING[-2:]],
                         ids=[f"sjd-{i}" for i in DRAFT_IDS] + [f"jacobi-{i}" for i in DRAFT_IDS[-2:]])
def test_drafting_options_at_temperature_zero_equal_greedy_ar(params, greedy_ar, window, options, method):
    cond, want = greedy_ar
    out = S.generate(params, CONFIG, cond, 9, method=method, window=window, temperature=0.0,
                     cfg_scale=2.0, top_k=7, **options)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    np.testing.assert_array_equal(np.asarray(out.committed).sum(1), N)


@pytest.mark.parametrize("window,options", DRAFTING, ids=DRAFT_IDS)
def test_drafting_options_batch_invariance_and_statistics(params, window, options):
    """Each row's tokens, NFE and branch hits do not depend on its batch neighbours; every row
    commits N tokens, at most ``window`` per forward."""
    cond = class_cond(2, 0, 1)
    kw = dict(window=window, cfg_scale=3.0, top_k=10, temperature=1.1, **options)
    batch = S.generate(params, CONFIG, cond, 11, **kw)
    alone = S.generate(params, CONFIG, cond[1:2], 11, example_ids=[1], **kw)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[1])
    assert int(alone.nfe[0]) == int(batch.nfe[1])
    assert int(alone.branch_hits[0]) == int(batch.branch_hits[1])
    committed = np.asarray(batch.committed)
    np.testing.assert_array_equal(committed.sum(1), N)
    np.testing.assert_array_equal(np.asarray(batch.nfe), (committed > 0).sum(1))
    assert committed.max() <= window
    if "tree" not in options:
        assert np.asarray(batch.branch_hits).sum() == 0


def test_gumbel_coupling_keeps_drafts_where_p_is_unchanged(params):
    """Gumbel coupling redraws a position's draft with the same noise, so it commits more tokens
    per forward than independent redraws (same seeds, 12 rows)."""
    cond = class_cond(*([0, 1, 2] * 4))
    kw = dict(window=N, cfg_scale=2.0, temperature=1.0)
    plain = np.asarray(S.generate(params, CONFIG, cond, 3, **kw).nfe).mean()
    coupled = np.asarray(S.generate(params, CONFIG, cond, 3, coupling="gumbel", **kw).nfe).mean()
    assert coupled < plain, (coupled, plain)


def test_greedy_ar_is_argmax_of_teacher_forced(params, greedy_ar):
    """Greedy AR tokens are the argmax of the guided teacher-forced logits at every position."""
    cond, want = greedy_ar
    lc = np.asarray(S.teacher_forced_logits(params, CONFIG, cond, jnp.asarray(want)))
    lu = np.asarray(S.teacher_forced_logits(params, CONFIG, jnp.full((3,), CONFIG.num_classes),
                                            jnp.asarray(want)))
    np.testing.assert_array_equal((lu + 2.0 * (lc - lu)).argmax(-1), want)


@pytest.mark.parametrize("method,window", [("ar", 1), ("sjd", 4), ("sjd", N)])
def test_batch_invariance(params, method, window):
    """Row r alone (same example id) and inside a batch of 4 gives identical tokens and NFE."""
    cond = class_cond(2, 0, 1, 2)
    kw = dict(method=method, window=window, cfg_scale=3.0, top_k=10, temperature=1.1)
    batch = S.generate(params, CONFIG, cond, 11, **kw)
    for r in range(4):
        alone = S.generate(params, CONFIG, cond[r:r + 1], 11, example_ids=[r], **kw)
        np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[r])
        assert int(alone.nfe[0]) == int(batch.nfe[r])
    # rows with the same class but different example ids differ
    assert not np.array_equal(np.asarray(batch.tokens)[0], np.asarray(batch.tokens)[3])
    # per-row keys are an equivalent way to pin a row's randomness
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(11), jnp.arange(4))
    by_keys = S.generate(params, CONFIG, cond, keys, **kw)
    np.testing.assert_array_equal(np.asarray(by_keys.tokens), np.asarray(batch.tokens))


@pytest.mark.parametrize("method,window", [("ar", 1), ("jacobi", 6), ("sjd", 6), ("sjd", N - 1), ("sjd", N)])
def test_statistics_and_final_window(params, method, window):
    """Every row commits exactly N tokens; NFE = forwards while active; the partial last window
    commits no tokens past the end."""
    cond = class_cond(0, 1, 2, 0, 1)
    out = S.generate(params, CONFIG, cond, 4, method=method, window=window, cfg_scale=1.5)
    tokens, nfe, committed = map(np.asarray, (out.tokens, out.nfe, out.committed))
    assert tokens.shape == (5, N) and tokens.dtype == np.int32
    assert tokens.min() >= 0 and tokens.max() < CONFIG.vocab_size
    np.testing.assert_array_equal(committed.sum(1), N)
    np.testing.assert_array_equal(nfe, (committed > 0).sum(1))
    assert committed.max() <= window and committed[:, 0].tolist() == [1] * 5
    assert int(out.iterations) == nfe.max() - 1
    if method == "ar":
        np.testing.assert_array_equal(nfe, N)


def test_window_equal_n_commits_all_at_once_when_drafts_match(params, greedy_ar):
    """Jacobi fixed point: once the drafts are right, one forward verifies the whole tail."""
    cond, _ = greedy_ar
    out = S.generate(params, CONFIG, cond, 0, method="jacobi", window=N, cfg_scale=2.0, top_k=7)
    committed = np.asarray(out.committed)
    assert committed.max() >= 2  # some forward committed several tokens


def test_no_recompile_for_numeric_knobs(params):
    cond = class_cond(0, 1)
    S.generate(params, CONFIG, cond, 0, window=5, cfg_scale=2.0, temperature=1.0, top_p=1.0)
    before = loop.TRACE_COUNT
    for cfg_scale, temperature, top_p, top_k in [(1.0, 0.5, 0.9, 3), (4.0, 0.0, 0.5, 0), (0.0, 2.0, 1.0, 32)]:
        S.generate(params, CONFIG, cond, 1, window=5, cfg_scale=cfg_scale, temperature=temperature,
                   top_p=top_p, top_k=top_k)
    assert loop.TRACE_COUNT == before
    S.generate(params, CONFIG, cond, 0, window=6)  # a new window is a new static shape
    assert loop.TRACE_COUNT == before + 1
    # ar ignores the window (any value, even past N): one compile, the same tokens
    a = S.generate(params, CONFIG, cond, 0, method="ar", window=1)
    before = loop.TRACE_COUNT
    b = S.generate(params, CONFIG, cond, 0, method="ar", window=N + 7)
    assert loop.TRACE_COUNT == before
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


BAD = [
    (dict(method="beam"), "unknown method"),
    (dict(window=0), "window must be"),
    (dict(window=N + 1), "window must be"),
    (dict(window=2.5), "window must be"),
    (dict(top_k=-1), "top_k must be"),
    (dict(top_k=CONFIG.vocab_size + 1), "top_k must be"),
    (dict(top_p=0.0), "top_p must be"),
    (dict(top_p=1.5), "top_p must be"),
    (dict(temperature=-0.1), "temperature must be"),
    (dict(cfg_scale=-1.0), "cfg_scale must be"),
    (dict(cfg_scale=float("nan")), "cfg_scale must be a finite"),
    (dict(cfg=False, cfg_scale=2.0), "cfg=False"),
    (dict(cond=class_cond(0, 3)), "class id 3 out of range"),
    (dict(cond=class_cond(-1)), "class id -1 out of range"),
    (dict(cond=jnp.zeros((2, 2), jnp.int32)), "shape \\[B\\]"),
    (dict(cond=jnp.zeros((2,), jnp.float32)), "integers"),
    (dict(key=jax.random.split(jax.random.key(0), 3)), "per-row keys for a cond batch of 2"),
    (dict(example_ids=[0]), "example_ids"),
    (dict(coupling="optimal"), "unknown coupling"),
    (dict(init="diagonal"), "unknown init"),
    (dict(tree=(3, 0)), "needs both width > 1 and depth > 0"),
    (dict(tree=(1, 2)), "needs both width > 1 and depth > 0"),
    (dict(tree=(4,)), "tree must be a \\(width, depth\\) pair"),
    (dict(tree=(4, 3), window=12), "needs window >= 13"),
    (dict(tree=(CONFIG.vocab_size + 1, 1), window=N), "exceeds the vocabulary"),
    (dict(method="ar", coupling="gumbel"), "ar drafts nothing"),
    (dict(lantern=(np.zeros((CONFIG.vocab_size, 2), np.int32), -0.1)), "lantern_delta must be"),
    (dict(lantern=(np.zeros((3, 2), np.int32), 0.1)), "lantern neighbours must be"),
    (dict(lantern=(np.zeros((CONFIG.vocab_size, 2), np.int32), 0.1), tree=(2, 1)), "not combined"),
]


@pytest.mark.parametrize("kwargs,match", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_raise_before_compiling(params, kwargs, match):
    kwargs = dict(kwargs)
    cond = kwargs.pop("cond", class_cond(0, 1))
    key = kwargs.pop("key", 0)
    before = loop.TRACE_COUNT
    with pytest.raises(ValueError, match=match):
        S.generate(params, CONFIG, cond, key, **kwargs)
    assert loop.TRACE_COUNT == before


def test_text_conditional_generate_and_caption_errors():
    config = tiny_config(caption_dim=8, cls_token_num=3)  # num_classes is ignored for text models
    assert config.num_classes is None and config.text_conditional
    params = S.init_params(config, jax.random.key(0))
    feats = jax.random.normal(jax.random.key(1), (2, 3, 8))
    mask = jnp.array([[True, True, True], [False, True, True]])
    out = S.generate(params, config, S.Caption(feats, mask), 0, window=4, cfg_scale=3.0)
    assert out.tokens.shape == (2, config.num_image_tokens)
    same = S.generate(params, config, {"features": feats, "mask": mask}, 0, window=4, cfg_scale=3.0)
    np.testing.assert_array_equal(np.asarray(same.tokens), np.asarray(out.tokens))
    with pytest.raises(ValueError, match="caption features must have shape"):
        S.generate(params, config, feats[:, :2], 0)
    with pytest.raises(ValueError, match="caption mask"):
        S.generate(params, config, S.Caption(feats, mask[:, :2]), 0)
    with pytest.raises(ValueError, match="at least one valid"):
        S.generate(params, config, S.Caption(feats, mask & False), 0)

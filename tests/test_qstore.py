"""Compact storage of the drafts' distributions q (``sampling.qstore``): exact round trips against
the dense layout, the same tokens as dense storage under every drafting option, no vocabulary-sized
state left in compact mode, and the capacity rules."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjd_jax.sampling import generate
from sjd_jax.core.model import abstract_params, split_cond
from sjd_jax.sampling import compile as compile_sampler
from sjd_jax.sampling.options import SamplerSpec
from sjd_jax.sampling.qstore import QStore, SparseQ, q_capacity
from tiny import scaled_params, tiny_config


def _sparse_p(rng, lead, V, k, allowed):
    """Random distributions [*lead, V] with k non-zeros among the allowed ids (k = 1: one-hot)."""
    ids = np.flatnonzero(allowed)
    p = np.zeros(lead + (V,), np.float32)
    for idx in np.ndindex(*lead):
        kk = int(rng.integers(1, k + 1))
        sup = rng.choice(ids, kk, replace=False)
        w = rng.random(kk).astype(np.float32)
        p[idx + (sup,)] = w / w.sum()
    return p


def test_compact_rows_equal_dense_rows_bit_for_bit():
    V, S = 50, 8
    allowed = np.zeros(V, bool)
    allowed[5:45] = True
    rng = np.random.default_rng(0)
    qs, qd = QStore(V, allowed, S), QStore(V, allowed, 0)
    p = _sparse_p(rng, (3, 4), V, S, allowed)
    q = qs.from_p(jnp.asarray(p))
    assert isinstance(q, SparseQ) and q.ids.shape == (3, 4, S)
    np.testing.assert_array_equal(np.asarray(qs.dense(q)), p)
    x = jnp.asarray(rng.integers(0, V, (3, 4)), jnp.int32)
    x = jnp.where(rng.random((3, 4)) < 0.5, jnp.argmax(p, -1), x)  # hits and misses of the support
    np.testing.assert_array_equal(np.asarray(qs.at(q, x)), np.take_along_axis(p, np.asarray(x)[..., None], -1)[..., 0])
    for make in (lambda s: s.uniform((3, 4)), lambda s: s.onehot(x)):
        np.testing.assert_array_equal(np.asarray(qs.dense(make(qs))), np.asarray(qd.dense(make(qd))))
        np.testing.assert_array_equal(np.asarray(qs.at(make(qs), x)), np.asarray(qd.at(make(qd), x)))
    # tree siblings: ids removed from a sparse p and from a uniform row, renormalised
    removed = jnp.asarray(np.stack([rng.choice(np.flatnonzero(allowed), 3, replace=False)
                                    for _ in range(12)]).reshape(3, 4, 3), jnp.int32)
    removed = removed.at[..., 0].set(jnp.argmax(jnp.asarray(p), -1))  # always inside p's support
    for q_c, q_d in ((q, jnp.asarray(p)), (qs.uniform((3, 4)), qd.uniform((3, 4)))):
        got = np.asarray(qs.dense(qs.exclude(q_c, removed)))
        np.testing.assert_allclose(got, np.asarray(qd.exclude(q_d, removed)), rtol=3e-7)  # sums: an ulp
        ref = np.asarray(q_d, np.float64).copy()
        np.put_along_axis(ref, np.asarray(removed), 0.0, -1)
        np.testing.assert_allclose(got, ref / np.maximum(ref.sum(-1, keepdims=True), 1e-30), rtol=1e-6)  # all removed: 0


def test_capacity_rules():
    V = 184622  # Emu3's vocabulary
    assert q_capacity(V, "sjd", 1.0, 2048) == 2048
    assert q_capacity(V, "sjd", 1.0, 100) == 2048  # auto: every top-k <= 2048 shares one compile
    assert q_capacity(V, "sjd", 0.0, 0) == 2048 and q_capacity(V, "jacobi", 1.0, 0) == 2048  # greedy too
    assert q_capacity(V, "sjd", 1.0, 3000) == 4096
    assert q_capacity(V, "sjd", 1.0, 0) == 0  # no top-k: p has full support, rows stay dense
    assert q_capacity(4096, "sjd", 1.0, 100) == 0  # 2048 entries would not save memory over 4096 floats
    assert q_capacity(V, "sjd", 1.0, 2048, "dense") == 0
    # compact: the tightest power of two
    assert q_capacity(V, "sjd", 1.0, 100, "compact") == 128
    assert q_capacity(V, "jacobi", 1.0, 0, "compact") == 1 and q_capacity(V, "sjd", 0.0, 7, "compact") == 1
    assert q_capacity(V, "sjd", 1.0, 1, "compact", tree_width=4) == 4  # siblings list up to K removed ids
    assert q_capacity(64, "sjd", 1.0, 40, "compact") == 64
    with pytest.raises(ValueError, match="top-k"):
        q_capacity(V, "sjd", 1.0, 0, "compact")
    with pytest.raises(ValueError, match="q_storage must be one of"):
        q_capacity(V, "sjd", 1.0, 0, "sparse")
    c = tiny_config()
    with pytest.raises(ValueError, match="q_storage must be one of"):
        generate(None, c, jnp.zeros((1,), jnp.int32), 0, q_storage="sparse")


# Emu3-like layout: rows of 5 codes + a forced row end; codes restricted to ids [0, 200).
CONFIG = tiny_config(vocab_size=256, grid_size=(4, 6), row_end_token=255, image_token_range=(0, 200))
OPTIONS = {
    "maximal-vertical-sample-tree3x2": dict(coupling="maximal", init="vertical-sample", tree=(3, 2)),
    "gumbel-horizon-sample": dict(coupling="gumbel", init="horizon-sample"),
}
_RUNS = {}


@pytest.fixture(scope="module")
def params():
    return scaled_params(CONFIG, seed=1, scale=3.0)


def _run(params, q_storage, cache=True, **options):
    key = (q_storage, repr(sorted(options.items())))
    if cache and key in _RUNS:
        return _RUNS[key]
    out = generate(params, CONFIG, jnp.asarray([0, 1, 2], jnp.int32), 3, method="sjd", window=8,
                   cfg_scale=2.0, top_k=8, q_storage=q_storage, **options)
    result = np.asarray(out.tokens), np.asarray(out.nfe)
    if cache:
        _RUNS[key] = result
    return result


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_compact_and_dense_storage_give_the_same_tokens(params, name):
    """q values are stored exactly, so every draw (acceptance, residual, redraft, tree) is the same."""
    dense, compact = _run(params, "dense", **OPTIONS[name]), _run(params, "compact", **OPTIONS[name])
    np.testing.assert_array_equal(compact[0], dense[0])
    np.testing.assert_array_equal(compact[1], dense[1])
    assert dense[1].max() < CONFIG.num_image_tokens  # drafts were accepted: q mattered


def test_too_few_entries_change_the_tokens(params, monkeypatch):
    """Negative control: 3 entries for top-k 8 drop mass from the stored q, which changes draws."""
    options = OPTIONS["maximal-vertical-sample-tree3x2"]
    dense = _run(params, "dense", **options)
    monkeypatch.setattr(sys.modules["sjd_jax.sampling.options"], "q_capacity", lambda *a, **k: 3)
    truncated = _run(params, "compact", cache=False, **options)
    assert (truncated[0] != dense[0]).any()


def test_compact_state_has_no_vocabulary_sized_rows():
    """At Emu3's vocabulary, window 64 and top-k 2048 the sampler state (cache aside) holds no
    [B, W, V] rows: q, the tree's q and the vertical-sample history are S = 2048 entries each."""
    V, B = 184622, 2
    c = tiny_config(vocab_size=V, grid_size=(12, 12), dim=16, n_head=2, n_layer=1)
    S = q_capacity(V, "sjd", 1.0, 2048, "auto", tree_width=4)
    assert S == 2048
    cond, mask = split_cond(c, jnp.zeros((B,), jnp.int32))
    rows = jax.random.split(jax.random.key(0), B)
    sizes = {}
    for slots in (0, S):
        spec = SamplerSpec(config=c, window=64, coupling="maximal", init="vertical-sample", tree_width=4,
                           tree_depth=3, q_slots=slots)
        state = compile_sampler(spec, cond, mask, rows).abstract_state
        leaves = jax.tree_util.tree_leaves_with_path(state.replace(cache=None))
        sizes[slots] = sum(x.size * x.dtype.itemsize for _, x in leaves)
        if slots:
            big = [jax.tree_util.keystr(p) for p, x in leaves if V in x.shape]
            assert not big, big
    Wc, A, R = 64 - 3 * 3, 3 * 3, 12 + 64 - 9
    per_row = lambda width: B * (Wc + A + R) * width  # noqa: E731
    assert sizes[0] - sizes[S] == per_row(4 * V) - per_row(8 * S + 4)
    print(f"sampler state without the cache: dense {sizes[0] / 2**20:.0f} MiB, compact {sizes[S] / 2**20:.1f} MiB")


def test_slot_chunks_give_the_same_tokens(params):
    """With ``chunk_elements`` below B * W * V the target filters and the draws run a few window
    slots at a time (every slot has its own key). Chunks of 3 slots here (windows 8 and 7 do not
    divide: the last chunk overlaps), with compact q, maximal coupling, vertical-sample drafts and
    a tree: the tokens are unchanged."""
    from sjd_jax.sampling.context import slot_chunk

    name = "maximal-vertical-sample-tree3x2"
    want = _run(params, "dense", **OPTIONS[name])
    chunk = 3 * 3 * CONFIG.vocab_size
    assert slot_chunk(3, 8, CONFIG.vocab_size, chunk) == 3
    got = _run(params, "compact", cache=False, chunk_elements=chunk, **OPTIONS[name])
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="chunk_elements"):
        _run(params, "dense", cache=False, chunk_elements=0)


def test_auto_storage_does_not_recompile_for_top_k_or_temperature():
    import sjd_jax.sampling.compiled as loop

    c = tiny_config(vocab_size=16384, grid_size=(2, 3), dim=16, n_head=2, n_layer=1)
    params = scaled_params(c, seed=0)
    cond = jnp.asarray([0, 1], jnp.int32)
    generate(params, c, cond, 0, window=3, top_k=2048)
    before = loop.TRACE_COUNT
    for top_k, temperature in ((5, 1.0), (1000, 0.7), (0, 0.0), (2048, 1.3)):
        generate(params, c, cond, 1, window=3, top_k=top_k, temperature=temperature)
    assert loop.TRACE_COUNT == before
    generate(params, c, cond, 1, window=3, top_k=0)  # full-support p: dense rows, a new compile
    assert loop.TRACE_COUNT == before + 1

"""The target distribution p against an independent numpy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from sjd_jax.sampling import target_probs
from tiny import np_target


@pytest.mark.parametrize("cfg_scale,temperature,top_k,top_p", [
    (1.0, 1.0, 0, 1.0), (3.0, 1.0, 0, 1.0), (2.0, 0.7, 5, 1.0), (1.5, 1.3, 0, 0.8),
    (4.0, 0.9, 12, 0.6), (0.0, 1.0, 1, 1.0), (2.0, 1.0, 64, 0.999)])
def test_target_probs_matches_reference(cfg_scale, temperature, top_k, top_p):
    rng = np.random.default_rng(0)
    lc, lu = rng.normal(0, 3, (2, 7, 64)).astype(np.float32)
    got = np.asarray(target_probs(jnp.asarray(lc), jnp.asarray(lu), cfg_scale, temperature, top_k, top_p))
    want = np_target(lc, lu, cfg_scale, temperature, top_k, top_p)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    if top_k:
        assert ((got > 0).sum(-1) <= top_k).all()


def test_greedy_and_ties():
    l = jnp.asarray([[0.0, 2.0, 2.0, 1.0, -1.0]])
    p = np.asarray(target_probs(l, None, 1.0, 0.0, 0, 1.0))
    np.testing.assert_array_equal(p, [[0, 1, 0, 0, 0]])  # temperature 0: one-hot argmax
    p = np.asarray(target_probs(l, None, 1.0, 1.0, 1, 1.0))
    np.testing.assert_array_equal(p, [[0, 1, 0, 0, 0]])  # top-k keeps exactly k: the tie goes to the lower id
    p = np.asarray(target_probs(jnp.asarray([[1.0, 3.0, 1.0, 1.0, 1.0, 0.0]]), None, 1.0, 1.0, 3, 1.0))
    assert (p[0, :3] > 0).all() and p[0, 3:].sum() == 0  # one above, two of four tied at the k-th value
    np.testing.assert_allclose(p[0, 0], p[0, 2])
    p = np.asarray(target_probs(l, None, 1.0, 1.0, 0, 1e-6))
    assert (p > 0).sum() >= 1 and abs(p.sum() - 1) < 1e-6  # top-p always keeps at least one token


def test_top_k_keeps_exactly_k_under_heavy_ties():
    """bf16-like logits (quarter steps) tie at the k-th value in every row: exactly k survive, the
    lowest ids among the tied, so p has at most k non-zeros (compact q storage relies on it)."""
    rng = np.random.default_rng(3)
    l = (np.round(rng.normal(0, 2, (6, 5000)) * 4) / 4).astype(np.float32)
    k = 100
    p = np.asarray(target_probs(jnp.asarray(l), None, 1.0, 1.0, k, 1.0))
    assert ((p > 0).sum(-1) == k).all()
    want = np.zeros(l.shape, bool)
    np.put_along_axis(want, np.argsort(-l, axis=-1, kind="stable")[:, :k], True, -1)
    np.testing.assert_array_equal(p > 0, want)
    kth = np.sort(l, -1)[:, -k]
    assert ((l == kth[:, None]).sum(-1) > 1).all() and ((l >= kth[:, None]).sum(-1) > k).all()  # ties did bind

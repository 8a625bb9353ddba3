"""The exact-distribution tests' reference (``sjd_jax.sampling.exactness``): float64 from the logits on, one
conditional per prefix, so an enumerated joint sums to 1 within 1e-9 whatever rounding XLA gives
the same prefix in different batch rows (jax 0.12's CPU backend differs by ~1e-6 between rows)."""

import numpy as np
import pytest

from sjd_jax.sampling import exactness as E


def _joint(logits, seqs, **target):
    p = E.target_np(logits, None, 1.0, **{"temperature": 1.0, "top_k": 0, "top_p": 1.0, **target})
    return np.take_along_axis(p, seqs[..., None], -1)[..., 0].prod(-1)


def _causal_logits(seqs, V, seed=0):
    """Logits [S, N, V] whose position t depends only on the prefix seqs[:, :t] (exactly)."""
    table = np.random.default_rng(seed).normal(0, 1.5, (V ** seqs.shape[1], seqs.shape[1], V)).astype(np.float32)
    out = np.empty(seqs.shape + (V,), np.float32)
    for t in range(seqs.shape[1]):
        out[:, t] = table[E.sequence_index(seqs[:, :t], V) if t else 0, t]
    return out


@pytest.mark.parametrize("target", [{}, dict(temperature=1.3), dict(top_k=2), dict(top_p=0.9)])
def test_row_rounding_breaks_the_raw_joint_not_the_reference(target):
    V, N = 3, 4
    seqs = np.array(np.meshgrid(*[np.arange(V)] * N, indexing="ij")).reshape(N, -1).T
    exact = _causal_logits(seqs, V)
    # float32 rounding that differs between rows of one prefix, as jax 0.12's CPU matmuls give
    noisy = exact + np.random.default_rng(1).normal(0, 1e-6, exact.shape).astype(np.float32)
    assert abs(_joint(exact, seqs, **target).sum() - 1) < 1e-12
    assert abs(_joint(noisy, seqs, **target).sum() - 1) > 1e-9  # control: the check the tests make fails
    fixed = E.prefix_logits(noisy, seqs)
    assert fixed.dtype == np.float64
    assert abs(_joint(fixed, seqs, **target).sum() - 1) < 1e-12
    np.testing.assert_allclose(fixed, exact, atol=1e-5)


def test_non_causal_logits_are_refused():
    V, N = 3, 3
    seqs = np.array(np.meshgrid(*[np.arange(V)] * N, indexing="ij")).reshape(N, -1).T
    logits = _causal_logits(seqs, V)
    E.prefix_logits(logits, seqs)  # causal: accepted
    leaky = logits.copy()
    leaky[:, 0, 0] += 0.5 * seqs[:, -1]  # position 0 sees the last token
    with pytest.raises(ValueError, match="not causal"):
        E.prefix_logits(leaky, seqs)


def test_target_np_applies_cfg_in_float64():
    rng = np.random.default_rng(0)
    lc, lu = rng.normal(0, 3, (2, 5, 16)).astype(np.float32)
    want = E.target_np(lc.astype(np.float64), lu.astype(np.float64), 3.5, 1.0, 0, 1.0)
    np.testing.assert_array_equal(E.target_np(lc, lu, 3.5, 1.0, 0, 1.0), want)  # same as float64 inputs

"""Drafting inits are plug-ins: one function and one line in ``DRAFT_INITS`` make a new ``init``
that validation, the CLI's choices and the sampler all accept."""

import jax.numpy as jnp
import numpy as np
import pytest

import sjd_jax as S
from sjd_jax.sampling import drafting
from tiny import class_cond, scaled_params, tiny_config


def _ones(ctx, d: drafting.Fresh):
    """Draft token 1 everywhere, q one-hot (a deterministic draft: lossless)."""
    vals = jnp.ones(d.tok.shape, jnp.int32)
    return vals, ctx.qs.onehot(vals)


@pytest.fixture
def ones_init(monkeypatch):
    monkeypatch.setitem(drafting.DRAFT_INITS, "ones", drafting.Init(_ones))
    return "ones"


def test_a_registered_init_runs_in_the_loop(ones_init):
    config = tiny_config(vocab_size=8, grid_size=(3, 3), num_classes=2)
    params = scaled_params(config, seed=1)
    cond = class_cond(0, 1)
    greedy = dict(temperature=0.0, cfg=False)
    want = S.generate(params, config, cond, 0, method="ar", **greedy)
    got = S.generate(params, config, cond, 0, method="sjd", window=4, init=ones_init, **greedy)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))  # greedy AR, token for token
    with pytest.raises(ValueError, match="unknown init 'twos'"):
        S.generate(params, config, cond, 0, window=4, init="twos")

"""Tiny random-weight models shared by the tests."""

import jax.numpy as jnp

import sjd_jax as S
from sjd_jax.exactness import scaled_params, target_np as np_target  # noqa: F401  (shared by the tests)


def tiny_config(**overrides) -> S.GPTConfig:
    base = dict(vocab_size=32, grid_size=(4, 4), dim=32, n_layer=2, n_head=4, num_classes=3)
    base.update(overrides)
    return S.GPTConfig(**base)


def class_cond(*ids):
    return jnp.asarray(ids, jnp.int32)

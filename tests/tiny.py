"""Tiny random-weight models shared by the tests."""

import jax
import jax.numpy as jnp

import sjd_jax as S


def tiny_config(**overrides) -> S.GPTConfig:
    base = dict(vocab_size=32, grid_size=(4, 4), dim=32, n_layer=2, n_head=4, num_classes=3)
    base.update(overrides)
    return S.GPTConfig(**base)


def scaled_params(config: S.GPTConfig, seed: int = 0, scale: float = 1.0, head_scale: float = 1.0):
    """Random params with every weight matrix multiplied by ``scale`` (and the output head also by
    ``head_scale``), so that next-token distributions are peaked and depend on the context."""
    params = S.init_params(config, jax.random.key(seed))

    def f(path, x):
        name = jax.tree_util.keystr(path)
        if x.ndim < 2 or "uncond_embedding" in name:
            return x
        return x * scale * (head_scale if "'output'" in name else 1.0)

    return jax.tree_util.tree_map_with_path(f, params)


def class_cond(*ids):
    return jnp.asarray(ids, jnp.int32)

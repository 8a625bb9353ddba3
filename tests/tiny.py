"""Tiny random-weight models shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np

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


def np_target(lc, lu, cfg_scale, temperature, top_k, top_p):
    """Independent numpy reference of p: CFG on raw logits, temperature, top-k, top-p."""
    l = lu + cfg_scale * (lc - lu) if lu is not None else lc.copy()
    l = l.astype(np.float64) / temperature
    if top_k:  # exactly k: ties with the k-th value go to the lower ids (stable order)
        keep = np.zeros(l.shape, bool)
        np.put_along_axis(keep, np.argsort(-l, axis=-1, kind="stable")[..., :top_k], True, -1)
        l = np.where(keep, l, -np.inf)
    p = np.exp(l - l.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if top_p < 1:
        order = np.argsort(-p, axis=-1, kind="stable")
        ps = np.take_along_axis(p, order, -1)
        before = np.cumsum(ps, -1) - ps
        keep_sorted = before < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return p

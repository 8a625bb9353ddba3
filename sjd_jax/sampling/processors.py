"""The target distribution p: CFG, then temperature, then top-k, then top-p (all traced values).

These shape only p. Speculative verification and the rejection residual use p as computed here and
never filter again (re-filtering the residual is not lossless for temperature != 1 or top-p < 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def guided_logits(logits_c: jax.Array, logits_u: jax.Array | None, cfg_scale) -> jax.Array:
    """Classifier-free guidance on raw logits: ``l_u + s * (l_c - l_u)`` (LlamaGen, Janus)."""
    if logits_u is None:
        return logits_c
    return logits_u + cfg_scale * (logits_c - logits_u)


def filter_logits(logits: jax.Array, top_k, top_p) -> jax.Array:
    """Set logits outside the top-k / top-p set to -inf. ``top_k = 0`` and ``top_p = 1`` are off.

    Ties with the threshold are kept. Top-p keeps the smallest prefix (by descending probability,
    after top-k) whose mass reaches ``top_p``. Skipped at run time when both are off.
    """

    def apply(l):
        V = l.shape[-1]
        srt = -jnp.sort(-l, axis=-1)  # descending
        k = jnp.where(top_k > 0, top_k, V)
        kth = jnp.take_along_axis(srt, jnp.broadcast_to(k - 1, srt.shape[:-1] + (1,)), axis=-1)
        srt = jnp.where(srt < kth, NEG_INF, srt)
        ps = jax.nn.softmax(srt, axis=-1)
        keep = ((jnp.cumsum(ps, axis=-1) - ps) < top_p) | (top_p >= 1.0)
        n_keep = jnp.maximum(jnp.sum(keep & (srt > NEG_INF), axis=-1, keepdims=True), 1)
        thr = jnp.maximum(jnp.take_along_axis(srt, n_keep - 1, axis=-1), kth)
        return jnp.where(l < thr, NEG_INF, l)

    return jax.lax.cond((top_k > 0) | (top_p < 1.0), apply, lambda l: l, logits)


def target_probs(logits_c, logits_u, cfg_scale, temperature, top_k, top_p) -> jax.Array:
    """p ``[..., V]`` float32. ``temperature == 0`` gives the one-hot argmax (greedy)."""
    l = guided_logits(logits_c.astype(jnp.float32),
                      None if logits_u is None else logits_u.astype(jnp.float32), cfg_scale)
    greedy = temperature <= 0
    l = l / jnp.where(greedy, 1.0, temperature)
    l = filter_logits(l, top_k, top_p)
    p = jax.nn.softmax(l, axis=-1)
    onehot = jax.nn.one_hot(jnp.argmax(l, axis=-1), l.shape[-1], dtype=jnp.float32)
    return jnp.where(greedy, onehot, p)

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


def _order_key(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negative floats have their bits flipped)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _largest_threshold(keys: jax.Array, ok) -> jax.Array:
    """Largest uint32 t with ``ok(keys >= t)`` true, found bit by bit (32 masked reductions over V
    instead of a full sort, which is ~10x slower on XLA:CPU). ``ok`` must be monotone in t."""

    def step(i, t):
        cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(ok(keys >= cand[..., None]), cand, t)

    return jax.lax.fori_loop(0, 32, step, jnp.zeros(keys.shape[:-1], jnp.uint32))


def filter_logits(logits: jax.Array, top_k, top_p) -> jax.Array:
    """Set logits outside the top-k / top-p set to -inf. ``top_k = 0`` and ``top_p = 1`` are off.

    Top-k keeps exactly k tokens: ties with the k-th value go to the lower token ids (as
    ``lax.top_k`` and ``torch.topk`` pick them), so p has at most k non-zeros, which compact q
    storage relies on. (HF's ``TopKLogitsWarper`` keeps every tie; the two differ only when the
    k-th logit is tied.) Top-p keeps the smallest set of most probable tokens (after top-k) whose
    mass reaches ``top_p``, ties with its threshold included. Each filter is skipped at run time
    when it is off.
    """

    def top_k_fn(l):
        keys = _order_key(l)
        kth = _largest_threshold(keys, lambda m: jnp.sum(m, axis=-1) >= top_k)[..., None]
        above = keys > kth
        tie = keys == kth
        room = top_k - jnp.sum(above, axis=-1, keepdims=True)  # >= 1 by the choice of kth
        keep = above | (tie & (jnp.cumsum(tie, axis=-1, dtype=jnp.int32) <= room))
        return jnp.where(keep, l, NEG_INF)

    def top_p_fn(l):
        p = jax.nn.softmax(l, axis=-1)
        keys = _order_key(p)
        thr = _largest_threshold(keys, lambda m: jnp.sum(jnp.where(m, p, 0.0), axis=-1) >= top_p)
        return jnp.where(keys >= thr[..., None], l, NEG_INF)

    logits = jax.lax.cond(top_k > 0, top_k_fn, lambda l: l, logits)
    return jax.lax.cond(top_p < 1.0, top_p_fn, lambda l: l, logits)


def target_probs(logits_c, logits_u, cfg_scale, temperature, top_k, top_p, allowed=None) -> jax.Array:
    """p ``[..., V]`` float32. ``temperature == 0`` gives the one-hot argmax (greedy).
    ``allowed``: optional ``[V]`` bool; other tokens get probability 0 (after CFG: masking the
    two logit rows before would give -inf - -inf)."""
    l = guided_logits(logits_c.astype(jnp.float32),
                      None if logits_u is None else logits_u.astype(jnp.float32), cfg_scale)
    if allowed is not None:
        l = jnp.where(jnp.asarray(allowed), l, NEG_INF)
    greedy = temperature <= 0
    l = l / jnp.where(greedy, 1.0, temperature)
    l = filter_logits(l, top_k, top_p)
    p = jax.nn.softmax(l, axis=-1)
    onehot = jax.nn.one_hot(jnp.argmax(l, axis=-1), l.shape[-1], dtype=jnp.float32)
    return jnp.where(greedy, onehot, p)

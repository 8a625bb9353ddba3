"""Static-capacity KV cache with a per-row committed length.

The cache is a plain pytree. A forward over T positions writes each row's K/V at that row's own
``length`` and advances it by T; rolling back a speculative window is only setting ``length`` back.
Entries past ``length`` are stale but never read: attention masks keys by absolute position
(key position <= query position), and every query position at or past ``length`` is rewritten by
the window that reads it.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sjd_jax.core.config import GPTConfig


@flax.struct.dataclass
class KVCache:
    k: tuple[jax.Array, ...]  # per layer [B, S, Hkv, hd]
    v: tuple[jax.Array, ...]  # per layer [B, S, Hkv, hd]
    length: jax.Array  # [B] int32: positions [0, length) hold valid K/V
    prefix_mask: jax.Array  # [B, C] bool: condition positions that are real keys (caption padding)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    def with_length(self, length: jax.Array) -> "KVCache":
        """Commit/roll back: only the per-row length moves; K/V buffers are untouched."""
        return self.replace(length=jnp.asarray(length, jnp.int32))


def init_cache(config: GPTConfig, batch: int, prefix_mask: jax.Array | None = None,
               dtype=None, extra: int = 0) -> KVCache:
    """Zero-filled cache of capacity ``config.seq_len + extra`` for ``batch`` rows (allocated once).

    ``extra`` slots let a token-tree window near the end of the image keep all its K/V (a tree's
    side branches sit after its chain in the cache, past the last sequence position)."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, config.seq_len + extra, config.kv_heads, config.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
    if prefix_mask is None:
        prefix_mask = jnp.ones((batch, config.cls_token_num), bool)
    return KVCache(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer)),
                   length=jnp.zeros((batch,), jnp.int32), prefix_mask=jnp.asarray(prefix_mask, bool))


def write(cache_kv: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
    """Scatter ``new: [B, T, Hkv, hd]`` into ``cache_kv: [B, S, Hkv, hd]`` at ``positions: [B, T]``.

    Positions >= S are dropped: a window that runs past the end of the image writes nothing out of
    range (those positions are never read).
    """
    rows = jnp.arange(cache_kv.shape[0])[:, None]
    return cache_kv.at[rows, positions].set(new.astype(cache_kv.dtype), mode="drop")


def attention_mask(cache: KVCache, q_pos: jax.Array) -> jax.Array:
    """Boolean ``[B, T, S]``: key s is visible to the query at absolute position q_pos[b, t].

    Causal by absolute position; padded condition positions are hidden from every query except
    themselves (LlamaGen's caption mask with a forced diagonal, so no row is fully masked).
    """
    S, C = cache.capacity, cache.prefix_mask.shape[1]
    k_pos = jnp.arange(S)
    causal = k_pos[None, None, :] <= q_pos[:, :, None]
    real = jnp.concatenate([cache.prefix_mask, jnp.ones((q_pos.shape[0], S - C), bool)], axis=1)
    return causal & (real[:, None, :] | (k_pos[None, None, :] == q_pos[:, :, None]))

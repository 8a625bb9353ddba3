"""Rotary position embeddings: LlamaGen's 2D grid RoPE and the usual 1D RoPE.

Tables are built in numpy from the static config (they become jit constants) and hold one
(cos, sin) pair per rotation pair: shape ``[num_positions, head_dim // 2]``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig


@functools.lru_cache(maxsize=64)
def rope_table(config: GPTConfig) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each ``[config.seq_len, head_dim // 2]`` float32, indexed by absolute position."""
    hd, base, C = config.head_dim, config.rope_theta, config.cls_token_num
    n_pos = config.seq_len
    if config.rope_type == "2d":
        # LlamaGen: pairs [0, hd/4) rotate by the row index, pairs [hd/4, hd/2) by the column index,
        # both with frequencies base^(-4i/hd). Condition positions get cos = sin = 0, i.e. their q and
        # k become zero vectors (a LlamaGen quirk that checkpoints were trained with).
        quarter = hd // 4
        freqs = base ** (-np.arange(0, hd // 2, 2)[:quarter] / (hd // 2))  # [hd/4]
        h, w = config.grid_size
        rows, cols = np.divmod(np.arange(h * w), w)
        angles_img = np.concatenate([np.outer(rows, freqs), np.outer(cols, freqs)], axis=-1)
        cos = np.concatenate([np.zeros((C, hd // 2)), np.cos(angles_img)], axis=0)
        sin = np.concatenate([np.zeros((C, hd // 2)), np.sin(angles_img)], axis=0)
    else:
        freqs = base ** (-np.arange(0, hd, 2) / hd)  # [hd/2]
        angles = np.outer(np.arange(n_pos + 1), freqs)
        cos, sin = np.cos(angles), np.sin(angles)
    return cos[:n_pos].astype(np.float32), sin[:n_pos].astype(np.float32)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, interleaved: bool) -> jnp.ndarray:
    """Rotate ``x: [B, T, H, hd]`` by per-position ``cos, sin: [B, T, hd/2]``."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    if interleaved:
        xp = x.reshape(*x.shape[:-1], -1, 2)
        x0, x1 = xp[..., 0], xp[..., 1]
        out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(x.shape)
    else:
        half = x.shape[-1] // 2
        x0, x1 = x[..., :half], x[..., half:]
        out = jnp.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.astype(dtype)

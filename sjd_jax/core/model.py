"""The LlamaGen-architecture GPT in Flax linen, used only through pure ``apply`` calls.

Params are a plain pytree; the KV cache is an explicit pytree passed in and returned. Layers are
unrolled (no ``nn.scan``): on decode steps scanning was 2-4x slower on CPU (jax-practices §8).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.core import cache as kv
from sjd_jax.parallel import sharding as shd
from sjd_jax.core.cache import KVCache, init_cache
from sjd_jax.core.config import GPTConfig
from sjd_jax.core.rope import apply_rope, rope_table

_init = nn.initializers.normal(stddev=0.02)


class Caption(NamedTuple):
    """Text condition: caption features ``[B, C, caption_dim]`` and their validity mask ``[B, C]``."""

    features: jax.Array
    mask: jax.Array


class Prompt(NamedTuple):
    """Prompt-token condition (Janus): token ids ``[B, C]`` and their validity mask ``[B, C]``.

    Pad on the left: real tokens end at position ``C - 1`` (the image-start token), so the image
    follows the prompt directly. With 1D RoPE, positions count real tokens only, so a prompt gives
    the same logits whatever it is padded to.
    """

    ids: jax.Array
    mask: jax.Array


class RMSNorm(nn.Module):
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * w.astype(x.dtype)


class HeadLayerNorm(nn.Module):
    """Chameleon qk-norm: LayerNorm over head_dim with per-head scale and bias ``[H, hd]``."""

    n_head: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):  # x: [B, T, H, hd]
        hd = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (self.n_head, hd))
        bias = self.param("bias", nn.initializers.zeros, (self.n_head, hd))
        xf = x.astype(jnp.float32)
        mu = xf.mean(-1, keepdims=True)
        var = ((xf - mu) ** 2).mean(-1, keepdims=True)
        return ((xf - mu) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(x.dtype)


class Attention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x, cos, sin, k_cache, v_cache, q_pos, mask):
        """x: [B, T, D]; cos/sin: [B, T, hd/2]; caches: [B, S, Hkv, hd]; q_pos: [B, T]; mask: [B, T, S].

        hd is ``config.head_dim`` (``attn_head_dim`` when set): H * hd need not equal D."""
        c = self.config
        B, T, _ = x.shape
        H, Hkv, hd = c.n_head, c.kv_heads, c.head_dim
        dtype = jnp.dtype(c.dtype)
        qkv = nn.Dense((H + 2 * Hkv) * hd, use_bias=False, dtype=dtype, kernel_init=_init,
                       name="wqkv")(x)
        q, k, v = jnp.split(qkv, [H * hd, (H + Hkv) * hd], axis=-1)  # LlamaGen order [q | k | v]
        q, k, v = q.reshape(B, T, H, hd), k.reshape(B, T, Hkv, hd), v.reshape(B, T, Hkv, hd)
        # tensor parallel: heads on the model axis (wqkv's fused columns need not align with heads)
        q = shd.constrain(q, ("batch", None, "heads", "head_dim"))
        k = shd.constrain(k, ("batch", None, "kv_heads", "head_dim"))
        v = shd.constrain(v, ("batch", None, "kv_heads", "head_dim"))
        if c.qk_norm:
            q = HeadLayerNorm(H, c.qk_norm_eps, name="q_norm")(q)
            k = HeadLayerNorm(Hkv, c.qk_norm_eps, name="k_norm")(k)
        q = apply_rope(q, cos, sin, c.rope_interleaved)
        k = apply_rope(k, cos, sin, c.rope_interleaved)
        k_cache = shd.constrain(kv.write(k_cache, k, q_pos), shd.KV_AXES)
        v_cache = shd.constrain(kv.write(v_cache, v, q_pos), shd.KV_AXES)
        # Grouped heads: query head j uses kv head j // (H / Hkv), as repeat_interleave does.
        qg = q.reshape(B, T, Hkv, H // Hkv, hd)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k_cache.astype(dtype),
                            preferred_element_type=jnp.float32) / np.sqrt(hd)
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v_cache.astype(dtype)).reshape(B, T, H * hd)
        out = nn.Dense(c.dim, use_bias=False, dtype=dtype, kernel_init=_init, name="wo")(out)
        return out, k_cache, v_cache


class FeedForward(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = functools.partial(nn.Dense, use_bias=False, dtype=jnp.dtype(c.dtype), kernel_init=_init)
        h = nn.silu(dense(c.ffn_hidden, name="w1")(x)) * dense(c.ffn_hidden, name="w3")(x)
        return dense(c.dim, name="w2")(shd.constrain(h, ("batch", None, "mlp")))


class Block(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x, cos, sin, k_cache, v_cache, q_pos, mask):
        c = self.config
        a, k_cache, v_cache = Attention(c, name="attention")(
            RMSNorm(c.norm_eps, name="attention_norm")(x), cos, sin, k_cache, v_cache, q_pos, mask)
        h = x + a
        return h + FeedForward(c, name="feed_forward")(RMSNorm(c.norm_eps, name="ffn_norm")(h)), \
            k_cache, v_cache


class GPT(nn.Module):
    """Pre-norm Llama decoder with LlamaGen's condition embedders and 2D RoPE."""

    config: GPTConfig

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        self.tok_embeddings = nn.Embed(c.vocab_size, c.dim, dtype=dtype, embedding_init=_init)
        if c.text_conditional:
            self.cap_fc1 = nn.Dense(c.dim, use_bias=False, dtype=dtype, kernel_init=_init)
            self.cap_fc2 = nn.Dense(c.dim, use_bias=False, dtype=dtype, kernel_init=_init)
            self.uncond_embedding = self.param(
                "uncond_embedding",
                lambda k, s: jax.random.normal(k, s) / np.sqrt(c.caption_dim),
                (c.cls_token_num, c.caption_dim))
        elif c.cond_kind == "tokens":
            if not c.shared_embeddings:
                self.text_embeddings = nn.Embed(c.text_vocab_size, c.dim, dtype=dtype, embedding_init=_init)
        else:
            self.cls_embedding = nn.Embed(c.num_classes + 1, c.dim, dtype=dtype, embedding_init=_init)
        self.layers = [Block(c, name=f"layers_{i}") for i in range(c.n_layer)]
        self.norm = RMSNorm(c.norm_eps)
        biased = c.head_hidden is not None
        if biased:
            self.head_proj = nn.Dense(c.head_hidden, dtype=dtype, kernel_init=_init)
        self.output = nn.Dense(c.vocab_size, use_bias=biased, dtype=dtype, kernel_init=_init)

    def embed_cond(self, cond, null):
        """Condition embeddings ``[B, C, D]``; rows with ``null: [B] bool`` get the CFG null condition.

        cond: class ids ``[B]``, caption features ``[B, C, caption_dim]`` or prompt ids ``[B, C]``.
        """
        c = self.config
        if c.cond_kind == "tokens" and (c.cfg_uncond_suffix is not None or c.cfg_negative_prompt):
            # Lumina: see null_prefix_mask; Emu3: null rows already hold the negative prompt
            table = self.tok_embeddings if c.shared_embeddings else self.text_embeddings
            return table(cond)
        if c.cond_kind == "tokens":  # Janus: null prompt = every token but BOS/BOI replaced by pad
            keep = jnp.isin(cond, jnp.asarray(c.cfg_keep_ids, jnp.int32)) if c.cfg_keep_ids else False
            table = self.tok_embeddings if c.shared_embeddings else self.text_embeddings
            return table(jnp.where(null[:, None] & ~keep, c.cfg_pad_id, cond))
        if c.text_conditional:
            feats = jnp.where(null[:, None, None], self.uncond_embedding[None].astype(cond.dtype), cond)
            h = self.cap_fc1(feats.astype(jnp.dtype(c.dtype)))
            return self.cap_fc2(nn.gelu(h, approximate=True))
        ids = jnp.where(null, c.num_classes, cond)
        return self.cls_embedding(ids)[:, None, :]

    def embed_tokens(self, tokens):
        return self.tok_embeddings(tokens)

    def __call__(self, x, cache: KVCache, offsets=None, tree_mask=None):
        """x: [B, T, D] input embeddings written at cache slots cache.length + [0, T) -> (logits [B, T, V] f32, cache).

        Token trees (static structure): ``offsets: [T]`` gives each slot's sequence position relative
        to ``cache.length`` (default ``arange(T)``, a chain) and ``tree_mask: [T, T]`` which earlier
        window slots each slot attends to (its ancestors and itself; slots are in topological order).
        """
        c = self.config
        T = x.shape[1]
        q_pos = cache.length[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]  # [B, T] cache slots
        seq_pos = q_pos if offsets is None else cache.length[:, None] + jnp.asarray(offsets, jnp.int32)[None]
        cos_t, sin_t = rope_table(c)
        rope_pos = seq_pos if c.rope_type == "2d" else seq_pos - _pads_before(cache.prefix_mask, seq_pos)
        idx = jnp.minimum(rope_pos, cos_t.shape[0] - 1)  # past-the-end positions: written nowhere, unused
        cos, sin = jnp.asarray(cos_t)[idx], jnp.asarray(sin_t)[idx]
        mask = kv.attention_mask(cache, q_pos)
        if tree_mask is not None:  # inside the window, only tree ancestors are visible
            rel = jnp.arange(cache.capacity)[None, :] - cache.length[:, None]  # [B, S]
            inside = (rel >= 0) & (rel < T)
            tm = jnp.asarray(tree_mask, bool)[:, jnp.clip(rel, 0, T - 1)]  # [T, B, S]
            mask = mask & (~inside[:, None, :] | jnp.moveaxis(tm, 1, 0))
        h = x.astype(jnp.dtype(c.dtype))
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            h, k_i, v_i = layer(h, cos, sin, cache.k[i], cache.v[i], q_pos, mask)
            ks.append(k_i)
            vs.append(v_i)
        h = self.norm(h)
        if c.head_hidden is not None:
            h = nn.gelu(self.head_proj(h), approximate=False)
        logits = shd.constrain(self.output(h).astype(jnp.float32), ("batch", None, "vocab"))
        return logits, cache.replace(k=tuple(ks), v=tuple(vs), length=cache.length + T)

    def init_all(self, cond, tokens):
        """Touches every parameter (used by ``init_params``)."""
        B = tokens.shape[0]
        x = jnp.concatenate([self.embed_cond(cond, jnp.zeros((B,), bool)), self.embed_tokens(tokens)], 1)
        return self(x, init_cache(self.config, B))


def pick_prompt(config: GPTConfig, cond: jax.Array, prefix_mask: jax.Array, null: jax.Array):
    """Negative-prompt models (Emu3): ids/mask ``[B, 2, C]`` -> each row's prompt (``null`` False)
    or negative prompt (``null`` True), ``[B, C]``; unchanged otherwise."""
    if not config.cfg_negative_prompt:
        return cond, prefix_mask
    return (jnp.where(null[:, None], cond[:, 1], cond[:, 0]),
            jnp.where(null[:, None], prefix_mask[:, 1], prefix_mask[:, 0]))


def null_prefix_mask(config: GPTConfig, prefix_mask: jax.Array, null: jax.Array) -> jax.Array:
    """The condition mask ``[B, C]`` with CFG-null rows (``null [B]``) reduced to their last
    ``cfg_uncond_suffix`` positions (Lumina-mGPT: the unconditional sequence starts at the image
    start token); unchanged for every other model."""
    k = config.cfg_uncond_suffix
    if k is None:
        return prefix_mask
    C = prefix_mask.shape[1]
    tail = jnp.arange(C) >= C - k
    return jnp.where(null[:, None], prefix_mask & tail[None, :], prefix_mask)


def _pads_before(prefix_mask: jax.Array, q_pos: jax.Array) -> jax.Array:
    """Padded condition slots before each query position: ``prefix_mask [B, C]``, ``q_pos [B, T]``."""
    C = prefix_mask.shape[1]
    pads = jnp.cumsum(~prefix_mask, axis=1, dtype=jnp.int32)  # [B, C] pads in [0, s]
    before = jnp.take_along_axis(pads, jnp.clip(q_pos - 1, 0, C - 1), axis=1)
    return jnp.where(q_pos > 0, before, 0)


# ---- pure functional API -----------------------------------------------------------------------

def _dummy_cond(config: GPTConfig, batch: int):
    if config.cond_kind == "tokens":
        return jnp.zeros((batch, config.cls_token_num), jnp.int32)
    if config.text_conditional:
        return jnp.zeros((batch, config.cls_token_num, config.caption_dim), jnp.float32)
    return jnp.zeros((batch,), jnp.int32)


def init_params(config: GPTConfig, key: jax.Array):
    """Random parameters (normal(0.02) weights, unit norms) as a plain pytree ``{"params": ...}``."""
    tokens = jnp.zeros((1, max(config.num_image_tokens - 1, 1)), jnp.int32)
    return jax.jit(lambda k: GPT(config).init(k, _dummy_cond(config, 1), tokens,
                                               method=GPT.init_all))(key)


def abstract_params(config: GPTConfig):
    """Param shapes/dtypes without allocating (``jax.ShapeDtypeStruct`` pytree)."""
    return jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))


def param_count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def _with_mask(cond, key: str):
    """``x``, ``(x, mask)``, a NamedTuple or ``{key: x, "mask": mask}`` -> (x, mask [B, C] bool; all True if absent)."""
    if isinstance(cond, dict):
        x, mask = cond[key], cond.get("mask")
    elif isinstance(cond, (tuple, list)):
        x, mask = cond
    else:
        x, mask = cond, None
    x = jnp.asarray(x)
    return x, jnp.ones(x.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)


def split_cond(config: GPTConfig, cond):
    """Normalise ``cond`` to (array, prefix_mask [B, C] bool).

    Caption models take features ``[B, C, caption_dim]``, ``Caption(features, mask)``, a
    ``(features, mask)`` tuple or ``{"features": ..., "mask": ...}``; prompt-token models take ids
    ``[B, C]``, ``Prompt(ids, mask)``, a tuple or ``{"ids": ..., "mask": ...}``; class models ids ``[B]``.
    """
    if config.cond_kind == "tokens":
        ids, mask = _with_mask(cond, "ids")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"prompt token ids must be integers, got dtype {ids.dtype}")
        if ids.ndim == 3 and mask.shape == ids.shape[:2]:  # no mask given: all real
            mask = jnp.ones(ids.shape, bool)
        return ids.astype(jnp.int32), mask
    if config.text_conditional:
        return _with_mask(cond, "features")
    ids = jnp.asarray(cond)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"class ids must be integers, got dtype {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"class-conditional cond must be class ids of shape [B], got {ids.shape}")
    return ids.astype(jnp.int32), jnp.ones((ids.shape[0], 1), bool)


def embed_cond(params, config: GPTConfig, cond, null):
    return GPT(config).apply(params, cond, null, method=GPT.embed_cond)


def embed_tokens(params, config: GPTConfig, tokens):
    return GPT(config).apply(params, tokens, method=GPT.embed_tokens)


def forward(params, config: GPTConfig, x, cache: KVCache, offsets=None, tree_mask=None):
    """One cached forward over ``x: [B, T, D]`` at each row's ``cache.length`` -> (logits, cache).

    ``offsets``/``tree_mask`` (static numpy arrays) turn the window into a token tree (see ``GPT``).
    """
    return GPT(config).apply(params, x, cache, offsets, tree_mask)


@functools.partial(jax.jit, static_argnums=(1, 6))
def teacher_forced(params, config, cond, prefix_mask, tokens, null, mesh=None):
    """``teacher_forced_logits`` without its checks and conversions, traceable (training losses):
    ``cond`` and ``prefix_mask`` as ``split_cond`` returns them, ``null`` ``[B]`` bool."""
    with shd.active(mesh):
        cond, prefix_mask = pick_prompt(config, cond, prefix_mask, null)
        x = jnp.concatenate([embed_cond(params, config, cond, null),
                             embed_tokens(params, config, tokens[:, : config.num_image_tokens - 1])], axis=1)
        cache = init_cache(config, tokens.shape[0], null_prefix_mask(config, prefix_mask, null))
        cache = cache.replace(k=tuple(shd.constrain(k, shd.KV_AXES) for k in cache.k),
                              v=tuple(shd.constrain(v, shd.KV_AXES) for v in cache.v))
        logits, _ = forward(params, config, x, cache)
        return logits[:, config.cls_token_num - 1:]


def teacher_forced_logits(params, config: GPTConfig, cond, tokens, mesh=None, null=None) -> jax.Array:
    """Raw logits ``[B, N, V]``: entry i predicts image token i from the condition and tokens < i.

    cond: class ids ``[B]`` (id ``num_classes`` = null class) or, for text-conditional models,
    caption features ``[B, C, caption_dim]`` or a ``Caption(features, mask)``.
    ``null``: optional ``[B]`` bool, rows that get the model's CFG null condition (the
    unconditional branch exactly as the sampler builds it).
    ``mesh``: compute on a device mesh (``sharding.RULES``; params moved there unless already).
    """
    from sjd_jax.core.validate import check_cond  # local: validate imports this module

    tokens = jnp.asarray(tokens, jnp.int32)
    N = config.num_image_tokens
    if tokens.ndim != 2 or tokens.shape[1] != N:
        raise ValueError(f"tokens must have shape [B, {N}], got {tuple(tokens.shape)}")
    cond_arr, prefix_mask = split_cond(config, cond)
    check_cond(config, cond_arr, prefix_mask, tokens.shape[0], allow_null=True)
    B = tokens.shape[0]
    null = np.zeros((B,), bool) if null is None else np.asarray(null)
    if null.shape != (B,) or null.dtype != bool:
        raise ValueError(f"null must be [{B}] bool, got {null.dtype} {null.shape}")
    if mesh is not None:
        params = shd.place_params(params, mesh)
        cond_arr, prefix_mask, tokens, null = (
            shd.to_global(x, shd.batch_sharding(mesh, x.shape, what)) for x, what in
            ((cond_arr, "cond"), (prefix_mask, "prefix mask"), (tokens, "tokens"), (null, "null rows")))
    return teacher_forced(params, config, cond_arr, prefix_mask, tokens, jnp.asarray(null), mesh)

"""T5 encoder in Flax (LlamaGen-T2I's caption encoder is flan-t5-xl's), used through pure ``apply``.

T5 (Raffel et al. 2020) as released: pre-norm blocks with a scale-only RMS layer norm (no mean
subtraction, no bias), attention without the 1/sqrt(d) scaling and without biases, a learned
relative-position bias (bidirectional log-spaced buckets) computed once in the first layer and
added in every layer, and a ReLU MLP or, for T5 v1.1 / flan-T5, a gated-GELU (tanh approximation)
MLP. Token embeddings are not scaled.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import from_dict

FF_KINDS = ("relu", "gated-gelu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 2048  # flan-t5-xl
    d_kv: int = 64
    d_ff: int = 5120
    num_layers: int = 24
    num_heads: int = 32
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    max_length: int = 120  # LlamaGen pads/truncates captions to 120 tokens
    pad_id: int = 0
    dtype: str = "float32"  # compute dtype (LlamaGen runs T5 in bf16 on GPU)

    def __post_init__(self):
        if self.feed_forward_proj not in FF_KINDS:
            raise ValueError(f"unsupported T5 feed_forward_proj {self.feed_forward_proj!r}; "
                             f"supported: {', '.join(FF_KINDS)}")
        if min(self.vocab_size, self.d_model, self.d_kv, self.d_ff, self.num_layers, self.num_heads,
               self.max_length) < 1:
            raise ValueError("T5Config sizes must be positive")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
            raise ValueError("relative_attention_num_buckets must be even and >= 4")

    @classmethod
    def from_dict(cls, d: dict) -> "T5Config":
        return from_dict(cls, d, "T5")


def relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets ``[q_len, k_len]`` of ``key_pos - query_pos``: half the buckets per
    sign; within a half, exact buckets for |d| < n/4, then log-spaced up to ``max_distance``."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    exact = half // 2
    # float32 like the reference implementations: the int truncation must land on the same bucket
    ratio = np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(exact)) / np.float32(
        np.log(max_distance / exact))
    large = exact + (ratio * np.float32(half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (out + np.where(dist < exact, dist, large)).astype(np.int32)


class RMSNorm(nn.Module):
    """T5LayerNorm: ``x * rsqrt(mean(x^2) + eps) * weight`` in float32."""

    eps: float

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * w).astype(x.dtype)


class Block(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, bias):
        """x: [B, L, D]; bias: [B, H, L, L] (relative position bias + key mask)."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dtype, name=name)  # noqa: E731
        B, L, _ = x.shape
        h = RMSNorm(c.layer_norm_epsilon, name="attn_norm")(x)
        inner = c.num_heads * c.d_kv
        q, k, v = (dense(inner, n)(h).reshape(B, L, c.num_heads, c.d_kv) for n in ("q", "k", "v"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias  # no 1/sqrt(d)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        a = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, L, inner)
        x = x + dense(c.d_model, "o")(a)
        h = RMSNorm(c.layer_norm_epsilon, name="ffn_norm")(x)
        if c.feed_forward_proj == "gated-gelu":
            h = nn.gelu(dense(c.d_ff, "wi_0")(h), approximate=True) * dense(c.d_ff, "wi_1")(h)
        else:
            h = nn.relu(dense(c.d_ff, "wi")(h))
        return x + dense(c.d_model, "wo")(h)


class T5Encoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, ids, mask):
        """ids, mask: [B, L] -> hidden states [B, L, d_model] (float32)."""
        c = self.config
        x = nn.Embed(c.vocab_size, c.d_model, dtype=jnp.dtype(c.dtype), name="embed")(ids)
        L = ids.shape[1]
        table = self.param("relative_attention_bias", nn.initializers.normal(1.0),
                           (c.relative_attention_num_buckets, c.num_heads))
        buckets = relative_buckets(L, L, c.relative_attention_num_buckets, c.relative_attention_max_distance)
        bias = jnp.transpose(table[buckets], (2, 0, 1))[None].astype(jnp.float32)  # [1, H, L, L]
        bias = bias + jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
        for i in range(c.num_layers):
            x = Block(c, name=f"layers_{i}")(x, bias)
        return RMSNorm(c.layer_norm_epsilon, name="final_norm")(x).astype(jnp.float32)


def init_t5_params(config: T5Config, key: jax.Array):
    ids = jnp.zeros((1, 4), jnp.int32)
    return jax.jit(lambda k: T5Encoder(config).init(k, ids, jnp.ones((1, 4), bool)))(key)


def abstract_t5_params(config: T5Config):
    return jax.eval_shape(lambda k: init_t5_params(config, k), jax.random.key(0))


_encode = jax.jit(lambda params, ids, mask, config: T5Encoder(config).apply(params, ids, mask),
                  static_argnums=3)


def encode(params, config: T5Config, ids, mask) -> jax.Array:
    """Token ids ``[B, L]`` with validity mask ``[B, L]`` -> encoder hidden states ``[B, L, d_model]``."""
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"ids and mask must both be [B, L], got {ids.shape} and {mask.shape}")
    return _encode(params, ids, mask, config)


# ---- tokenization and LlamaGen's caption layout ---------------------------------------------

def load_tokenizer(path):
    """A T5 ``tokenizer.json`` (``tokenizers``; no sentencepiece, no torch)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from e


def tokenize(tokenizer, texts: list[str], config: T5Config):
    """Texts -> (ids [B, L], mask [B, L]) with ``L = config.max_length``: the tokenizer's own post
    processing (T5 appends ``</s>``), truncated to L, right-padded with ``pad_id`` — what LlamaGen's
    ``padding='max_length', truncation=True`` call gives."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    L = config.max_length
    tok = tokenizer  # truncation/padding are set for this call, then the tokenizer's own come back
    before_trunc, before_pad = tok.truncation, tok.padding
    tok.enable_truncation(L)
    tok.enable_padding(length=L, pad_id=config.pad_id, direction="right")
    try:
        enc = tok.encode_batch(list(texts))
    finally:
        tok.no_truncation()
        tok.no_padding()
        if before_trunc:
            tok.enable_truncation(**before_trunc)
        if before_pad:
            tok.enable_padding(**before_pad)
    ids = np.asarray([e.ids for e in enc], np.int32)
    mask = np.asarray([e.attention_mask for e in enc], bool)
    return ids, mask


def left_pad_captions(features, mask):
    """LlamaGen's caption layout: each row's valid tokens rotated to the end, the mask flipped to
    match and padded features zeroed. features ``[B, L, D]``, mask ``[B, L]`` (right-padded)."""
    features, mask = jnp.asarray(features), jnp.asarray(mask, bool)
    L = mask.shape[1]
    n = jnp.sum(mask, axis=1)  # valid tokens per row
    idx = (jnp.arange(L)[None, :] + n[:, None]) % L  # new[j] = old[(j + n) % L]
    feats = jnp.take_along_axis(features, idx[..., None], axis=1)
    new_mask = jnp.arange(L)[None, :] >= (L - n)[:, None]
    return feats * new_mask[..., None].astype(feats.dtype), new_mask


def caption_features(params, config: T5Config, tokenizer, texts: list[str]):
    """Texts -> LlamaGen-T2I condition ``(features [B, L, d_model], mask [B, L])``, left-padded."""
    ids, mask = tokenize(tokenizer, texts, config)
    return left_pad_captions(encode(params, config, ids, mask), mask)

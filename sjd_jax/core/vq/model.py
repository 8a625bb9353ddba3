"""LlamaGen's VQ image tokenizer (VQ-16 / VQ-8 family) in Flax linen, NHWC.

decode: indices ``[B, h*w]`` -> l2-normalised codebook vectors -> post_quant_conv -> decoder ->
pixels ``[B, H, W, 3]`` in about [-1, 1]. encode: pixels -> encoder -> quant_conv -> l2-normalised
nearest codebook entry -> indices ``[B, h*w]``. Module names follow LlamaGen's state dict
(``conv_blocks_i/res_j``, ``mid_0..2``) so the converter's name table stays one-to-one.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import MAX_VOCAB


@dataclasses.dataclass(frozen=True)
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    in_channels: int = 3
    out_channels: int = 3
    norm_groups: int = 32
    codebook_l2_norm: bool = True
    # Resolution levels with attention blocks (0 = full resolution, the encoder's first level), in
    # encoder and decoder alike. None: LlamaGen's layout, the lowest resolution only. taming /
    # Chameleon's VQGAN with ``attn_resolutions: []``: () (attention only in the middle blocks).
    attn_levels: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        sizes = dict(ch=self.ch, codebook_embed_dim=self.codebook_embed_dim, in_channels=self.in_channels,
                     out_channels=self.out_channels, norm_groups=self.norm_groups, z_channels=self.z_channels,
                     levels=len(self.ch_mult), ch_mult=min(self.ch_mult, default=0))
        bad = [k for k, v in sizes.items() if v < 1]
        if bad or self.num_res_blocks < 0 or self.codebook_size > MAX_VOCAB or len(self.ch_mult) > 12:
            raise ValueError(f"invalid VQConfig: {', '.join(bad) or 'sizes'} out of range "
                             f"(positive sizes, at most 12 levels and {MAX_VOCAB} codes)")
        if self.attn_levels is not None:
            object.__setattr__(self, "attn_levels", tuple(int(i) for i in self.attn_levels))
            if any(not 0 <= i < len(self.ch_mult) for i in self.attn_levels):
                raise ValueError(f"invalid VQConfig: attn_levels {self.attn_levels} outside 0..{len(self.ch_mult) - 1}")
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % self.norm_groups]
        if bad or self.z_channels < 1 or self.codebook_size < 2:
            raise ValueError(f"invalid VQConfig: channels {bad} not divisible by {self.norm_groups} groups"
                             if bad else "invalid VQConfig: sizes must be positive")

    @property
    def attn_at(self) -> tuple[int, ...]:
        return (len(self.ch_mult) - 1,) if self.attn_levels is None else self.attn_levels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def preset(cls, name: str, **overrides) -> "VQConfig":
        mults = {"VQ-16": (1, 1, 2, 2, 4), "VQ-8": (1, 2, 2, 4)}
        if name.upper() not in mults:
            raise ValueError(f"unknown VQ preset {name!r}; choose one of {', '.join(mults)}")
        return cls(ch_mult=mults[name.upper()], **overrides)


def _conv(features, k, name, stride=1, padding=None):
    pad = ((k // 2, k // 2),) * 2 if padding is None else padding
    return nn.Conv(features, (k, k), strides=(stride, stride), padding=pad, name=name)


def _norm(groups, name):
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, name=name)


class ResnetBlock(nn.Module):
    out_ch: int
    groups: int

    @nn.compact
    def __call__(self, x):
        h = _conv(self.out_ch, 3, "conv1")(nn.swish(_norm(self.groups, "norm1")(x)))
        h = _conv(self.out_ch, 3, "conv2")(nn.swish(_norm(self.groups, "norm2")(h)))
        if x.shape[-1] != self.out_ch:
            x = _conv(self.out_ch, 1, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    groups: int

    @nn.compact
    def __call__(self, x):  # x: [B, H, W, C], one head over the H*W positions
        B, H, W, C = x.shape
        h = _norm(self.groups, "norm")(x)
        q, k, v = (_conv(C, 1, n)(h).reshape(B, H * W, C) for n in ("q", "k", "v"))
        w = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / np.sqrt(C), axis=-1)
        return x + _conv(C, 1, "proj_out")(jnp.einsum("bij,bjc->bic", w, v).reshape(B, H, W, C))


class Encoder(nn.Module):
    config: VQConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = _conv(c.ch, 3, "conv_in")(x)
        last = len(c.ch_mult) - 1
        for i, mult in enumerate(c.ch_mult):
            for j in range(c.num_res_blocks):
                h = ResnetBlock(c.ch * mult, c.norm_groups, name=f"conv_blocks_{i}_res_{j}")(h)
                if i in c.attn_at:
                    h = AttnBlock(c.norm_groups, name=f"conv_blocks_{i}_attn_{j}")(h)
            if i != last:  # pad right/bottom by one, then a VALID stride-2 conv
                h = _conv(h.shape[-1], 3, f"conv_blocks_{i}_downsample", 2, ((0, 1), (0, 1)))(h)
        ch = h.shape[-1]
        h = ResnetBlock(ch, c.norm_groups, name="mid_0")(h)
        h = AttnBlock(c.norm_groups, name="mid_1")(h)
        h = ResnetBlock(ch, c.norm_groups, name="mid_2")(h)
        return _conv(c.z_channels, 3, "conv_out")(nn.swish(_norm(c.norm_groups, "norm_out")(h)))


class Decoder(nn.Module):
    config: VQConfig

    @nn.compact
    def __call__(self, z):
        c = self.config
        ch = c.ch * c.ch_mult[-1]
        h = _conv(ch, 3, "conv_in")(z)
        h = ResnetBlock(ch, c.norm_groups, name="mid_0")(h)
        h = AttnBlock(c.norm_groups, name="mid_1")(h)
        h = ResnetBlock(ch, c.norm_groups, name="mid_2")(h)
        n = len(c.ch_mult)
        for i in range(n):  # lowest resolution first
            for j in range(c.num_res_blocks + 1):
                h = ResnetBlock(c.ch * c.ch_mult[n - 1 - i], c.norm_groups, name=f"conv_blocks_{i}_res_{j}")(h)
                if n - 1 - i in c.attn_at:
                    h = AttnBlock(c.norm_groups, name=f"conv_blocks_{i}_attn_{j}")(h)
            if i != n - 1:  # nearest x2, then conv
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = _conv(h.shape[-1], 3, f"conv_blocks_{i}_upsample")(h)
        return _conv(c.out_channels, 3, "conv_out")(nn.swish(_norm(c.norm_groups, "norm_out")(h)))


class VQModel(nn.Module):
    config: VQConfig

    def setup(self):
        c = self.config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv(c.codebook_embed_dim, (1, 1))
        self.post_quant_conv = nn.Conv(c.z_channels, (1, 1))
        self.codebook = self.param("codebook", nn.initializers.uniform(1.0 / c.codebook_size),
                                   (c.codebook_size, c.codebook_embed_dim))

    def _codebook(self):
        e = self.codebook
        if self.config.codebook_l2_norm:
            e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        return e

    def encode(self, x):
        """x: [B, H, W, C] in [-1, 1] -> indices [B, h*w] int32 (row-major grid)."""
        z = self.quant_conv(self.encoder(x))
        B, h, w, D = z.shape
        z = z.reshape(B, h * w, D)
        if self.config.codebook_l2_norm:
            z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        e = self._codebook()
        d = jnp.sum(z ** 2, -1, keepdims=True) + jnp.sum(e ** 2, -1) - 2 * z @ e.T
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def quantize_train(self, x):
        """Training forward: (reconstruction, codebook loss, commitment loss, indices [B, h*w]).

        Straight-through quantisation on l2-normalised latents and codes (LlamaGen's VQ losses:
        ``|sg(z) - e|^2`` moves the codes, ``|z - sg(e)|^2`` the encoder; the caller weights them).
        """
        z = self.quant_conv(self.encoder(x))
        B, h, w, D = z.shape
        if self.config.codebook_l2_norm:
            z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        e = self._codebook()
        d = jnp.sum(z ** 2, -1, keepdims=True) + jnp.sum(e ** 2, -1) - 2 * jnp.einsum("bhwd,kd->bhwk", z, e)
        idx = jnp.argmin(d, axis=-1)
        zq = e[idx]
        codebook_loss = jnp.mean((zq - jax.lax.stop_gradient(z)) ** 2)
        commit_loss = jnp.mean((jax.lax.stop_gradient(zq) - z) ** 2)
        zq = z + jax.lax.stop_gradient(zq - z)
        recon = self.decoder(self.post_quant_conv(zq))
        return recon, codebook_loss, commit_loss, idx.reshape(B, h * w).astype(jnp.int32)

    def decode(self, indices, grid):
        """indices: [B, h*w] -> pixels [B, h*f, w*f, out_channels] (f = downsample factor)."""
        h, w = grid
        z = self._codebook()[indices].reshape(indices.shape[0], h, w, -1)
        return self.decoder(self.post_quant_conv(z))

    def __call__(self, x):
        return self.decode(self.encode(x), (x.shape[1] // self.config.downsample,
                                            x.shape[2] // self.config.downsample))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(config: VQConfig, key, image_size: int):  # one compile per (config, size), not per call
    return VQModel(config).init(key, jnp.zeros((1, image_size, image_size, config.in_channels)))


def init_vq_params(config: VQConfig, key, image_size: int = 32):
    return _init(config, key, int(image_size))


def abstract_vq_params(config: VQConfig):
    """Param shapes/dtypes without allocating (``jax.ShapeDtypeStruct`` pytree)."""
    return jax.eval_shape(lambda k: init_vq_params(config, k), jax.random.key(0))


@functools.partial(jax.jit, static_argnums=(1, 3))
def decode_tokens(params, config: VQConfig, indices, grid):
    """Image tokens ``[B, h*w]`` -> pixels ``[B, H, W, 3]`` float32 in about [-1, 1]."""
    return VQModel(config).apply(params, indices, tuple(grid), method=VQModel.decode)


def codebook_vectors(params, config: VQConfig) -> np.ndarray:
    """The code vectors the decoder sees, ``[codebook_size, embed_dim]`` (l2-normalised if the VQ is)."""
    e = np.asarray(params["params"]["codebook"], np.float32)
    if config.codebook_l2_norm:
        e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return e


@functools.partial(jax.jit, static_argnums=1)
def encode_images(params, config: VQConfig, images):
    """Pixels ``[B, H, W, 3]`` in [-1, 1] -> image tokens ``[B, h*w]`` int32."""
    return VQModel(config).apply(params, images, method=VQModel.encode)


def to_uint8(images) -> np.ndarray:
    """[-1, 1] floats -> uint8, clamped and rounded as torchvision's save_image(normalize, (-1, 1))."""
    x = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return (x * 255.0 + 0.5).astype(np.uint8)

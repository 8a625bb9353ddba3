"""Emu3's vision tokenizer (Emu3-VisionTokenizer / HF ``Emu3VQVAE``): the decoder in Flax linen.

Decode of codes ``[B, t, h, w]`` (an image is t = 1):

1. ``quant`` = codebook rows (no l2 norm); ``post_quant_conv`` = causal Conv3d (3, 1, 1) -> ``z``.
2. ``[z; quant]`` stacked on the batch axis runs the temporal stack: ``num_res_blocks`` temporal
   resnet blocks (BatchNorm3d with running stats, causal Conv3d 3x3x3), then
   ``log2(temporal_downsample)`` temporal upsamplers (nearest x2 in time, causal Conv3d, swish).
   The two halves are split back into ``h`` and ``zq`` (t * temporal_downsample frames each).
3. A per-frame 2D decoder runs on ``h`` with every norm a SpatialNorm conditioned on ``zq``:
   GroupNorm(x) * conv_y(zq resized nearest) + conv_b(zq resized).

Causal Conv3d: the time axis is front-padded by 2 frames of zeros (for any temporal kernel size, as
HF), the spatial axes by ``(p // 2 + p % 2, p // 2)`` with ``p = k - 1``. Layout is NTHWC (5D) /
NHWC (2D). Since the temporal stack is causal and the 2D decoder works per frame, an image decode
(frame 0 of the 4-frame clip, which is what HF ``Emu3VQVAE.decode`` returns for ``[B, h, w]``
codes) only sends frame 0 through the (expensive) 2D decoder.

Params are the usual flax pytree ``{"params": ..., "batch_stats": ...}``: the BatchNorm running
means / variances live under ``batch_stats`` (``mean`` / ``var``), everything else under ``params``.
Module names follow the original BAAI state dict (``decoder/up_I_block_J`` is ``decoder.up.I.block.J``,
``I`` being the resolution level with 0 = full resolution, run from the lowest resolution up).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import from_dict

BATCHNORM_EPS = 1e-5  # torch.nn.BatchNorm3d default (HF / BAAI leave it)
GROUPNORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Emu3VQConfig:
    codebook_size: int = 32768
    embed_dim: int = 4
    z_channels: int = 4  # HF latent_channels
    ch: int = 256  # HF base_channels
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)  # HF channel_multiplier
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (3,)  # HF / BAAI attn_resolutions: level indices (0 = full resolution)
    temporal_downsample: int = 4  # HF / BAAI temporal_downsample_factor
    norm_groups: int = 32
    out_channels: int = 3
    attn_heads: int = 1  # HF num_attention_heads (the BAAI checkpoint: 1)

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_levels", tuple(int(i) for i in self.attn_levels))
        if any(not 0 <= i < len(self.ch_mult) for i in self.attn_levels):
            raise ValueError(f"invalid Emu3VQConfig: attn_levels {self.attn_levels} outside 0..{len(self.ch_mult) - 1}")
        chans = [self.ch * m for m in self.ch_mult]
        if any(c % self.norm_groups for c in chans):
            raise ValueError(f"invalid Emu3VQConfig: channels {chans} not all divisible by {self.norm_groups} groups")
        if any(self.ch * self.ch_mult[i] % self.attn_heads for i in self.attn_levels) or \
                self.ch * self.ch_mult[-1] % self.attn_heads:
            raise ValueError(f"invalid Emu3VQConfig: attention channels not divisible by {self.attn_heads} heads")
        if self.z_channels != self.embed_dim:  # HF/BAAI stack z and quant on the batch axis
            raise ValueError(f"invalid Emu3VQConfig: z_channels {self.z_channels} != embed_dim {self.embed_dim}")
        t = self.temporal_downsample
        if t < 1 or t & (t - 1):
            raise ValueError(f"invalid Emu3VQConfig: temporal_downsample {t} is not a power of 2")
        if self.codebook_size < 2 or self.num_res_blocks < 1:
            raise ValueError("invalid Emu3VQConfig: sizes must be positive")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ch_mult"], d["attn_levels"] = list(self.ch_mult), list(self.attn_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Emu3VQConfig":
        return from_dict(cls, d, "Emu3 VQ")


def _conv2d(features, k, name):
    return nn.Conv(features, (k, k), padding=((k // 2, k // 2),) * 2, name=name)


def _causal_conv3d(features, kernel, name):
    spatial = [((k - 1) // 2 + (k - 1) % 2, (k - 1) // 2) for k in kernel[1:]]
    return nn.Conv(features, tuple(kernel), padding=[(2, 0), *spatial], name=name)


def _nearest(x, size):
    """torch ``F.interpolate(mode="nearest", size=size)`` on NHWC: src = floor(dst * in / out)."""
    for axis, out in ((1, size[0]), (2, size[1])):
        n = x.shape[axis]
        if n != out:
            idx = np.minimum(np.floor(np.arange(out) * (n / out)).astype(np.int64), n - 1)
            x = jnp.take(x, idx, axis=axis)
    return x


class SpatialNorm(nn.Module):
    groups: int

    @nn.compact
    def __call__(self, x, zq):
        C = x.shape[-1]
        h = nn.GroupNorm(num_groups=self.groups, epsilon=GROUPNORM_EPS, name="norm_layer")(x)
        # the 1x1 convs commute with the nearest resize: run them at the code resolution
        y = _nearest(nn.Conv(C, (1, 1), name="conv_y")(zq), x.shape[1:3])
        b = _nearest(nn.Conv(C, (1, 1), name="conv_b")(zq), x.shape[1:3])
        return h * y + b


class ResnetBlock(nn.Module):
    out_ch: int
    groups: int

    @nn.compact
    def __call__(self, x, zq):
        h = _conv2d(self.out_ch, 3, "conv1")(nn.swish(SpatialNorm(self.groups, name="norm1")(x, zq)))
        h = _conv2d(self.out_ch, 3, "conv2")(nn.swish(SpatialNorm(self.groups, name="norm2")(h, zq)))
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    groups: int
    heads: int

    @nn.compact
    def __call__(self, x, zq):  # x: [N, H, W, C]
        N, H, W, C = x.shape
        d = C // self.heads
        h = SpatialNorm(self.groups, name="norm")(x, zq).reshape(N, H * W, C)
        q, k, v = (nn.Dense(C, name=n)(h).reshape(N, H * W, self.heads, d) for n in ("q", "k", "v"))
        w = jax.nn.softmax(jnp.einsum("bihd,bjhd->bhij", q, k) * (d ** -0.5), axis=-1)
        o = jnp.einsum("bhij,bjhd->bihd", w, v).reshape(N, H * W, C)
        return x + nn.Dense(C, name="proj_out")(o).reshape(N, H, W, C)


class TemporalResnetBlock(nn.Module):
    out_ch: int

    @nn.compact
    def __call__(self, x):  # [N, T, H, W, C]
        def bn(name):
            return nn.BatchNorm(use_running_average=True, epsilon=BATCHNORM_EPS, name=name)

        h = _causal_conv3d(self.out_ch, (3, 3, 3), "conv1")(nn.swish(bn("norm1")(x)))
        h = _causal_conv3d(self.out_ch, (3, 3, 3), "conv2")(nn.swish(bn("norm2")(h)))
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1, 1), name="nin_shortcut")(x)
        return x + h


class Decoder(nn.Module):
    config: Emu3VQConfig

    @nn.compact
    def __call__(self, z, quant, frames=None):
        """z, quant: [B, t, h, w, C] -> [B, F, 8h, 8w, out] for the output frames ``frames``
        (a slice / index array over the t * temporal_downsample frames; None = all)."""
        c = self.config
        B = z.shape[0]
        x = jnp.concatenate([z, quant], axis=0)
        for i in range(c.num_res_blocks):
            x = TemporalResnetBlock(c.z_channels, name=f"time_res_stack_{i}")(x)
        for i in range(int(math.log2(c.temporal_downsample))):
            x = jnp.repeat(x, 2, axis=1)  # nearest x2 in time
            x = nn.swish(_causal_conv3d(c.z_channels, (3, 3, 3), f"time_conv_{i}")(x))
        if frames is not None:  # the 2D decoder is per frame: run only the frames asked for
            x = x[:, frames]
        T = x.shape[1]
        h, zq = x[:B].reshape(B * T, *x.shape[2:]), x[B:].reshape(B * T, *x.shape[2:])

        g = c.norm_groups
        ch = c.ch * c.ch_mult[-1]
        h = _conv2d(ch, 3, "conv_in")(h)
        h = ResnetBlock(ch, g, name="mid_block_1")(h, zq)
        h = AttnBlock(g, c.attn_heads, name="mid_attn_1")(h, zq)
        h = ResnetBlock(ch, g, name="mid_block_2")(h, zq)
        for level in reversed(range(len(c.ch_mult))):  # lowest resolution first
            for j in range(c.num_res_blocks + 1):
                h = ResnetBlock(c.ch * c.ch_mult[level], g, name=f"up_{level}_block_{j}")(h, zq)
                if level in c.attn_levels:
                    h = AttnBlock(g, c.attn_heads, name=f"up_{level}_attn_{j}")(h, zq)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = _conv2d(h.shape[-1], 3, f"up_{level}_upsample")(h)
        h = nn.swish(SpatialNorm(g, name="norm_out")(h, zq))
        h = _conv2d(c.out_channels, 3, "conv_out")(h)
        return h.reshape(B, T, *h.shape[1:])


class Emu3VQ(nn.Module):
    config: Emu3VQConfig

    def setup(self):
        c = self.config
        self.codebook = self.param("codebook", nn.initializers.normal(1.0), (c.codebook_size, c.embed_dim))
        self.post_quant_conv = _causal_conv3d(c.z_channels, (3, 1, 1), "post_quant_conv")
        self.decoder = Decoder(c)

    def decode(self, codes, frames=None):
        """codes: [B, t, h, w] int -> video [B, F, 8h, 8w, out_channels] (F = t * temporal_downsample,
        or the frames selected by ``frames``)."""
        quant = self.codebook[codes]  # [B, t, h, w, E]
        return self.decoder(self.post_quant_conv(quant), quant, frames)

    def __call__(self, codes):
        return self.decode(codes)


def init_emu3_vq_params(config: Emu3VQConfig, key, grid=(2, 2)):
    """Random ``{"params": ..., "batch_stats": ...}`` (BatchNorm stats: mean 0, var 1)."""
    codes = jnp.zeros((1, 1, *grid), jnp.int32)
    return jax.jit(lambda k: Emu3VQ(config).init(k, codes, method=Emu3VQ.decode))(key)


def abstract_emu3_vq_params(config: Emu3VQConfig):
    """Param shapes/dtypes without allocating (``jax.ShapeDtypeStruct`` pytree)."""
    return jax.eval_shape(lambda k: init_emu3_vq_params(config, k), jax.random.key(0))


@functools.partial(jax.jit, static_argnums=(1, 3))
def decode_codes(params, config: Emu3VQConfig, codes, grid):
    """Image tokens ``[B, h*w]`` (row-major grid ``(h, w)``) -> pixels ``[B, 8h, 8w, 3]`` float32 in
    about [-1, 1]: frame 0 of the decoded clip, as HF ``Emu3VQVAE.decode`` for ``[B, h, w]`` codes."""
    h, w = grid
    codes = jnp.asarray(codes).reshape(codes.shape[0], 1, h, w)
    video = Emu3VQ(config).apply(params, codes, slice(0, 1), method=Emu3VQ.decode)
    return video[:, 0].astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=1)
def decode_video(params, config: Emu3VQConfig, codes):
    """Codes ``[B, t, h, w]`` -> all ``t * temporal_downsample`` frames ``[B, F, 8h, 8w, 3]`` float32."""
    return Emu3VQ(config).apply(params, codes, method=Emu3VQ.decode).astype(jnp.float32)

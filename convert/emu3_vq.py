"""Emu3 vision tokenizer (BAAI Emu3-VisionTokenizer or HF ``Emu3VQVAE``) -> sjd-jax decoder params.

Accepts the original BAAI names, HF v5 names, and HF names under ``model.vqmodel.`` (a full
``Emu3ForConditionalGeneration`` checkpoint; other ``model.*`` / ``lm_head.*`` tensors of such a file
must be filtered by the caller). HF names are first mapped back to BAAI names, then to flax paths.
The encoder (``encoder.*``, ``quant_conv.*``) and BatchNorm ``num_batches_tracked`` counters are
skipped; anything else must fill the decoder exactly (unused keys, unfilled params and shape
mismatches raise ``ValueError``).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from sjd_jax.core.vq.emu3 import Emu3VQConfig, abstract_emu3_vq_params

from sjd_jax.convert.tree import assign

HF_PREFIX = "model.vqmodel."

# HF v5 -> BAAI (inverse of the HF conversion renames), applied in order
_HF_TO_ORIGINAL = [
    (r"^encoder\.down_block\.down\.", "encoder.down."),
    (r"^decoder\.up_block\.up\.", "decoder.up."),
    (r"^(encoder|decoder)\.middle_block\.attn_norm\.", r"\1.mid.attn_1.norm."),
    (r"^(encoder|decoder)\.middle_block\.", r"\1.mid."),
    (r"\.attn_norms\.(\d+)\.", r".attn.\1.norm."),
    (r"\.(attn_1|attn\.\d+)\.(q|k|v)_proj\.", r".\1.\2."),
    (r"\.(attn_1|attn\.\d+)\.out_proj\.", r".\1.proj_out."),
]

# BAAI -> flax module path (dots), applied in order
_ORIGINAL_TO_FLAX = [
    (r"^post_quant_conv\.conv\.", "post_quant_conv."),
    (r"^decoder\.time_res_stack\.(\d+)\.(conv\d)\.conv\.", r"decoder.time_res_stack_\1.\2."),
    (r"^decoder\.time_res_stack\.(\d+)\.", r"decoder.time_res_stack_\1."),
    (r"^decoder\.time_conv\.(\d+)\.conv\.conv\.", r"decoder.time_conv_\1."),
    (r"^decoder\.mid\.(block_1|attn_1|block_2)\.", r"decoder.mid_\1."),
    (r"^decoder\.up\.(\d+)\.(block|attn)\.(\d+)\.", r"decoder.up_\1_\2_\3."),
    (r"^decoder\.up\.(\d+)\.upsample\.conv\.", r"decoder.up_\1_upsample."),
]

_ATTN_PROJ = ("q", "k", "v", "proj_out")
_BN_STATS = {"running_mean": "mean", "running_var": "var"}


def hf_to_original_key(key: str) -> str:
    if key.startswith(HF_PREFIX):
        key = key[len(HF_PREFIX):]
    for pat, rep in _HF_TO_ORIGINAL:
        key = re.sub(pat, rep, key)
    return key


def skipped(key: str) -> bool:
    """Encoder-side and bookkeeping tensors that the decoder does not use (key: BAAI name)."""
    return (key.startswith(("encoder.", "quant_conv.")) or key.endswith(".num_batches_tracked"))


def flax_path(key: str, x: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """BAAI name + tensor -> (path in ``{"params", "batch_stats"}``, re-laid-out array)."""
    if key == "quantize.embedding.weight":
        return ("params", "codebook"), x
    for pat, rep in _ORIGINAL_TO_FLAX:
        key = re.sub(pat, rep, key)
    *mod, leaf = key.split(".")
    if leaf in _BN_STATS:
        return ("batch_stats", *mod, _BN_STATS[leaf]), x
    if leaf == "weight":
        if mod and mod[-1] in _ATTN_PROJ and x.ndim in (2, 4):  # Linear (out, in) or 1x1 conv (out, in, 1, 1)
            if x.ndim == 4:
                if x.shape[2:] != (1, 1):
                    raise ValueError(f"{key}: attention projection is not 1x1 ({x.shape})")
                x = x[:, :, 0, 0]
            return ("params", *mod, "kernel"), x.T
        if x.ndim == 5:  # Conv3d (O, I, kt, kh, kw) -> (kt, kh, kw, I, O)
            return ("params", *mod, "kernel"), x.transpose(2, 3, 4, 1, 0)
        if x.ndim == 4:  # Conv2d (O, I, kh, kw) -> (kh, kw, I, O)
            return ("params", *mod, "kernel"), x.transpose(2, 3, 1, 0)
        if x.ndim == 1:  # GroupNorm / BatchNorm affine
            return ("params", *mod, "scale"), x
    return ("params", *mod, leaf), x


def _get(d: dict, *names, default=None):
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def emu3_vq_config(cfg: dict) -> Emu3VQConfig:
    """BAAI Emu3-VisionTokenizer ``config.json`` (ch, ch_mult, z_channels, ...) or HF
    ``Emu3VQVAEConfig.to_dict()`` (base_channels, channel_multiplier, latent_channels, ...) ->
    Emu3VQConfig. A full HF ``Emu3Config`` dict is also accepted (its ``vq_config`` is used)."""
    if isinstance(cfg.get("vq_config"), dict):
        cfg = cfg["vq_config"]
    if cfg.get("double_z") or cfg.get("double_latent"):
        raise ValueError("Emu3 VQ config with double_z / double_latent is not supported")
    ch_mult = _get(cfg, "ch_mult", "channel_multiplier", default=(1, 2, 2, 4))
    attn = _get(cfg, "attn_resolutions", default=(len(ch_mult) - 1,))
    return Emu3VQConfig(
        codebook_size=int(_get(cfg, "codebook_size", default=32768)),
        embed_dim=int(_get(cfg, "embed_dim", default=4)),
        z_channels=int(_get(cfg, "z_channels", "latent_channels", default=4)),
        ch=int(_get(cfg, "ch", "base_channels", default=256)),
        ch_mult=tuple(ch_mult),
        num_res_blocks=int(_get(cfg, "num_res_blocks", default=2)),
        attn_levels=tuple(attn),
        temporal_downsample=int(_get(cfg, "temporal_downsample_factor", "temporal_downsample", default=4)),
        out_channels=int(_get(cfg, "out_channels", default=3)),
        attn_heads=int(_get(cfg, "num_attention_heads", "attn_heads", default=1)),
    )


def emu3_vq_params(tensors: dict, config: Emu3VQConfig, to_numpy: Callable = np.asarray, place=None) -> dict:
    """``{name: tensor}`` (BAAI names, HF names, or HF names under ``model.vqmodel.``) ->
    ``{"params": ..., "batch_stats": ...}`` for :mod:`sjd_jax.core.vq.emu3` (strict)."""
    keys = {n: hf_to_original_key(n) for n in tensors}
    names = [n for n, k in keys.items() if not skipped(k)]
    stream = ((n, to_numpy(tensors[n])) for n in names)
    return assign(stream, abstract_emu3_vq_params(config),
                  lambda name, arr: flax_path(keys[name], np.asarray(arr)), "Emu3 VQ", place)

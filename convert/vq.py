"""LlamaGen VQ (and Janus-Pro's copy of it) state dict -> sjd-jax VQ params.

Explicit name rules plus per-tensor transforms; fails loudly on any unused key, unfilled param or
shape mismatch. Works on numpy arrays, so safetensors files need no torch.
"""

from __future__ import annotations

import re

import numpy as np

from sjd_jax.core.vq import VQConfig, abstract_vq_params

from sjd_jax.convert.tree import assign

IGNORED = ("quantize.codebook_used",)  # a training-time usage counter (buffer), not a weight

# Janus-Pro / HF JanusVQVAE names -> LlamaGen names (Janus' up[0] is also the lowest resolution).
_JANUS_RULES = [
    (r"^(encoder)\.down\.(\d+)\.block\.(\d+)\.", r"\1.conv_blocks.\2.res.\3."),
    (r"^(decoder)\.up\.(\d+)\.block\.(\d+)\.", r"\1.conv_blocks.\2.res.\3."),
    (r"^(encoder)\.down\.(\d+)\.(attn|downsample)\.", r"\1.conv_blocks.\2.\3."),
    (r"^(decoder)\.up\.(\d+)\.(attn|upsample)\.", r"\1.conv_blocks.\2.\3."),
    (r"\.mid\.block_1\.", ".mid.0."), (r"\.mid\.attn_1\.", ".mid.1."), (r"\.mid\.block_2\.", ".mid.2."),
]

_MODULE_RULES = [
    (r"conv_blocks\.(\d+)\.(res|attn)\.(\d+)\.", r"conv_blocks_\1_\2_\3."),
    (r"conv_blocks\.(\d+)\.(downsample|upsample)\.conv\.", r"conv_blocks_\1_\2."),
    (r"mid\.(\d+)\.", r"mid_\1."),
]


def janus_to_llamagen_key(key: str) -> str:
    for pat, rep in _JANUS_RULES:
        key = re.sub(pat, rep, key)
    return key


def taming_to_llamagen_key(key: str, levels: int) -> str:
    """taming-transformers names (Chameleon's VQGAN) -> LlamaGen names. taming's ``decoder.up[I]``
    is resolution level I (0 = full resolution), run in reverse; LlamaGen's decoder blocks count
    from the lowest resolution."""
    key = re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.", key)
    return janus_to_llamagen_key(key)


def flax_path(key: str) -> tuple[str, ...]:
    """LlamaGen key -> path in the sjd-jax VQ params (leaf name fixed up by tensor rank later)."""
    if key == "quantize.embedding.weight":
        return ("codebook",)
    for pat, rep in _MODULE_RULES:
        key = re.sub(pat, rep, key)
    return tuple(key.split("."))


def _transform(path: tuple[str, ...], x: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    *mod, leaf = path
    if path == ("codebook",):
        return path, x
    if leaf == "weight" and x.ndim == 4:  # conv (O, I, kh, kw) -> (kh, kw, I, O)
        return (*mod, "kernel"), x.transpose(2, 3, 1, 0)
    if leaf == "weight" and x.ndim == 1:  # GroupNorm
        return (*mod, "scale"), x
    return path, x


def vq_params_from_state_dict(state_dict: dict, config: VQConfig, janus_names: bool = False,
                              taming_names: bool = False):
    """``{name: array}`` (LlamaGen; HF Janus names with ``janus_names``; taming / Chameleon VQGAN
    names with ``taming_names``, whose ``loss.*`` discriminator tensors are skipped) -> ``{"params": ...}``."""
    target = abstract_vq_params(config)["params"]

    def to_path(name, arr):
        if taming_names and name.startswith("loss."):
            return None, arr
        key = (taming_to_llamagen_key(name, len(config.ch_mult)) if taming_names
               else janus_to_llamagen_key(name) if janus_names else name)
        return (None, arr) if key in IGNORED else _transform(flax_path(key), arr)

    items = state_dict.items() if isinstance(state_dict, dict) else state_dict
    return {"params": assign(items, target, to_path, "VQ")}

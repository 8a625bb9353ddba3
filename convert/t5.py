"""HF T5 / flan-T5 checkpoints (``config.json`` + safetensors shards) -> the Flax T5 encoder.

Only the encoder is kept: ``decoder.*`` and ``lm_head.weight`` are skipped by name; every other
tensor must land on exactly one parameter (``sjd_jax.convert.tree.assign`` fails on leftovers and gaps).
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from sjd_jax.core.text import T5Config, abstract_t5_params

from sjd_jax.convert.tree import assign

_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
           "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj")
_ACT = {"gated-gelu": "gelu_new", "relu": "relu"}


def t5_config(cfg: dict, max_length: int = 120) -> T5Config:
    """HF ``config.json`` -> T5Config; an activation or layout we do not implement is an error."""
    missing = [k for k in _FIELDS if k not in cfg and k != "feed_forward_proj"]
    if missing:
        raise ValueError(f"T5 config.json lacks {missing}")
    ff = cfg.get("feed_forward_proj", "relu")
    if ff not in _ACT:
        raise ValueError(f"unsupported T5 feed_forward_proj {ff!r} (supported: {', '.join(_ACT)})")
    act = cfg.get("dense_act_fn", _ACT[ff])
    if act != _ACT[ff]:
        raise ValueError(f"unsupported T5 dense_act_fn {act!r} for {ff!r} (expected {_ACT[ff]!r})")
    kw = {k: cfg[k] for k in _FIELDS if k in cfg}
    kw["feed_forward_proj"] = ff
    return T5Config(**kw, pad_id=int(cfg.get("pad_token_id", 0)), max_length=max_length)


def skipped(name: str) -> bool:
    return name.startswith("decoder.") or name == "lm_head.weight"


_LAYER = re.compile(r"encoder\.block\.(\d+)\.layer\.([01])\.(.+)$")


def t5_path(name: str, arr: np.ndarray):
    """(checkpoint name, array) -> (param path or None, re-laid-out array)."""
    if skipped(name):
        return None, arr
    if name in ("shared.weight", "encoder.embed_tokens.weight"):
        return ("params", "embed", "embedding"), arr
    if name == "encoder.final_layer_norm.weight":
        return ("params", "final_norm", "weight"), arr
    m = _LAYER.match(name)
    if m is None:
        return ("unmapped", name), arr
    i, sub, rest = int(m.group(1)), m.group(2), m.group(3)
    layer = ("params", f"layers_{i}")
    if rest == "layer_norm.weight":
        return layer + ("attn_norm" if sub == "0" else "ffn_norm", "weight"), arr
    if rest == "SelfAttention.relative_attention_bias.weight":
        return (("params", "relative_attention_bias") if i == 0 else ("unmapped", name)), arr
    m2 = re.fullmatch(r"(?:SelfAttention\.(q|k|v|o)|DenseReluDense\.(wi_0|wi_1|wi|wo))\.weight", rest)
    if m2 is None:
        return ("unmapped", name), arr
    return layer + (m2.group(1) or m2.group(2), "kernel"), np.asarray(arr).T  # torch Linear [out, in]


def t5_params(tensors: dict, config: T5Config, to_numpy) -> dict:
    """Encoder params from ``{name: tensor}`` (lazy tensors are read one at a time)."""
    names = list(tensors)
    if "shared.weight" in names and "encoder.embed_tokens.weight" in names:  # tied copies
        names.remove("encoder.embed_tokens.weight")

    def items() -> Iterable:
        for n in names:
            yield n, (None if skipped(n) else to_numpy(tensors[n]))

    return assign(items(), abstract_t5_params(config), t5_path, "T5 encoder")

"""LlamaGen GPT state dict (c2i or t2i) -> sjd-jax GPT params (explicit name table)."""

from __future__ import annotations

import re

import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import abstract_params

from sjd_jax.convert.tree import assign

IGNORED = ("freqs_cis",)  # not a weight; LlamaGen loads with strict=False around it
_PREFIXES = ("module.", "_orig_mod.")

# (LlamaGen name regex, sjd-jax path template, transform); Linear weights are (out, in) -> kernel (in, out)
_TABLE = [
    (r"cls_embedding\.embedding_table\.weight", "cls_embedding/embedding", None),
    (r"cls_embedding\.cap_proj\.fc1\.weight", "cap_fc1/kernel", "T"),
    (r"cls_embedding\.cap_proj\.fc2\.weight", "cap_fc2/kernel", "T"),
    (r"cls_embedding\.uncond_embedding", "uncond_embedding", None),
    (r"tok_embeddings\.weight", "tok_embeddings/embedding", None),
    (r"layers\.(\d+)\.attention\.(wqkv|wo)\.weight", r"layers_\1/attention/\2/kernel", "T"),
    (r"layers\.(\d+)\.feed_forward\.(w1|w2|w3)\.weight", r"layers_\1/feed_forward/\2/kernel", "T"),
    (r"layers\.(\d+)\.(attention_norm|ffn_norm)\.weight", r"layers_\1/\2/weight", None),
    (r"norm\.weight", "norm/weight", None),
    (r"output\.weight", "output/kernel", "T"),
]


def strip_prefix(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            name = name[len(p):]
    return name


def gpt_path(name: str, arr: np.ndarray):
    name = strip_prefix(name)
    if name in IGNORED:
        return None, arr
    for pat, tmpl, tf in _TABLE:
        m = re.fullmatch(pat, name)
        if m:
            return tuple(m.expand(tmpl).split("/")), (arr.T if tf == "T" else arr)
    return ("<unknown>", name), arr


def gpt_params_from_state_dict(state_dict: dict, config: GPTConfig, place=None):
    """``{name: array}`` (or an iterable of pairs) in LlamaGen's names -> ``{"params": ...}``
    (``place`` as in ``sjd_jax.convert.tree.assign``, e.g. ``host_place("bfloat16")``)."""
    target = abstract_params(config)["params"]
    items = state_dict.items() if isinstance(state_dict, dict) else state_dict
    return {"params": assign(items, target, gpt_path, "LlamaGen GPT", place)}

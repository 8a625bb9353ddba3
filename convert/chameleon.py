"""HF-format Chameleon checkpoints (Lumina-mGPT, Anole: ``config.json`` + safetensors shards) -> GPT.

The LLM only: ``model.vqmodel.*`` (the HF VQ encoder) is skipped by name. q/k/v are fused into
``wqkv`` per layer (at most three tensors held at a time). The q/k-norm parameters are stored
``[num_heads | num_kv_heads, head_dim]`` by HF and ``[model_parallel_size, head_dim]`` by Lumina's
fork: a leading dim that divides the head count is expanded with repeat_interleave, as the fork
does at run time.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import abstract_params

from sjd_jax.convert.hfconfig import refuse_unknown_fields
from sjd_jax.convert.tree import assign

_SKIPPED = (r"model\.vqmodel\..*", r"model\.rotary_emb\.inv_freq", r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_QKV = re.compile(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight")
_NORM = re.compile(r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.(weight|bias)")
_TABLE = [  # (HF name regex, sjd-jax path template, transpose)
    (r"model\.embed_tokens\.weight", "tok_embeddings/embedding", False),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"layers_\1/attention/wo/kernel", True),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"layers_\1/feed_forward/w1/kernel", True),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"layers_\1/feed_forward/w2/kernel", True),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"layers_\1/feed_forward/w3/kernel", True),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"layers_\1/attention_norm/weight", False),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers_\1/ffn_norm/weight", False),
    (r"model\.norm\.weight", "norm/weight", False),
    (r"lm_head\.weight", "output/kernel", True),
]


# The Llama-family fields ``llama_family_config`` reads (an unsupported value is refused there) ...
LLAMA_FIELDS = frozenset({
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling", "hidden_act",
    "attention_bias", "mlp_bias", "tie_word_embeddings", "max_position_embeddings",
    # ... and ones without effect on the logits: training dropout, token ids the pipelines read by name
    "attention_dropout", "pad_token_id", "bos_token_id", "eos_token_id",
})
_CHAMELEON = LLAMA_FIELDS | {
    "swin_norm", "vocabulary_map", "image_token_id",
    "model_parallel_size",  # q/k-norm rows per shard: expanded to heads (_expand_norm)
    "vq_config",  # the HF VQ encoder (skipped); the VQGAN comes from --vqgan
    # Lumina-mGPT's fork (ChameleonXLLMXConfig): training loss / dropout, and a mask of image tokens
    # out of *text* generation, which its image generation turns off
    "z_loss_weight", "dropout", "mask_image_logits",
}
CHAMELEON_QK_NORM_EPS = 1e-5  # HF ChameleonLayerNorm's, fixed (not the config's rms_norm_eps)


def skipped(name: str) -> bool:
    return any(re.fullmatch(p, name) for p in _SKIPPED)


def _positive_int(cfg: dict, key: str, family: str) -> int:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{family} config.json {key} {v!r} is not a positive integer")
    return v


def llama_family_config(cfg: dict, grid_size, prompt_len: int, family: str, qk_norm: bool) -> GPTConfig:
    """An HF Llama-style config dict (Chameleon, Emu3's text model) -> GPTConfig with one shared
    prompt/image vocabulary and 1D rotate-half RoPE, over a ``prompt_len`` prompt and a grid.
    Unknown fields are the callers' to refuse (``refuse_unknown_fields``)."""
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if key not in cfg:
            raise ValueError(f"{family} config.json lacks {key}")
    if cfg.get("swin_norm", False):
        raise ValueError("swin_norm=True (Chameleon-34B's post-norm) is not supported")
    if cfg.get("attention_bias", False) or cfg.get("mlp_bias", False):
        raise ValueError("biased attention/MLP layers are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r}")
    if cfg.get("tie_word_embeddings", False):
        raise ValueError("tied input/output embeddings are not supported")
    rope = cfg.get("rope_parameters") or {}
    if (rope.get("rope_type") or "default") != "default" or cfg.get("rope_scaling"):
        raise ValueError(f"rope scaling is not supported ({rope or cfg.get('rope_scaling')})")
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    dim, n_head = (_positive_int(cfg, k, family) for k in ("hidden_size", "num_attention_heads"))
    kv = n_head if cfg.get("num_key_value_heads") is None else _positive_int(cfg, "num_key_value_heads", family)
    # HF Llama-family attention uses head_dim when set (q/k/v: heads * head_dim features)
    hd = None if cfg.get("head_dim") is None else _positive_int(cfg, "head_dim", family)
    V = _positive_int(cfg, "vocab_size", family)
    return GPTConfig(vocab_size=V, text_vocab_size=V, shared_embeddings=True, grid_size=grid_size,
                     dim=dim, n_layer=_positive_int(cfg, "num_hidden_layers", family), n_head=n_head,
                     n_kv_head=None if kv == n_head else kv,
                     intermediate_size=_positive_int(cfg, "intermediate_size", family),
                     cls_token_num=prompt_len, norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                     rope_theta=theta, rope_type="1d", rope_interleaved=False, qk_norm=qk_norm,
                     qk_norm_eps=CHAMELEON_QK_NORM_EPS,
                     attn_head_dim=None if hd is None or hd * n_head == dim else hd)


def chameleon_config(cfg: dict, grid_size, prompt_len: int) -> GPTConfig:
    """HF ``ChameleonConfig`` dict -> GPTConfig over a ``prompt_len`` prompt and an image-token grid
    (fields outside the released configs' are refused)."""
    refuse_unknown_fields(cfg, _CHAMELEON, "Chameleon config.json")
    return llama_family_config(cfg, grid_size, prompt_len, "Chameleon", qk_norm=True)


def _expand_norm(arr: np.ndarray, heads: int, name: str) -> np.ndarray:
    if arr.ndim != 2 or heads % arr.shape[0]:
        raise ValueError(f"{name}: shape {arr.shape} does not expand to {heads} heads")
    return np.repeat(arr, heads // arr.shape[0], axis=0)  # torch repeat_interleave on dim 0


def _items(items: Iterable, config: GPTConfig):
    qkv: dict[int, dict[str, np.ndarray]] = {}
    for name, arr in items:
        if m := _QKV.fullmatch(name):
            parts = qkv.setdefault(int(m.group(1)), {})
            parts[m.group(2)] = arr
            if len(parts) == 3:
                del qkv[int(m.group(1))]
                yield f"model.layers.{m.group(1)}.self_attn.{{q,k,v}}_proj.weight", (
                    f"layers_{m.group(1)}/attention/wqkv/kernel",
                             np.concatenate([parts["q"], parts["k"], parts["v"]], 0).T)
            continue
        if m := _NORM.fullmatch(name):
            heads = config.n_head if m.group(2) == "q" else config.kv_heads
            field = "scale" if m.group(3) == "weight" else "bias"
            yield name, (f"layers_{m.group(1)}/attention/{m.group(2)}_norm/{field}", _expand_norm(arr, heads, name))
            continue
        for pat, tmpl, t in _TABLE:
            if m := re.fullmatch(pat, name):
                yield name, (m.expand(tmpl), arr.T if t else arr)
                break
        else:
            yield name, ("<unknown>", arr)
    if qkv:
        raise ValueError(f"layers {sorted(qkv)} are missing some of q_proj/k_proj/v_proj")


def chameleon_params(tensors: dict, config: GPTConfig, to_numpy, place=None) -> dict:
    """Lazy ``{HF name: tensor}`` -> ``{"params": ...}`` for ``config`` (strict; ``place`` as in
    ``sjd_jax.convert.tree.assign``)."""
    names = [n for n in tensors if not skipped(n)]
    stream = ((n, to_numpy(tensors[n])) for n in names)
    return {"params": assign(_items(stream, config), abstract_params(config)["params"],
                             lambda name, pair: ((tuple(pair[0].split("/")), pair[1]) if pair[0] != "<unknown>"
                                                 else (("<unknown>", name), pair[1])),
                             "Chameleon LLM", place)}

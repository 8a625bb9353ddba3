"""Janus-Pro in HF format (``JanusForConditionalGeneration.save_pretrained``) -> sjd-jax "janus" checkpoint.

Only the image-generation path is converted: the Llama LLM, the generation embedding + aligner
(folded into one ``[K, dim]`` image-token table), the generation head and the VQ. The image
understanding encoder (``model.vision_model.*``, ``model.aligner.*``) and the text ``lm_head`` are
skipped by name. ``config.json`` is checked field by field: a field this converter does not know,
or a known field with an unsupported value, is an error.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.families.janus import JanusConfig
from sjd_jax.core.model import abstract_params
from sjd_jax.core.vq import VQConfig

from sjd_jax.convert.hfconfig import refuse_unknown_fields
from sjd_jax.convert.tree import assign
from sjd_jax.convert.vq import vq_params_from_state_dict

_TOP = {"model_type", "text_config", "vision_config", "vq_config", "image_token_id",
        "image_token_index", "tie_word_embeddings"}  # tie_word_embeddings: the text lm_head, unused
# text_config: fields read below, plus ones that only matter for text/training.
_TEXT = {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
         "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters",
         "rope_theta", "rope_scaling", "max_position_embeddings", "pad_token_id", "bos_token_id",
         "eos_token_id", "hidden_act", "attention_bias", "mlp_bias", "attention_dropout",
         "pretraining_tp", "tie_word_embeddings"}
_VQ = {"model_type", "embed_dim", "num_embeddings", "base_channels", "channel_multiplier",
       "num_res_blocks", "latent_channels", "in_channels", "out_channels", "double_latent", "dropout",
       "hidden_act", "image_token_embed_dim", "projection_dim", "num_hidden_layers", "num_patches",
       "attn_resolutions"}


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"unsupported Janus config: {msg}")


def janus_config(cfg: dict, gen_cfg: dict, tokenizer_vocab: dict | None) -> JanusConfig:
    """HF ``config.json`` (+ ``generation_config.json``, tokenizer vocabulary) -> JanusConfig."""
    refuse_unknown_fields(cfg, _TOP, "config.json (top level)")
    _require(cfg.get("model_type") == "janus", f"model_type {cfg.get('model_type')!r} is not 'janus'")
    for key in ("text_config", "vq_config", "vision_config"):
        _require(isinstance(cfg.get(key), dict), f"missing {key}")
    t, v = cfg["text_config"], cfg["vq_config"]
    refuse_unknown_fields(t, _TEXT, "config.json text_config")
    refuse_unknown_fields(v, _VQ, "config.json vq_config")
    _require(t.get("model_type", "llama") == "llama", f"text model_type {t.get('model_type')!r}")
    _require(t.get("hidden_act", "silu") == "silu", f"text hidden_act {t.get('hidden_act')!r}")
    _require(not t.get("attention_bias", False) and not t.get("mlp_bias", False), "biased Llama layers")
    rope = t.get("rope_parameters") or {}
    _require(rope.get("rope_type", "default") == "default" and not t.get("rope_scaling"),
             f"rope scaling {rope or t.get('rope_scaling')}")
    theta = float(rope.get("rope_theta", t.get("rope_theta", 10000.0)))
    dim, n_head = int(t["hidden_size"]), int(t["num_attention_heads"])
    _require(t.get("head_dim") in (None, dim // n_head), f"head_dim {t.get('head_dim')} != hidden/heads")
    _require(v.get("hidden_act", "gelu") == "gelu", f"vq hidden_act {v.get('hidden_act')!r}")
    _require(not v.get("double_latent", False), "double_latent VQ")
    _require(v.get("in_channels", 3) == 3 and v.get("out_channels", 3) == 3, "non-RGB VQ")
    _require(v.get("attn_resolutions") in (None, []), "VQ attn_resolutions")
    proj = int(v.get("projection_dim", 2048))
    _require(proj == dim, f"generation aligner width {proj} != LLM hidden size {dim}")
    _require(int(v.get("image_token_embed_dim", 2048)) == dim,
             f"generation head input {v.get('image_token_embed_dim')} != LLM hidden size {dim}")
    grid = int(v.get("num_patches", 24))
    n_img = cfg["vision_config"].get("num_image_tokens")
    _require(n_img in (None, grid * grid), f"vision num_image_tokens {n_img} != num_patches^2 = {grid * grid}")

    gen_kwargs = gen_cfg.get("generation_kwargs") or {}
    vocab = tokenizer_vocab or {}

    def special(name, *sources):
        for s in sources:
            if s is not None:
                return int(s)
        raise ValueError(f"cannot find the {name} token id (config.json, generation_config.json, "
                         "tokenizer.json)")

    bos = special("BOS", t.get("bos_token_id"), gen_cfg.get("bos_token_id"))
    pad = special("pad", t.get("pad_token_id"), gen_cfg.get("pad_token_id"))
    boi = special("image-start (<begin_of_image>)", gen_kwargs.get("boi_token_id"),
                  gen_cfg.get("boi_token_id"), vocab.get("<begin_of_image>"))
    kv = t.get("num_key_value_heads") or n_head
    gpt = GPTConfig(
        vocab_size=int(v["num_embeddings"]), grid_size=grid, dim=dim, n_layer=int(t["num_hidden_layers"]),
        n_head=n_head, n_kv_head=None if kv == n_head else int(kv), text_vocab_size=int(t["vocab_size"]),
        cls_token_num=1, cfg_pad_id=pad, cfg_keep_ids=(bos, boi), intermediate_size=int(t["intermediate_size"]),
        norm_eps=float(t.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_type="1d",
        rope_interleaved=False, head_hidden=proj)
    vq = VQConfig(codebook_size=int(v["num_embeddings"]), codebook_embed_dim=int(v.get("embed_dim", 8)),
                  ch=int(v.get("base_channels", 128)), ch_mult=tuple(v.get("channel_multiplier", (1, 1, 2, 2, 4))),
                  num_res_blocks=int(v.get("num_res_blocks", 2)), z_channels=int(v.get("latent_channels", 256)))
    return JanusConfig(gpt=gpt, vq=vq, bos_id=bos, boi_id=boi, pad_id=pad,
                       max_positions=int(t.get("max_position_embeddings", 16384)))


# ---- tensors ---------------------------------------------------------------------------------

_LM = "model.language_model."
_SKIPPED = (r"model\.vision_model\..*", r"model\.aligner\..*", r"lm_head\.weight",
            r"model\.language_model\.rotary_emb\.inv_freq", r"model\.language_model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_TABLE = [  # (HF name regex after the LLM prefix, sjd-jax path template, transform)
    (r"embed_tokens\.weight", "text_embeddings/embedding", None),
    (r"layers\.(\d+)\.self_attn\.o_proj\.weight", r"layers_\1/attention/wo/kernel", "T"),
    (r"layers\.(\d+)\.mlp\.gate_proj\.weight", r"layers_\1/feed_forward/w1/kernel", "T"),
    (r"layers\.(\d+)\.mlp\.down_proj\.weight", r"layers_\1/feed_forward/w2/kernel", "T"),
    (r"layers\.(\d+)\.mlp\.up_proj\.weight", r"layers_\1/feed_forward/w3/kernel", "T"),
    (r"layers\.(\d+)\.input_layernorm\.weight", r"layers_\1/attention_norm/weight", None),
    (r"layers\.(\d+)\.post_attention_layernorm\.weight", r"layers_\1/ffn_norm/weight", None),
    (r"norm\.weight", "norm/weight", None),
]
_HEAD = {"model.generation_head.proj_out.weight": ("head_proj/kernel", "T"),
         "model.generation_head.proj_out.bias": ("head_proj/bias", None),
         "model.generation_head.vision_head.weight": ("output/kernel", "T"),
         "model.generation_head.vision_head.bias": ("output/bias", None)}
_QKV = re.compile(r"model\.language_model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight")
_ALIGN = re.compile(r"model\.generation_(embeddings\.weight|aligner\.(fc1|hidden_layers\.\d+)\.(weight|bias))")


def skipped(name: str) -> bool:
    return any(re.fullmatch(p, name) for p in _SKIPPED)


def fold_image_embeddings(parts: dict) -> np.ndarray:
    """generation_embeddings [K, e] -> aligner MLP -> ``[K, dim]`` (exact: per-token function)."""
    import jax

    x = jax.device_put(parts.pop("model.generation_embeddings.weight"), jax.devices("cpu")[0])
    x = x @ parts.pop("model.generation_aligner.fc1.weight").T + parts.pop("model.generation_aligner.fc1.bias")
    layers = sorted({int(m.group(1)) for k in parts
                     if (m := re.match(r"model\.generation_aligner\.hidden_layers\.(\d+)\.", k))})
    for i in layers:
        x = jax.nn.gelu(x, approximate=False)
        x = (x @ parts.pop(f"model.generation_aligner.hidden_layers.{i}.weight").T
             + parts.pop(f"model.generation_aligner.hidden_layers.{i}.bias"))
    if parts:
        raise ValueError(f"unexpected generation-aligner tensors {sorted(parts)}")
    return np.asarray(x)


def _gpt_items(items: Iterable[tuple[str, np.ndarray]]):
    """Rename/re-lay-out the LLM + generation tensors; fuse q/k/v per layer, fold the aligner."""
    qkv: dict[int, dict[str, np.ndarray]] = {}
    align: dict[str, np.ndarray] = {}
    for name, arr in items:
        if m := _QKV.fullmatch(name):
            parts = qkv.setdefault(int(m.group(1)), {})
            parts[m.group(2)] = arr
            if len(parts) == 3:  # [q | k | v] rows, as the fused wqkv kernel expects
                del qkv[int(m.group(1))]
                yield f"<wqkv {m.group(1)}>", (f"layers_{m.group(1)}/attention/wqkv/kernel",
                                               np.concatenate([parts["q"], parts["k"], parts["v"]], 0).T)
            continue
        if _ALIGN.fullmatch(name):
            align[name] = arr
            continue
        if name in _HEAD:
            path, tf = _HEAD[name]
            yield name, (path, arr.T if tf == "T" else arr)
            continue
        if name.startswith(_LM):
            for pat, tmpl, tf in _TABLE:
                if m := re.fullmatch(pat, name[len(_LM):]):
                    yield name, (m.expand(tmpl), arr.T if tf == "T" else arr)
                    break
            else:
                yield name, ("<unknown>", arr)
            continue
        yield name, ("<unknown>", arr)
    if qkv:
        raise ValueError(f"layers {sorted(qkv)} are missing some of q_proj/k_proj/v_proj")
    if "model.generation_embeddings.weight" not in align:
        raise ValueError("checkpoint has no model.generation_embeddings.weight")
    yield "<image embeddings>", ("tok_embeddings/embedding", fold_image_embeddings(align))


def janus_params(tensors: dict, config: JanusConfig, to_numpy, progress=None, place=None) -> dict:
    """Lazy ``{HF name: tensor}`` -> ``{"gpt": {"params": ...}, "vq": {"params": ...}}``, one tensor
    resident at a time (plus the small q/k/v and aligner groups being assembled); ``place`` (the
    LLM's tensors) as in ``sjd_jax.convert.tree.assign``."""
    names = [n for n in tensors if not skipped(n)]
    vq_names = [n for n in names if n.startswith("model.vqmodel.")]
    gpt_names = [n for n in names if not n.startswith("model.vqmodel.")]

    def stream(ns):
        for n in ns:
            yield n, to_numpy(tensors[n])
            if progress is not None:
                progress.update(1)

    target = abstract_params(config.gpt)["params"]
    gpt = {"params": assign(_gpt_items(stream(gpt_names)), target,
                            lambda name, pair: (tuple(pair[0].split("/")), pair[1]) if pair[0] != "<unknown>"
                            else (("<unknown>", name), pair[1]),
                            "Janus-Pro LLM/generation", place)}
    vq = vq_params_from_state_dict(((n[len("model.vqmodel."):], a) for n, a in stream(vq_names)),
                                   config.vq, janus_names=True)
    return {"gpt": gpt, "vq": vq}

"""Emu3-Gen's LLM (``BAAI/Emu3-Gen`` original names, ``BAAI/Emu3-Gen-hf`` / HF v5 names) -> GPT.

A Llama decoder (GQA, RoPE theta 1e6, rotate-half, untied ``lm_head``) over one vocabulary of text
and visual tokens. Names are normalised to Chameleon's HF layout (``model.layers.N...``, ``lm_head``)
and mapped by ``sjd_jax.convert.chameleon``: HF v5 in memory ``model.text_model.*`` and the hub files of
``BAAI/Emu3-Gen-hf`` (what ``save_pretrained`` writes) ``text_model.model.*`` / ``text_model.lm_head``; ``model.vqmodel.*`` / ``vqmodel.*`` (the vision tokenizer,
converted on its own) are skipped.
"""

from __future__ import annotations

import re

from sjd_jax.core.config import GPTConfig

from sjd_jax.convert.chameleon import LLAMA_FIELDS, chameleon_params, llama_family_config
from sjd_jax.convert.hfconfig import refuse_unknown_fields

_RENAMES = [(r"^model\.text_model\.", "model."), (r"^text_model\.lm_head\.", "lm_head."),
            (r"^text_model\.model\.", "model.")]
_VQ = re.compile(r"^(model\.)?vqmodel\.")
# config.json fields (beyond the Llama ones): HF v5 ``Emu3Config`` top level, its ``text_config``,
# and the flat original ``BAAI/Emu3-Gen`` config (special-token ids and the training image area,
# which the pipeline reads from the vocabulary and --image-size instead)
_TOP = {"model_type", "text_config", "vq_config", "vocabulary_map", "image_token_id", "tie_word_embeddings"}
_TEXT = LLAMA_FIELDS | {"head_dim", "pretraining_tp"}  # pretraining_tp: sliced matmuls, same result
_ORIGINAL = {"img_token_id", "boi_token_id", "eoi_token_id", "eol_token_id", "eof_token_id", "image_area"}


def emu3_name(name: str) -> str | None:
    """Checkpoint name -> Chameleon-layout name, or None for vision-tokenizer tensors."""
    if _VQ.match(name):
        return None
    for pat, rep in _RENAMES:
        if re.match(pat, name):
            return re.sub(pat, rep, name)
    return name


def emu3_config(cfg: dict, grid_size, prompt_len: int) -> GPTConfig:
    """Emu3 ``config.json`` (original flat keys, or HF v5 with ``text_config``) -> GPTConfig."""
    if isinstance(cfg.get("text_config"), dict):
        refuse_unknown_fields(cfg, _TOP, "Emu3 config.json (top level)")
        text = cfg["text_config"]
        refuse_unknown_fields(text, _TEXT, "Emu3 config.json text_config")
    else:
        text = cfg
        refuse_unknown_fields(cfg, _TEXT | _ORIGINAL, "Emu3 config.json")
    return llama_family_config(text, grid_size, prompt_len, "Emu3", qk_norm=False)


def emu3_params(tensors: dict, config: GPTConfig, to_numpy, place=None) -> dict:
    """Lazy ``{name: tensor}`` -> ``{"params": ...}`` (strict; q/k/v fused into wqkv; ``place`` as
    in ``sjd_jax.convert.tree.assign``)."""
    renamed = {}
    for name, t in tensors.items():
        new = emu3_name(name)
        if new is None:
            continue
        if new in renamed:
            raise ValueError(f"{name} and another tensor both map to {new}")
        renamed[new] = t
    return chameleon_params(renamed, config, to_numpy, place)

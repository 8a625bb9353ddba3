"""LlamaGen class-to-image (``generate --model llamagen-c2i --ckpt DIR``): ``DIR/gpt`` from
``sjd-jax convert --family llamagen-c2i c2i_B_256.pt`` and ``DIR/vq`` from ``--family llamagen-vq``.

Defines the checkpoint kinds "gpt" (``GPTConfig``: every family's transformer config) and "vq"
(LlamaGen's VQ-16, also Janus-Pro's); the bundled model and LlamaGen-T2I are stored as these kinds.
"""

from __future__ import annotations

from pathlib import Path

from sjd_jax.io import checkpoint
from sjd_jax.families import presets
from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import abstract_params
from sjd_jax.core.vq import VQConfig, abstract_vq_params
from sjd_jax.families import Family, Kind, register

# LlamaGen's sample_c2i demo (cfg 4.0, top-k 2000; temperature 1.0 and top-p 1.0 as Preset's defaults)
DEFAULTS = dict(cfg_scale=4.0, top_k=2000)


def load_model(family, model: str, ckpt, *, mesh=None) -> presets.Bundle:
    """GPT and VQ of a converted checkpoint directory; class names are the ids."""
    ckpt = Path(ckpt)
    checkpoint.require_kind(ckpt / "gpt", "gpt", "llamagen-c2i")
    checkpoint.require_kind(ckpt / "vq", "vq", "llamagen-vq")
    gc, gp = checkpoint.load(ckpt / "gpt", mesh=mesh)
    if not gc.num_classes:
        raise ValueError(f"{ckpt / 'gpt'} is a text-conditional GPT; use --model llamagen-t2i-xl")
    vc, vp = checkpoint.load(ckpt / "vq")
    if vc.codebook_size != gc.vocab_size:
        raise ValueError(f"{ckpt / 'vq'} has {vc.codebook_size} codes but the GPT's vocabulary is {gc.vocab_size}")
    d = dict(family.defaults)
    d["top_k"] = min(d["top_k"], gc.vocab_size)  # (a smaller vocabulary than the released models')
    preset = presets.Preset(model, ckpt, tuple(str(i) for i in range(gc.num_classes)), **d)
    return presets.Bundle(preset, gc, gp, vc, vp)


register(Family("llamagen-c2i", "class",
                kinds=(Kind("gpt", GPTConfig, abstract_params),
                       Kind("vq", VQConfig, abstract_vq_params, replicated=True)),  # decodes once per image
                models={"llamagen-c2i": {}}, defaults=DEFAULTS, load=load_model,
                converters={"llamagen-c2i": "sjd_jax.convert.cli:convert_llamagen_c2i",
                            "llamagen-vq": "sjd_jax.convert.cli:convert_llamagen_vq"}))

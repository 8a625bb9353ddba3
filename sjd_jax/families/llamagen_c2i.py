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
from sjd_jax.families import Family, HubStep, Kind, Pretrained, register

# LlamaGen's sample_c2i demo (cfg 4.0, top-k 2000; temperature 1.0 and top-p 1.0 as Preset's defaults)
DEFAULTS = dict(cfg_scale=4.0, top_k=2000)


def load_model(family, model: str, ckpt, *, mesh=None, param_dtype: str = "auto") -> presets.Bundle:
    """GPT (in ``param_dtype``, ``checkpoint.load``) and VQ of a converted checkpoint directory; class
    names are the ids."""
    ckpt = Path(ckpt)
    checkpoint.require_kind(ckpt / "gpt", "gpt", "llamagen-c2i")
    checkpoint.require_kind(ckpt / "vq", "vq", "llamagen-vq")
    gpt = checkpoint.config_from_dict("gpt", checkpoint.read_meta(ckpt / "gpt")["config"])
    if not gpt.num_classes:  # checked before any weights are read
        raise ValueError(f"{ckpt / 'gpt'} is a text-conditional GPT; use --model llamagen-t2i-xl")

    def preset(gc):
        d = dict(family.defaults)
        d["top_k"] = min(d["top_k"], gc.vocab_size)  # (a smaller vocabulary than the released models')
        return presets.Preset(model, ckpt, tuple(str(i) for i in range(gc.num_classes)), **d)

    b = presets.load_pair(ckpt, ckpt / "gpt", ckpt / "vq", preset, mesh=mesh, param_dtype=param_dtype)
    if b.vq_config.codebook_size != b.gpt_config.vocab_size:
        raise ValueError(f"{ckpt / 'vq'} has {b.vq_config.codebook_size} codes but the GPT's vocabulary is "
                         f"{b.gpt_config.vocab_size}")
    return b


register(Family("llamagen-c2i", "class",
                kinds=(Kind("gpt", GPTConfig, abstract_params),
                       Kind("vq", VQConfig, abstract_vq_params, replicated=True)),  # decodes once per image
                models={"llamagen-c2i": {}}, defaults=DEFAULTS, load=load_model, load_options=("param_dtype",),
                converters={"llamagen-c2i": "sjd_jax.convert.cli:convert_llamagen_c2i",
                            "llamagen-vq": "sjd_jax.convert.cli:convert_llamagen_vq"},
                # llamagen-c2i-b-256 ... llamagen-c2i-3b-384: the released GPT files + the c2i VQ
                pretrained=tuple(Pretrained(f"llamagen-c2i-{size.lower()}-{px}", "llamagen-c2i",
                                            (HubStep("llamagen-c2i", "FoundationVision/LlamaGen", (f"c2i_{size}_{px}.pt",),
                                                     out="gpt"),
                                             HubStep("llamagen-vq", "FoundationVision/LlamaGen", ("vq_ds16_c2i.pt",),
                                                     out="vq")))
                                 for size, px in (("B", 256), ("B", 384), ("L", 256), ("L", 384), ("XL", 384),
                                                  ("XXL", 384), ("3B", 384)))))

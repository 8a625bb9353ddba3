"""Text-to-image models by name: one loader and one ``generate`` for every converted family.

| name                  | checkpoint (``sjd-jax convert --family ...``)                          |
|-----------------------|------------------------------------------------------------------------|
| lumina-mgpt-7b-512/768/1024 | ``lumina-mgpt`` (LLM + Chameleon VQGAN + tokenizer; its image size) |
| anole-7b              | ``anole`` (512 px, Chameleon's own image span)                           |
| llamagen-t2i-xl       | a directory with ``gpt/`` (``llamagen-t2i``), ``vq/`` (``llamagen-vq``) and ``t5/`` (``t5-encoder``) |
| janus-pro-1b / -7b    | ``janus-pro``                                                            |
| emu3-gen              | ``emu3`` (LLM + vision tokenizer + tokenizer; its image size, 720 px)     |

The name picks the pipeline (prompt format, CFG form, layout, sampling defaults) and, for Lumina,
the image size the checkpoint must have been converted for; the weights come from ``--ckpt``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from .config import GPTConfig

TEXT_MODELS = {
    "lumina-mgpt-7b-512": dict(family="lumina-mgpt", layout="lumina", size=512),
    "lumina-mgpt-7b-768": dict(family="lumina-mgpt", layout="lumina", size=768),
    "lumina-mgpt-7b-1024": dict(family="lumina-mgpt", layout="lumina", size=1024),
    "anole-7b": dict(family="anole", layout="anole", size=None),
    "llamagen-t2i-xl": dict(family="llamagen-t2i", size=None),
    "janus-pro-1b": dict(family="janus-pro", size=None),
    "janus-pro-7b": dict(family="janus-pro", size=None),
    "emu3-gen": dict(family="emu3", size=None),
}


@dataclasses.dataclass
class TextModel:
    name: str
    family: str
    defaults: dict  # sampling knobs: cfg_scale, temperature, top_k, top_p
    gpt_config: GPTConfig  # for option checks (the prompt length is set per call)
    image_size: tuple[int, int]
    codebook: np.ndarray | None  # code vectors indexed like the GPT's vocabulary (lantern), or None
    # (texts, key, **sampling) -> (uint8 images [B, H, W, 3], GenerateOutput with host arrays)
    generate: Callable


def load(name: str, ckpt, t5=None, mesh=None) -> TextModel:
    """The named text-to-image model from its converted checkpoint directory ``ckpt`` (LlamaGen-T2I:
    ``t5`` overrides ``ckpt/t5``)."""
    from . import checkpoint

    if name not in TEXT_MODELS:
        raise ValueError(f"unknown text-to-image model {name!r}; choose one of {', '.join(TEXT_MODELS)}")
    spec = TEXT_MODELS[name]
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise ValueError(f"--ckpt {ckpt}: no such directory")
    if t5 is not None and spec["family"] != "llamagen-t2i":
        raise ValueError(f"--t5 is for llamagen-t2i models, not {name}")
    if spec["family"] == "llamagen-t2i":
        from . import llamagen_t2i
        from .vq import codebook_vectors

        b = llamagen_t2i.load(ckpt, t5_dir=t5, mesh=mesh)

        def run(texts, key, **sampling):
            return llamagen_t2i.text_to_image(b, texts, key, mesh=mesh, **sampling)

        knobs = {k: v for k, v in llamagen_t2i.sampling_options(b).items() if k in llamagen_t2i.DEFAULTS}
        return TextModel(name, spec["family"], knobs, b.gpt_config,
                         (b.image_size, b.image_size), codebook_vectors(b.vq_params, b.vq_config), run)
    if spec["family"] == "janus-pro":
        from . import janus
        from .vq import codebook_vectors

        checkpoint.require_kind(ckpt, "janus", spec["family"])
        config, params = checkpoint.load(ckpt, mesh=mesh)
        tok = janus.load_tokenizer(ckpt)

        def run(texts, key, **sampling):
            return janus.text_to_image(params, config, tok, texts, key, mesh=mesh, **sampling)

        return TextModel(name, spec["family"], dict(cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0),
                         config.gpt, (config.image_size, config.image_size),
                         codebook_vectors(params["vq"], config.vq), run)
    if spec["family"] == "emu3":
        from . import emu3
        from .janus import load_tokenizer

        checkpoint.require_kind(ckpt, "emu3", spec["family"])
        config, params = checkpoint.load(ckpt, mesh=mesh)
        tok = load_tokenizer(ckpt)

        def run(texts, key, **sampling):
            return emu3.text_to_image(params, config, tok, texts, key, mesh=mesh, **sampling)

        return TextModel(name, spec["family"], emu3.defaults(config), config.gpt, config.image_size, None, run)
    from . import lumina
    from .janus import load_tokenizer

    checkpoint.require_kind(ckpt, "lumina", spec["family"])
    config, params = checkpoint.load(ckpt, mesh=mesh)
    if config.layout != spec["layout"]:
        raise ValueError(f"{ckpt} is a {config.layout} checkpoint; --model {name} needs "
                         f"sjd-jax convert --family {spec['family']}")
    if spec["size"] is not None and config.image_size != (spec["size"], spec["size"]):
        H, W = config.image_size
        raise ValueError(f"{ckpt} was converted for {H}x{W} px; --model {name} is {spec['size']} px "
                         f"(convert again with --image-size {spec['size']}, or pick the matching --model)")
    tok = load_tokenizer(ckpt)

    def run(texts, key, **sampling):
        return lumina.text_to_image(params, config, tok, texts, key, mesh=mesh, **sampling)

    return TextModel(name, spec["family"], lumina.defaults(config), config.gpt, config.image_size, None, run)

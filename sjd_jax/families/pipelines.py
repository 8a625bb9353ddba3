"""Text-to-image models by name: one loader and one ``generate`` for every converted family.

The name (``sjd-jax generate --model``) picks the pipeline (prompt format, CFG form, layout,
sampling defaults) and, for Lumina, the image size the checkpoint must have been converted for; the
weights come from ``--ckpt``. The names, the checkpoint each needs (README's "Supported checkpoints")
and their loaders belong to the model families (``sjd_jax.families``, task "text").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from sjd_jax import families
from sjd_jax.core.config import GPTConfig


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
    param_dtype: str = "float32"  # the transformer params' dtype as loaded (precision.STORED_DTYPES)
    gpt_params: dict | None = None  # the transformer's params (what the automatic sampler choice times)


def __getattr__(name: str):
    # TEXT_MODELS: --model name -> {"family": its family, **that model's settings}, from the registry
    if name == "TEXT_MODELS":
        return {m: {"family": f.name, **f.models[m]} for f in families.entries() if f.task == "text"
                for m in f.models}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(name: str, ckpt, t5=None, mesh=None, param_dtype: str = "auto") -> TextModel:
    """The named text-to-image model from its converted checkpoint directory ``ckpt`` (LlamaGen-T2I:
    ``t5`` overrides ``ckpt/t5``). ``param_dtype``: the transformer params' dtype, one of
    ``precision.PARAM_DTYPES`` ("auto": ``precision.resolve_param_dtype``; VQ decoders and T5 stay
    float32); ``TextModel.param_dtype`` says which it became."""
    from sjd_jax.families.presets import dtype_option

    names = families.model_names("text")
    if name not in names:
        raise ValueError(f"unknown text-to-image model {name!r}; choose one of {', '.join(names)}")
    family = families.for_model(name)
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise ValueError(f"--ckpt {ckpt}: no such directory")
    options = {k: v for k, v in dict(t5=t5).items() if v is not None}
    for k in options:
        if k not in family.load_options:
            takers = [f.name for f in families.entries() if k in f.load_options]
            raise ValueError(f"--{k} is for {', '.join(takers)} models, not {name}")
    tm = family.load(family, name, ckpt, mesh=mesh, **options, **dtype_option(family, param_dtype))
    return dataclasses.replace(tm, generate=auto_by_default(tm.generate))


def auto_by_default(run: Callable) -> Callable:
    """``run`` with the automatic sampler choice (``method="auto"``, ``window="auto"``;
    ``sjd_jax.tuning``) where the caller names no sampler (no ``options``, ``method`` or ``window``)."""
    def generate(texts, key, **sampling):
        if not {"options", "method", "window"} & set(sampling):
            sampling = dict(sampling, method="auto", window="auto")
        return run(texts, key, **sampling)

    generate.__doc__ = run.__doc__
    return generate

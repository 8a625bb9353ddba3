"""Class-conditional models by name: the bundled ones (no download) and converted checkpoints.

Which names exist and how each loads is up to the model families (``sjd_jax.families``, task
"class"); a ``Bundle`` is what they load.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from sjd_jax import families
from sjd_jax.io import checkpoint
from sjd_jax.core import precision
from sjd_jax.core.config import GPTConfig
from sjd_jax.core.vq import VQConfig

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # sjd_jax/assets


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    directory: Path
    class_names: tuple[str, ...]
    # sampling defaults chosen for this model (README / closing note give the measurements)
    cfg_scale: float
    window: int = 16
    method: str = "sjd"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    crop: int | None = None  # center crop of decoded images (Fashion-MNIST: 32 -> 28)

    def cropped(self, images):
        """Decoded images ``[B, H, W, C]`` centre-cropped to ``crop`` x ``crop`` (as they are when no crop)."""
        if not self.crop:
            return images
        m = (images.shape[1] - self.crop) // 2
        return images[:, m:m + self.crop, m:m + self.crop]

    def knobs(self, **overrides) -> dict:
        """Sampling knobs: this preset's defaults, replaced by every override that is not None."""
        d = dict(cfg_scale=self.cfg_scale, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return d


def __getattr__(name: str):
    # PRESETS: bundled model name -> its Preset factory; CKPT_MODELS: class-conditional models from a
    # converted checkpoint directory -> their sampling defaults. Both read from the registry on access.
    if name == "PRESETS":
        return {m: functools.partial(get, m) for m in families.model_names("class", bundled=True)}
    if name == "CKPT_MODELS":
        return {m: dict(families.for_model(m).defaults) for m in families.model_names("class", bundled=False)}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> Preset:
    """The ``Preset`` of a bundled model (no weights read)."""
    bundled = families.model_names("class", bundled=True)
    if name not in bundled:
        raise ValueError(f"unknown model {name!r}; bundled models: {', '.join(bundled)}")
    return families.for_model(name).preset(name)


def from_checkpoint(name: str, ckpt, mesh=None, param_dtype: str = "auto") -> Bundle:
    """A class-conditional model of ``CKPT_MODELS`` from its converted checkpoint directory ``ckpt``
    (LlamaGen: ``ckpt/gpt`` and ``ckpt/vq``). ``param_dtype``: the GPT params' dtype, one of
    ``precision.PARAM_DTYPES`` ("auto": ``precision.resolve_param_dtype``); ``Bundle.param_dtype``
    says which it became."""
    names = families.model_names("class", bundled=False)
    if name not in names:
        raise ValueError(f"unknown model {name!r}; class-conditional checkpoint models: {', '.join(names)}")
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise ValueError(f"--ckpt {ckpt}: no such directory")
    family = families.for_model(name)
    return family.load(family, name, ckpt, mesh=mesh, **dtype_option(family, param_dtype))


def dtype_option(family, param_dtype: str) -> dict:
    """``{"param_dtype": param_dtype}`` for a family whose loader takes it (``"param_dtype"`` in its
    ``load_options``: every built-in family); ``{}`` for "auto" otherwise (its loader loads the
    params as stored). ``ValueError`` for an unknown value, or another one such a family cannot honour."""
    precision.check_param_dtype(param_dtype)
    if "param_dtype" in family.load_options:
        return {"param_dtype": param_dtype}
    if param_dtype != "auto":
        raise ValueError(f"param_dtype {param_dtype!r}: family {family.name!r} loads its params as stored "
                         "(its loader takes no param_dtype)")
    return {}


@dataclasses.dataclass
class Bundle:
    preset: Preset
    gpt_config: GPTConfig
    gpt_params: dict
    vq_config: VQConfig
    vq_params: dict
    param_dtype: str = "float32"  # the GPT params' dtype as loaded (precision.STORED_DTYPES)


def load(name: str, mesh=None, param_dtype: str = "auto") -> Bundle:
    """The bundled model; with ``mesh`` the GPT params are restored onto their shardings (the VQ
    decoder stays on this process's first device: it decodes on the writing process only).
    ``param_dtype`` as in ``from_checkpoint``."""
    get(name)  # a bundled model (ValueError otherwise)
    family = families.for_model(name)
    return family.load(family, name, None, mesh=mesh, **dtype_option(family, param_dtype))


def load_pair(ckpt, gpt_dir, vq_dir, preset_of, *, mesh=None, param_dtype: str = "auto") -> Bundle:
    """A ``Bundle`` from a GPT and a VQ checkpoint directory: the GPT in ``param_dtype`` (on
    ``mesh``), the VQ decoder float32 on the first device; ``preset_of(gpt_config) -> Preset``."""
    gc, gp = checkpoint.load(gpt_dir, mesh=mesh, param_dtype=param_dtype)
    vc, vp = checkpoint.load(vq_dir)
    return Bundle(preset_of(gc), gc, gp, vc, vp, precision.dtype_of(gp))


def load_bundled(family, model: str, ckpt=None, *, mesh=None, param_dtype: str = "auto") -> Bundle:
    """The loader of bundled families: the GPT and VQ checkpoints under the preset's directory."""
    p = family.preset(model)
    if not (p.directory / "gpt").is_dir():
        raise ValueError(f"model {model!r}: weights missing under {p.directory} (broken install?)")
    return load_pair(p.directory, p.directory / "gpt", p.directory / "vq", lambda _: p, mesh=mesh,
                     param_dtype=param_dtype)

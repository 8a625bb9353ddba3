"""Bundled models, loadable by name with no download."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from . import checkpoint
from .config import GPTConfig
from .vq import VQConfig

ASSETS = Path(__file__).parent / "assets"


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

    def knobs(self, **overrides) -> dict:
        """Sampling knobs: this preset's defaults, replaced by every override that is not None."""
        d = dict(cfg_scale=self.cfg_scale, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return d


def _fashion() -> Preset:
    from .data import CLASSES

    return Preset("fashion-mnist", ASSETS / "fashion_mnist", CLASSES, cfg_scale=2.0, crop=28)


PRESETS = {"fashion-mnist": _fashion}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; bundled models: {', '.join(PRESETS)}")
    return PRESETS[name]()


@dataclasses.dataclass
class Bundle:
    preset: Preset
    gpt_config: GPTConfig
    gpt_params: dict
    vq_config: VQConfig
    vq_params: dict


def load(name: str, mesh=None) -> Bundle:
    """The bundled model; with ``mesh`` the GPT params are restored onto their shardings (the VQ
    decoder stays on this process's first device: it decodes on the writing process only)."""
    p = get(name)
    if not (p.directory / "gpt").is_dir():
        raise ValueError(f"model {name!r}: weights missing under {p.directory} (broken install?)")
    gc, gp = checkpoint.load(p.directory / "gpt", mesh=mesh)
    vc, vp = checkpoint.load(p.directory / "vq")
    return Bundle(p, gc, gp, vc, vp)

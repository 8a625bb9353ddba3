"""The bundled Fashion-MNIST model (``generate --model fashion-mnist``, the default): a VQ tokenizer and
a 2.9M-param class-conditional GPT of the LlamaGen architecture (checkpoint kinds "gpt" and "vq"),
shipped under ``sjd_jax/assets/fashion_mnist`` (no download). Trained by ``sjd-jax train-vq`` /
``train-ar``; docs/bundled-model.md."""

from __future__ import annotations

from sjd_jax.families import presets
from sjd_jax.families import Family, register

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
# Sampling defaults chosen for this model (README / docs/bundled-model.md give the measurements).
DEFAULTS = dict(cfg_scale=2.0, window=16, method="sjd", temperature=1.0, top_k=0, top_p=1.0)


def preset(model: str) -> presets.Preset:
    """Its class names and defaults; decoded 32 px images are center-cropped to Fashion-MNIST's 28."""
    return presets.Preset(model, presets.ASSETS / "fashion_mnist", CLASSES, crop=28, **DEFAULTS)


register(Family("fashion-mnist", "class", models={"fashion-mnist": {}}, defaults=DEFAULTS, bundled=True,
                preset=preset, load=presets.load_bundled,
                load_options=("param_dtype",)))

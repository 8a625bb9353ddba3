"""The demo's model: loaded once (``load``), sampled by every request (``Session.sample``).

A ``Session`` hides whether the model is class-conditional (the bundled ``fashion-mnist``, a
converted ``llamagen-c2i``) or text-to-image (``janus-pro-1b`` and the other converted families):
``sample`` takes class ids or prompts and a recipe name, and returns uint8 images plus the
sampler's ``GenerateOutput`` as host arrays. Compiles are ``sjd_jax.generate``'s own jit cache
(per sampler options and batch shape; the numeric knobs and the progress callback are traced), so a
repeated request with the same method, window and batch compiles nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger("sjd_jax")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One sampler run: ``images`` uint8 [B, H, W, 3], ``out`` a ``GenerateOutput`` of host arrays
    (tokens [B, N], nfe [B], iterations [], committed [B, N]), ``recipe`` / ``window`` what ran
    (``auto`` resolved), ``auto`` the ``tuning.Choice`` line when it was automatic, else None."""

    images: np.ndarray
    out: object
    recipe: str
    window: int
    auto: str | None = None


@dataclasses.dataclass
class Session:
    """A loaded model. ``kind``: "class" (``class_names``) or "text" (prompts). ``defaults``: the
    sampling knobs (cfg_scale, temperature, top_k, top_p) plus ``window``. ``grid``: the token grid
    (h, w), N = h * w tokens; ``vocab``: the image vocabulary (top-k's bound)."""

    name: str
    kind: str
    class_names: tuple[str, ...]
    defaults: dict
    grid: tuple[int, int]
    vocab: int
    params: dict  # the transformer's params (what the automatic choice times and learns for)
    config: object  # its GPTConfig
    # (conds, seed, keywords) -> (uint8 images [B, H, W, 3], GenerateOutput); keywords = generate's
    decode_run: Callable

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def sample(self, conds: list, seed: int, recipe: str, window, knobs: dict, progress=None) -> Sample:
        """Run ``recipe`` ("ar", a lossless recipe or "auto") at ``window`` (int or "auto") on
        ``conds`` (class ids or prompts, one per row) with ``knobs``; ``progress(done, iteration,
        row_iterations)`` is called from the compiled loop."""
        from sjd_jax import tuning
        from sjd_jax.sampling import recipes

        recipe, window, choice = self.pick(recipe, window, knobs, len(conds))
        kw = dict(recipes.recipe(recipe, window), window=1 if recipe == "ar" else window)
        if choice is not None and recipe != "ar":
            kw["init"] = choice.init
        images, out = self.decode_run(conds, seed, dict(kw, progress=progress, **knobs))
        images = np.asarray(images)
        if images.shape[-1] == 1:  # grey models (Fashion-MNIST): RGB like every other model
            images = np.repeat(images, 3, axis=-1)
        if recipe != "ar":  # what the next automatic choice for this model and these knobs learns from
            tuning.observe(self.params, self.config, knobs, recipe, window, kw.get("init", "uniform"), out.nfe)
        return Sample(images, out, recipe, int(kw["window"]), None if choice is None else choice.line())

    def pick(self, recipe: str, window, knobs: dict, batch: int):
        """-> (recipe, window, ``tuning.Choice`` or None): "auto" replaced by the predicted fastest
        lossless choice (``sjd_jax.tuning.choose``) for this batch; a recipe without acceptance
        statistics keeps the model's default window, as the CLI does."""
        from sjd_jax.tuning import acceptance, choose

        if recipe != "auto" and window != "auto":
            return recipe, int(window), None
        if recipe == "ar":
            return recipe, 1, None
        known = {c.method for c in acceptance.load_prior()["cells"]}
        if recipe != "auto" and recipe not in known:
            return recipe, int(self.defaults["window"]), None
        choice = choose(self.params, self.config, batch, knobs, methods=None if recipe == "auto" else [recipe],
                        windows=None if window == "auto" else [int(window)])
        log.info(choice.line())
        return choice.method, choice.window, choice


def load(model: str = "fashion-mnist", ckpt: Path | str | None = None) -> Session:
    """The demo's one model loader: a bundled class-conditional model by name, or a converted
    checkpoint directory ``ckpt`` (``llamagen-c2i``: DIR/gpt + DIR/vq; a text-to-image model such as
    ``janus-pro-1b``), or a hub name without ``ckpt`` (``janus-pro-1b``, ``llamagen-c2i-b-256``: fetched
    and converted the first time, ``sjd_jax.from_pretrained``). ValueError for an unknown name or a
    missing ``ckpt``."""
    from sjd_jax.families import pipelines, presets
    from sjd_jax.families.loader import cli_model

    model, ckpt = cli_model(model, ckpt)

    if model in pipelines.TEXT_MODELS:
        if ckpt is None:
            raise ValueError(f"--model {model} needs --ckpt DIR (a converted checkpoint: sjd-jax convert)")
        return _text_session(model, pipelines.load(model, ckpt))
    if model in presets.CKPT_MODELS:
        if ckpt is None:
            raise ValueError(f"--model {model} needs --ckpt DIR (DIR/gpt + DIR/vq: sjd-jax convert)")
        return _class_session(model, presets.from_checkpoint(model, ckpt))
    if model in presets.PRESETS:
        if ckpt is not None:
            raise ValueError(f"--ckpt is for converted checkpoints; {model} is bundled")
        return _class_session(model, presets.load(model))
    raise ValueError(f"unknown model {model!r}; choose a bundled model ({', '.join(presets.PRESETS)}), a converted "
                     f"class-conditional one ({', '.join(presets.CKPT_MODELS)}) or a text-to-image one "
                     f"({', '.join(pipelines.TEXT_MODELS)})")


def _class_session(name: str, bundle) -> Session:
    """A class-conditional ``presets.Bundle``: ``sjd_jax.sampling.generate`` + the VQ decoder
    (jit-compiled once per batch shape), centre-cropped by the preset (Fashion-MNIST: 32 -> 28)."""
    import jax
    import jax.numpy as jnp

    from sjd_jax.core.vq import decode_tokens, to_uint8
    from sjd_jax.sampling import generate

    c, p = bundle.gpt_config, bundle.preset
    decode = jax.jit(lambda vq_params, tokens: decode_tokens(vq_params, bundle.vq_config, tokens, c.grid_size))

    def run(labels: list, seed: int, keywords: dict):
        out = generate(bundle.gpt_params, c, jnp.asarray(labels, jnp.int32), seed, **keywords)
        out = jax.device_get(out)  # GenerateOutput of numpy arrays
        return p.cropped(to_uint8(decode(bundle.vq_params, jnp.asarray(out.tokens)))), out  # [B, H, W, C]

    defaults = dict(p.knobs(), window=p.window)
    return Session(name, "class", tuple(p.class_names), defaults, tuple(c.grid_size), int(c.vocab_size),
                   bundle.gpt_params, c, run)


def _text_session(name: str, tm) -> Session:
    """A ``pipelines.TextModel``: its own ``generate(texts, seed, **sampling)`` (prompt template,
    CFG form and decoder are the family's)."""
    import jax

    def run(texts: list, seed: int, keywords: dict):
        images, out = tm.generate(list(texts), seed, **keywords)
        return np.asarray(images), jax.device_get(out)

    c = tm.gpt_config
    return Session(name, "text", (), dict(tm.defaults, window=16), tuple(c.grid_size), int(c.vocab_size),
                   tm.gpt_params, c, run)

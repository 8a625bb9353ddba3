"""``sjd_jax.from_pretrained``: a model by hub name, hub repo or converted directory, ready to sample.

A name (``janus-pro-1b``, ``llamagen-c2i-b-256``: ``families.pretrained_names()``) or its first hub
repo (``deepseek-community/Janus-Pro-1B``) is fetched and converted once
(``sjd_jax.convert.hub.checkpoint_dir``); a directory is a converted checkpoint. Class-conditional
models load as ``presets.Bundle``, text-to-image ones as ``pipelines.TextModel``.
"""

from __future__ import annotations

from pathlib import Path

from sjd_jax.core import registry as families  # (not the sjd_jax.families package: no import cycle)


def _hub():
    """``sjd_jax.convert.hub``, reached by name like the registry's converters: the converters'
    package sits above the families and is loaded only when a conversion may run."""
    import importlib

    return importlib.import_module("sjd_jax.convert.hub")


def resolve(name_or_dir, model: str | None = None, *, refresh: bool = False, quiet: bool = False) -> tuple[str, Path]:
    """(``generate --model`` name, converted checkpoint directory) for ``name_or_dir``.

    A directory: a converted cache entry (or its ``ckpt``), whose manifest names the model, or any
    converted checkpoint with ``model`` given. A hub name or repo: fetched and converted unless its
    conversion is cached (``refresh``: convert again)."""
    hub = _hub()
    path = Path(name_or_dir)
    if path.is_dir():
        for entry in (path, path.parent):
            m = hub.manifest(entry)
            if m is not None and (entry / "ckpt").is_dir() and (entry == path or path.name == "ckpt"):
                return model or m["model"], entry / "ckpt"
        if model is None:
            raise ValueError(f"{path}: a converted checkpoint directory needs model= (one of "
                             f"{', '.join(families.model_names(bundled=False))})")
        return model, path
    name = str(name_or_dir)
    if name not in families.pretrained_names():
        by_repo = [p.name for f in families.entries() for p in f.pretrained if p.steps[0].repo.lower() == name.lower()]
        if len(by_repo) > 1:
            raise ValueError(f"{name} holds several models; choose one of {', '.join(by_repo)}")
        if not by_repo:
            raise ValueError(f"{name!r} is neither a directory nor a pretrained model; choose one of "
                             f"{', '.join(families.pretrained_names())} (or their hub repos)")
        name = by_repo[0]
    resolved, ckpt = hub.checkpoint_dir(name, refresh=refresh, quiet=quiet)
    if model is not None and model != resolved:
        raise ValueError(f"{name} loads as {resolved}, not model={model}")
    return resolved, ckpt


def from_pretrained(name_or_dir, *, model: str | None = None, param_dtype: str = "auto", mesh=None,
                    refresh: bool = False, quiet: bool = False):
    """The model ``name_or_dir`` (see ``resolve``), loaded: a ``presets.Bundle`` (class-conditional:
    ``sjd_jax.generate(b.gpt_params, b.gpt_config, classes, seed)``) or a ``pipelines.TextModel``
    (``tm.generate(prompts, seed)`` -> images, output). ``param_dtype`` as ``presets.from_checkpoint``."""
    from sjd_jax.families import pipelines, presets

    name, ckpt = resolve(name_or_dir, model, refresh=refresh, quiet=quiet)
    if name in families.model_names("text"):
        return pipelines.load(name, ckpt, mesh=mesh, param_dtype=param_dtype)
    return presets.from_checkpoint(name, ckpt, mesh=mesh, param_dtype=param_dtype)


def cli_model(model: str, ckpt, quiet: bool = False) -> tuple[str, Path | None]:
    """``--model``/``--ckpt`` of ``generate`` and ``demo``: a hub name with no ``--ckpt`` becomes its
    converted checkpoint (fetched and converted the first time); anything else stays as given."""
    if ckpt is not None or model not in families.pretrained_names():
        return model, ckpt
    return resolve(model, quiet=quiet)

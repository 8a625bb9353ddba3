"""Model families as plug-ins: one registry of what each family brings, looked up by name.

It lives with the model (``core``) so that checkpoints (``io``) can look kinds up without
depending on the families themselves; ``sjd_jax.families`` re-exports it.

A family module ``sjd_jax/families/<module>.py`` calls ``register(Family(...))`` when imported: its
checkpoint kinds (config class, abstract params), its ``generate --model`` names and their loader,
its sampling defaults and its ``sjd-jax convert --family`` entries. The modules of ``MODULES`` are
imported on the first lookup, so ``checkpoint``, ``presets``, ``pipelines`` and ``sjd-jax convert``
reach every family through this registry and name none. Adding a family: docs/models.md.

Converters are named by ``"module:function"`` (e.g. ``"sjd_jax.convert.cli:convert_janus"``), imported only
when one runs: ``sjd_jax`` never imports torch.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

# One line per family module (sjd_jax/families/<module>.py), imported on the first lookup.
MODULES = ("fashion_mnist", "llamagen_c2i", "llamagen_t2i", "janus", "lumina", "emu3")
TASKS = ("class", "text")  # class ids -> images (presets.Bundle), prompts -> images (pipelines.TextModel)


@dataclasses.dataclass(frozen=True)
class Kind:
    """A checkpoint kind: the ``"kind"`` of a checkpoint's config.json and how to read it."""

    name: str
    config: type  # its config dataclass (``from_dict`` classmethod if it has one, else ``config.from_dict``)
    abstract: Callable[[Any], Any]  # config -> params tree of jax.ShapeDtypeStruct
    # On a mesh: every device holds all params (run once per prompt/image) instead of sharding.RULES
    replicated: bool = False

    def read_config(self, d):
        """The config from a config.json ``"config"`` entry; each bad field is one ValueError."""
        if hasattr(self.config, "from_dict"):
            return self.config.from_dict(d)
        from sjd_jax.core.config import from_dict

        return from_dict(self.config, d, self.name)


@dataclasses.dataclass(frozen=True)
class HubStep:
    """One ``sjd-jax convert`` run of a pretrained model: ``convert --family family`` over files of
    the hub repo ``repo`` into ``out`` (a subdirectory of the converted checkpoint; "" = itself).

    ``files``: the exact files to fetch (each a path inside the repo); empty: the repo is an
    HF-format snapshot, fetched by ``SNAPSHOT_FILES``. ``flags``: further convert flags, each a
    value or a ``"hub:REPO:FILE"`` file fetched like the others (e.g. ``--vqgan``)."""

    family: str
    repo: str
    files: tuple[str, ...] = ()
    out: str = ""
    flags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    dtype: str = "float32"  # --param-dtype: the sources' own dtype, so the conversion loses nothing


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model by hub name: what ``from_pretrained(name)`` / ``generate --model name`` fetch and
    convert, loaded as the ``generate --model`` name ``model``."""

    name: str
    model: str
    steps: tuple[HubStep, ...]


# An HF-format snapshot: the files the converters read (hf_files), not the .bin / msgpack duplicates
SNAPSHOT_FILES = ("*.json", "*.safetensors", "*.model", "*.txt")


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    ``load(family, model, ckpt, *, mesh=None, **options) -> presets.Bundle`` (task "class") or
    ``pipelines.TextModel`` (task "text"); ``models[model]`` holds that model's own settings (e.g. an
    image size); ``ckpt`` is None for bundled models. ``preset(model) -> presets.Preset``: bundled
    models only (no weights read). ``load_options``: keyword options of ``load`` beyond ``mesh``
    (e.g. ``t5``)."""

    name: str  # its main ``convert --family`` name where it has one
    task: str  # one of TASKS
    kinds: tuple[Kind, ...] = ()  # checkpoint kinds this family defines
    models: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # generate --model
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # sampling: cfg_scale, top_k ...
    load: Callable | None = None
    load_options: tuple[str, ...] = ()
    bundled: bool = False  # weights ship inside the package (no --ckpt)
    preset: Callable | None = None
    converters: Mapping[str, str] = dataclasses.field(default_factory=dict)  # convert --family -> "mod:fn"
    pretrained: tuple[Pretrained, ...] = ()  # hub names (from_pretrained, generate --model without --ckpt)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"family {self.name!r}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.models and self.load is None:
            raise ValueError(f"family {self.name!r} has models but no load")
        if self.bundled and self.preset is None:
            raise ValueError(f"bundled family {self.name!r} needs preset")
        for target in self.converters.values():
            if not isinstance(target, str) or target.count(":") != 1:
                raise ValueError(f"family {self.name!r}: converter {target!r} must be 'module:function'")
        for p in self.pretrained:
            if p.model not in self.models:
                raise ValueError(f"family {self.name!r}: pretrained {p.name!r} loads as unknown model {p.model!r}")
            if not p.steps or any(s.repo.count("/") != 1 for s in p.steps):
                raise ValueError(f"family {self.name!r}: pretrained {p.name!r} needs steps with 'ORG/NAME' repos")


_FAMILIES: dict[str, Family] = {}
_imported = False


def _discover() -> None:
    """Import every module of ``MODULES`` once (each registers its families)."""
    global _imported
    if _imported:
        return
    _imported = True
    try:
        for module in MODULES:
            importlib.import_module(f"sjd_jax.families.{module}")
    except BaseException:
        _imported = False
        raise


def register(family: Family, replace: bool = False) -> Family | None:
    """Add ``family``; its name, kinds, model and converter names must be new (``replace``: an
    entry of the same name is replaced, and returned). Returns the replaced entry or None."""
    if not isinstance(family, Family):
        raise TypeError(f"register takes a Family, got {type(family).__name__}")
    old = _FAMILIES.get(family.name)
    if old is not None and not replace:
        raise ValueError(f"family {family.name!r} is already registered")
    others = [f for f in _FAMILIES.values() if f.name != family.name]
    for what, mine, taken in (
            ("checkpoint kind", [k.name for k in family.kinds], {k.name for f in others for k in f.kinds}),
            ("model", list(family.models), {m for f in others for m in f.models}),
            ("converter", list(family.converters), {c for f in others for c in f.converters}),
            ("pretrained name", [p.name for p in family.pretrained], {p.name for f in others for p in f.pretrained})):
        clash = [n for n in mine if n in taken] or [n for i, n in enumerate(mine) if n in mine[:i]]
        if clash:
            raise ValueError(f"family {family.name!r}: {what} {clash[0]!r} is already registered")
    _FAMILIES[family.name] = family
    return old


def unregister(name: str) -> Family:
    """Remove and return the family ``name`` (tests)."""
    return _FAMILIES.pop(get(name).name)


def entries() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    _discover()
    return tuple(_FAMILIES.values())


def names() -> tuple[str, ...]:
    return tuple(f.name for f in entries())


def get(name: str) -> Family:
    """The family ``name``; ValueError naming the registered ones otherwise."""
    _discover()
    if name not in _FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def kind_names() -> tuple[str, ...]:
    """Every registered checkpoint kind."""
    return tuple(k.name for f in entries() for k in f.kinds)


def kind(name: str) -> Kind:
    """The checkpoint kind ``name``; ValueError otherwise."""
    for f in entries():
        for k in f.kinds:
            if k.name == name:
                return k
    raise ValueError(f"unknown checkpoint kind {name!r}; choose one of {', '.join(kind_names())}")


def for_kind(name: str) -> Family:
    """The family that defines checkpoint kind ``name``."""
    k = kind(name)
    return next(f for f in entries() if k in f.kinds)


def model_names(task: str | None = None, bundled: bool | None = None) -> tuple[str, ...]:
    """``generate --model`` names, optionally of one task and bundled or not."""
    return tuple(m for f in entries() if task in (None, f.task) and bundled in (None, f.bundled) for m in f.models)


def for_model(name: str) -> Family:
    """The family of the ``generate --model`` name ``name``; ValueError otherwise."""
    for f in entries():
        if name in f.models:
            return f
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")


def pretrained_names() -> tuple[str, ...]:
    """Hub names (``from_pretrained``, ``generate --model`` without ``--ckpt``)."""
    return tuple(p.name for f in entries() for p in f.pretrained)


def pretrained(name: str) -> Pretrained:
    """The hub entry ``name``; ValueError naming the known ones otherwise."""
    for f in entries():
        for p in f.pretrained:
            if p.name == name:
                return p
    raise ValueError(f"unknown pretrained model {name!r}; choose one of {', '.join(pretrained_names())}")


def converter_names() -> tuple[str, ...]:
    """``sjd-jax convert --family`` names."""
    return tuple(c for f in entries() for c in f.converters)


def converter(name: str) -> Callable:
    """The converter function of ``convert --family name``: ``(srcs, out, args) -> summary dict``.
    Imports its module now (torch only then)."""
    for f in entries():
        if name in f.converters:
            module, _, function = f.converters[name].partition(":")
            return getattr(importlib.import_module(module), function)
    raise ValueError(f"unknown family {name!r}; choose one of {', '.join(converter_names())}")


__all__ = ["Family", "HubStep", "Kind", "MODULES", "Pretrained", "SNAPSHOT_FILES", "TASKS", "converter",
           "converter_names", "entries", "for_kind", "for_model", "get", "kind", "kind_names", "model_names", "names",
           "pretrained", "pretrained_names", "register", "unregister"]

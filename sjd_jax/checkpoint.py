"""sjd-jax checkpoints: an orbax params directory plus a small JSON config, written atomically.

Layout of ``DIR``: ``config.json`` ({"format", "version", "kind", "config"}) and ``params/`` (orbax);
kinds "janus", "t5", "lumina" and "emu3" also hold the source checkpoint's ``tokenizer.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax

from .config import GPTConfig, check_fields
from .model import abstract_params
from .vq import VQConfig, abstract_vq_params

FORMAT, VERSION = "sjd-jax", 1
KINDS = ("gpt", "vq", "janus", "t5", "lumina", "emu3")


def _abstract(kind: str, config):
    if kind == "t5":
        from .text import abstract_t5_params

        return abstract_t5_params(config)
    if kind == "gpt":
        return abstract_params(config)
    if kind == "janus":
        from .janus import abstract_janus_params

        return abstract_janus_params(config)
    if kind == "lumina":
        from .lumina import abstract_lumina_params

        return abstract_lumina_params(config)
    if kind == "emu3":
        from .emu3 import abstract_emu3_params

        return abstract_emu3_params(config)
    return abstract_vq_params(config)


def config_from_dict(kind: str, d: dict):
    if kind == "t5":
        from .text import T5Config

        return T5Config.from_dict(d)
    if kind == "janus":
        from .janus import JanusConfig

        return JanusConfig.from_dict(d)
    if kind == "lumina":
        from .lumina import LuminaConfig

        return LuminaConfig.from_dict(d)
    if kind == "emu3":
        from .emu3 import Emu3Config

        return Emu3Config.from_dict(d)
    cls = {"gpt": GPTConfig, "vq": VQConfig}[kind]
    check_fields(cls, d, kind)
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**d)


def save(path, kind: str, config, params, *, force: bool = False, extra_files=None) -> Path:
    """Write ``params`` (must match ``config``) to ``path``; refuses to overwrite unless ``force``.

    ``extra_files``: ``{name: source path}`` copied into the directory (e.g. ``tokenizer.json``).
    Everything is written to a temporary sibling directory and renamed when complete, so a failed
    or interrupted write leaves no half-written checkpoint.
    """
    from orbax.checkpoint import v1 as ocp

    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {', '.join(KINDS)}")
    path = Path(path).absolute()
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force (force=True) to overwrite it")
    want = jax.tree_util.tree_structure(_abstract(kind, config))
    if jax.tree_util.tree_structure(params) != want:
        raise ValueError("params do not match the config's parameter tree")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        # jax arrays: orbax writes them without another host copy (numpy leaves cost ~2x more),
        # and bounded write concurrency keeps its buffers near 2x the largest leaf, not 1x the model.
        params = jax.tree.map(jax.device_put, params)
        budget = max(2 * max(x.nbytes for x in jax.tree.leaves(params)), 64 << 20)
        ctx = ocp.Context(memory_options=ocp.options.MemoryOptions(
            write_concurrent_bytes=budget, transfer_concurrent_bytes=budget))
        with ctx:
            ocp.save(tmp / "params", params)
        meta = {"format": FORMAT, "version": VERSION, "kind": kind, "config": dataclasses.asdict(config)}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1))
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def kind_of(path) -> str | None:
    """The ``kind`` of the sjd-jax checkpoint at ``path``, or None if it is not one (no weights read)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def require_kind(path, want: str, family: str) -> None:
    """Fail unless ``path`` holds a ``want`` checkpoint; the message names the convert command."""
    kind = kind_of(path)
    if kind is None:
        raise ValueError(f"{path} is not an sjd-jax checkpoint; make one with: sjd-jax convert --family "
                         f"{family} <downloaded files> --out {path}")
    if kind != want:
        raise ValueError(f"{path} holds a {kind!r} checkpoint, not {want!r} (sjd-jax convert --family {family})")


def load(path, sharding=None, mesh=None):
    """``path`` -> ``(config, params)``. Params land on ``sharding`` (default: the first device),
    or with ``mesh`` on their ``sharding.RULES`` shardings: orbax restores each leaf straight into
    its shards (each process reads only what its devices hold; no full host copy first)."""
    from orbax.checkpoint import v1 as ocp

    path = Path(path).absolute()  # orbax refuses relative paths
    meta_file = path / "config.json"
    if not meta_file.is_file() or not (path / "params").is_dir():
        raise ValueError(f"{path} is not an sjd-jax checkpoint (needs config.json and params/)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT or meta.get("kind") not in KINDS:
        raise ValueError(f"{meta_file} is not an sjd-jax config (format/kind missing)")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{path} has format version {meta['version']}; this sjd-jax reads <= {VERSION}")
    config = config_from_dict(meta["kind"], meta["config"])
    shapes = _abstract(meta["kind"], config)
    if mesh is not None:
        if sharding is not None:
            raise ValueError("pass sharding or mesh, not both")
        from . import sharding as shd

        if meta["kind"] in ("vq", "t5"):  # run once per prompt/image: replicated
            target = jax.tree.map(lambda _: shd.replicated(mesh), shapes)
        else:
            target = shd.param_shardings(shapes, mesh)
    else:
        one = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda _: one, shapes)
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, target)
    return config, ocp.load(path / "params", abstract)

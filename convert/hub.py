"""Pretrained models from the Hugging Face hub: fetch the files, convert them once, reuse the result.

``checkpoint_dir(name)`` is what ``sjd_jax.from_pretrained(name)``, ``sjd-jax generate --model name``
(without ``--ckpt``) and ``sjd-jax demo --model name`` run: the hub entry ``name`` (the model
families' ``pretrained`` lines, the README's "Supported checkpoints" table) lists the exact files of
each ``sjd-jax convert`` step; they are fetched with ``huggingface_hub`` (an optional dependency:
``pip install 'sjd-jax[hub]'``) into its own cache, converted by the same converters as ``sjd-jax
convert`` (bounded memory) into ``cache_root()/pretrained/NAME`` and loaded from there on every later
call, with no network. The converted directory is written through ``atomic.directory``: it appears
whole or not at all, next to ``sjd-jax-pretrained.json`` (the model, the repos and the commits
converted).

Offline: ``HF_HUB_OFFLINE=1`` (read at each call) fetches from the local hub cache only
(``HF_HUB_CACHE``, else huggingface_hub's default), so a hub cache filled on another machine works
with no network. ``convert --from-hub REPO[:FILE]`` and ``--vqgan hub:REPO:FILE`` use ``fetch``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

MANIFEST = "sjd-jax-pretrained.json"
HUB_PREFIX = "hub:"  # a convert flag's value fetched from the hub: hub:ORG/NAME:PATH/IN/REPO
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"/snapshots/([0-9a-f]{40})(/|$)")


def cache_root() -> Path:
    """Where converted models live: ``$SJD_JAX_CACHE``, else ``$XDG_CACHE_HOME/sjd-jax``, else
    ``~/.cache/sjd-jax``."""
    if os.environ.get("SJD_JAX_CACHE"):
        return Path(os.environ["SJD_JAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sjd-jax"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, but read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def parse_spec(text: str) -> tuple[str, str | None]:
    """``"ORG/NAME"`` -> (repo, None) (a snapshot); ``"ORG/NAME:PATH"`` -> (repo, PATH)."""
    repo, sep, file = str(text).partition(":")
    if not _REPO.match(repo) or (sep and not file.strip("/")):
        raise ValueError(f"hub reference {text!r}: expected ORG/NAME or ORG/NAME:FILE")
    return repo, (file.strip("/") if sep else None)


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ValueError("loading from the hub needs huggingface_hub: pip install 'sjd-jax[hub]'") from None
    return huggingface_hub


def _fetch_error(hub, repo: str, what: str, e: Exception) -> ValueError:
    """One line for a failed fetch (the hub's messages run to several lines)."""
    errors = hub.errors
    if isinstance(e, errors.LocalEntryNotFoundError):
        why = ("not in the local hub cache and HF_HUB_OFFLINE is set" if offline()
               else "not in the local hub cache and the hub cannot be reached")
    elif isinstance(e, errors.GatedRepoError):
        why = "gated: accept its terms on huggingface.co, then log in (hf auth login) or set HF_TOKEN"
    elif isinstance(e, errors.RepositoryNotFoundError):
        why = "no such repository (or a private one: log in with hf auth login)"
    elif isinstance(e, errors.RevisionNotFoundError):
        why = "no such revision"
    elif isinstance(e, errors.EntryNotFoundError):
        why = "no such file in the repository"
    else:
        why = " ".join(str(e).split())[:300] or type(e).__name__
    return ValueError(f"{repo}: {what}: {why}")


def fetch(repo: str, files=(), revision: str | None = None) -> list[Path]:
    """The local paths of ``files`` of hub repo ``repo`` (downloaded unless cached); no files: its
    HF-format snapshot directory (``SNAPSHOT_FILES``). ValueError, one line, when they can't be had."""
    from sjd_jax.families import SNAPSHOT_FILES

    hub = _hub()
    where = dict(revision=revision, cache_dir=os.environ.get("HF_HUB_CACHE") or None, local_files_only=offline())
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)  # its retry warnings would break the one-line error; the error says why
    try:
        if not files:
            return [Path(hub.snapshot_download(repo, allow_patterns=list(SNAPSHOT_FILES), **where))]
        return [Path(hub.hf_hub_download(repo, f, **where)) for f in files]
    except (OSError, ValueError, hub.errors.HfHubHTTPError, hub.errors.EntryNotFoundError) as e:
        raise _fetch_error(hub, repo, ", ".join(files) or "snapshot", e) from e
    finally:
        log.setLevel(level)


def commit_of(path: Path) -> str | None:
    """The commit a hub-cache path belongs to (``.../snapshots/COMMIT/...``)."""
    m = _COMMIT.search(str(path))
    return m.group(1) if m else None


def resolve_flag(value):
    """A convert flag's value: ``hub:ORG/NAME:FILE`` -> the fetched file's path; others as given."""
    if value is None or not str(value).startswith(HUB_PREFIX):
        return value
    repo, file = parse_spec(str(value)[len(HUB_PREFIX):])
    return fetch(repo, () if file is None else (file,))[0]


def manifest(entry: Path) -> dict | None:
    """The manifest of a converted cache entry, or None (absent or unreadable: convert again)."""
    try:
        d = json.loads((Path(entry) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("format") == "sjd-jax-pretrained" else None


def _ours(entry: Path) -> bool:
    """Whether ``entry`` is a conversion of this module (its manifest, or, the manifest lost, nothing
    but sjd-jax checkpoints under ``ckpt``): the only directory a new conversion may replace."""
    from sjd_jax.io import checkpoint

    if manifest(entry) is not None:
        return True
    ckpt = entry / "ckpt"
    if {p.name for p in entry.iterdir()} - {"ckpt", MANIFEST} or not ckpt.is_dir() or ckpt.is_symlink():
        return False
    return checkpoint.is_checkpoint(ckpt) or all(checkpoint.is_checkpoint(d) for d in ckpt.iterdir())


def entry_dir(name: str) -> Path:
    return cache_root() / "pretrained" / name


def checkpoint_dir(name: str, *, refresh: bool = False, quiet: bool = False) -> tuple[str, Path]:
    """(``generate --model`` name, converted checkpoint directory) of the hub entry ``name``: the
    cached conversion, or (none yet, or ``refresh``) the files fetched and converted now."""
    from sjd_jax import families

    p = families.pretrained(name)
    entry = entry_dir(name)
    if not refresh and manifest(entry) is not None and (entry / "ckpt").is_dir():
        return p.model, entry / "ckpt"
    sources = [(step, fetch(step.repo, step.files), {k: resolve_flag(v) for k, v in step.flags.items()})
               for step in p.steps]
    _check_space(entry, [x for _, srcs, flags in sources for x in [*srcs, *flags.values()] if isinstance(x, Path)])
    from sjd_jax.io import atomic

    with atomic.directory(entry, replace=True, owned=_ours, what="sjd-jax pretrained cache entry") as tmp:
        done = []
        for step, srcs, flags in sources:
            out = tmp / "ckpt" / step.out if step.out else tmp / "ckpt"
            out.parent.mkdir(parents=True, exist_ok=True)
            if not quiet:
                print(f"converting {step.repo} ({step.family}) for {name} into {entry}", file=sys.stderr)
            _convert(step, srcs, flags, out, quiet)
            done.append({"family": step.family, "repo": step.repo, "files": list(step.files), "out": step.out,
                         "commit": commit_of(srcs[0]), "dtype": step.dtype})
        atomic.write_json(tmp / MANIFEST, {"format": "sjd-jax-pretrained", "name": name, "model": p.model,
                                           "steps": done}, indent=1)
    return p.model, entry / "ckpt"


def _convert(step, srcs: list[Path], flags: dict, out: Path, quiet: bool) -> dict:
    """``sjd-jax convert --family step.family SRCS --out out`` with the step's flags."""
    from sjd_jax.convert import cli

    argv = ["--family", step.family, *map(str, srcs), "--out", str(out), "--param-dtype", step.dtype]
    for flag, value in flags.items():
        argv += [flag, str(value)]
    args = cli.parse_args(argv + (["--quiet"] if quiet else []))
    return cli.convert(args.family, args.src, args.out, args)


def _size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _check_space(entry: Path, sources: list[Path]) -> None:
    """Before converting: the converted files take about what the sources do (same dtype)."""
    need = sum(_size(s) for s in sources)
    parent = entry.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < need * 1.05:
        raise ValueError(f"{parent}: {_human(free)} free, converting needs about {_human(need)} "
                         "(set SJD_JAX_CACHE to a larger disk)")


def _human(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

"""sjd-jax checkpoints: an orbax params directory plus a small JSON config, written atomically.

Layout of ``DIR``: ``config.json`` ({"format", "version", "kind", "config"}) and ``params/`` (orbax);
text-to-image kinds also hold the source checkpoint's ``tokenizer.json``. Each kind (its config class
and parameter tree) is defined by a model family (``sjd_jax.families``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import jax

from sjd_jax.core import precision
from sjd_jax.core import registry as families
from sjd_jax.io import atomic
from sjd_jax.io import integrity
from sjd_jax.parallel import memory

FORMAT, VERSION = "sjd-jax", 1


def __getattr__(name: str):
    if name == "KINDS":  # every registered checkpoint kind
        return families.kind_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _abstract(kind: str, config):
    return families.kind(kind).abstract(config)


def config_from_dict(kind: str, d: dict):
    """The config of a ``kind`` checkpoint from its config.json entry; every type or range problem
    is one ``ValueError`` naming the field (``config.from_dict``)."""
    return families.kind(kind).read_config(d)


def _meta_or_none(path) -> dict | None:
    """``path/config.json`` as a dict, or None (missing, unreadable, not a JSON object)."""
    try:
        meta = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_checkpoint(path) -> bool:
    """Whether ``path`` holds a directory sjd-jax wrote (its ``config.json`` says format "sjd-jax"):
    the only kind of non-empty directory ``force`` may replace."""
    return (_meta_or_none(path) or {}).get("format") == FORMAT


def save(path, kind: str, config, params, *, force: bool = False, extra_files=None) -> Path:
    """Write ``params`` (must match ``config``) to ``path``; refuses to overwrite unless ``force``,
    and ``force`` replaces only an sjd-jax checkpoint or an empty directory.

    ``extra_files``: ``{name: source path}`` copied into the directory (e.g. ``tokenizer.json``).
    Written through ``atomic.directory``: a failed or interrupted write leaves no half-written
    checkpoint, and a replaced one is swapped atomically (the old or the new one is always there).
    ``config.json`` records a checksum per leaf (``integrity``), verified by ``load``.
    """
    want = jax.tree_util.tree_structure(_abstract(kind, config))  # (ValueError for an unknown kind)
    if jax.tree_util.tree_structure(params) != want:
        raise ValueError("params do not match the config's parameter tree")
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "config": dataclasses.asdict(config)}
    part = transformer_part(config)
    if part is not None:  # the dtype the transformer is stored in (float32 or bfloat16)
        meta["param_dtype"] = precision.dtype_of(_subtree(params, part))
    return write(path, meta, params, force=force, extra_files=extra_files)


def transformer_part(config) -> tuple[str, ...] | None:
    """Where a checkpoint's transformer params are (the part ``param_dtype`` casts): ``()`` (the
    whole tree) for a ``GPTConfig``, ``("gpt",)`` for a family config with a ``gpt`` GPTConfig field
    (Janus, Lumina, Emu3), None for the rest (VQ decoders, T5): they stay as stored."""
    from sjd_jax.core.config import GPTConfig

    if isinstance(config, GPTConfig):
        return ()
    return ("gpt",) if isinstance(getattr(config, "gpt", None), GPTConfig) else None


def stored_param_dtype(meta: dict, path) -> str:
    """The dtype a checkpoint's transformer params are stored in (config.json ``param_dtype``;
    absent: float32, as every checkpoint before bfloat16 storage)."""
    value = meta.get("param_dtype", "float32")
    try:
        return precision.check_param_dtype(value, "param_dtype", precision.STORED_DTYPES)
    except ValueError as e:
        raise ValueError(f"{Path(path) / 'config.json'}: {e}") from None


def _subtree(tree, keys: tuple[str, ...]):
    for k in keys:
        tree = tree[k]
    return tree


def _with_subtree(tree, keys: tuple[str, ...], sub):
    """``tree`` with the subtree at ``keys`` replaced by ``sub`` (dicts copied along the way)."""
    if not keys:
        return sub
    return {**tree, keys[0]: _with_subtree(tree[keys[0]], keys[1:], sub)}


def write(path, meta: dict, params, *, force: bool = False, extra_files=None) -> Path:
    """The directory of any sjd-jax params tree (checkpoints, the evaluation classifier):
    ``params/`` (orbax) + ``config.json`` (``meta`` plus the per-leaf checksums). Errors name
    ``path``, never the temporary directory; nothing is left behind."""
    path = Path(path).absolute()
    target = atomic.check_dir_target(path, force, is_checkpoint, "sjd-jax checkpoint")
    for src in (extra_files or {}).values():
        if not Path(src).is_file():
            raise ValueError(f"{src}: no such file")
    # jax arrays: orbax writes them without another host copy (numpy leaves cost ~2x more),
    # and bounded write concurrency keeps its buffers near 2x the largest leaf, not 1x the model.
    params = jax.tree.map(jax.device_put, params)
    meta = {**meta, "integrity": integrity.record(params)}
    try:
        with atomic.directory(target, replace=force, owned=is_checkpoint, what="sjd-jax checkpoint") as tmp:
            try:
                _orbax_save(tmp / "params", params)
            except OSError:
                raise
            except Exception as e:  # orbax / tensorstore wrap their I/O errors (e.g. a full disk)
                raise ValueError(f"cannot write {path}: {error_reason(e, {str(tmp): str(path)})}") from None
            (tmp / "config.json").write_text(json.dumps(meta, indent=1))
            for name, src in (extra_files or {}).items():
                shutil.copyfile(src, tmp / name)
    except OSError as e:  # name the user's path, not the temporary directory
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    return path


def _orbax_save(path: Path, params) -> None:
    from orbax.checkpoint import v1 as ocp

    budget = max(2 * max((x.nbytes for x in jax.tree.leaves(params)), default=0), 64 << 20)
    ctx = ocp.Context()
    if hasattr(ctx, "memory"):  # orbax >= 0.12: dot-notation options
        ctx.memory.write_concurrent_bytes = budget
        ctx.memory.transfer_concurrent_bytes = budget
    else:
        ctx = ocp.Context(memory_options=ocp.options.MemoryOptions(
            write_concurrent_bytes=budget, transfer_concurrent_bytes=budget))
    with ctx, _orbax_errors_are_ours():
        ocp.save(path, params)


_STATUS = re.compile(r"\b([A-Z][A-Z_]{3,}): (.*)")
_OS_ERROR = re.compile(r"\[OS error \d+: ([^\]]+)\]|(No space left on device|Disk quota exceeded|Read-only file "
                       r"system|Permission denied|Input/output error|File name too long)")


def error_reason(e: BaseException, rename: dict | None = None) -> str:
    """The most telling words of an orbax / tensorstore error chain, on one line: the operating
    system's error if one is named (a full disk...), else the root cause's status message. Paths
    in ``rename`` (e.g. a temporary directory) are shown as the path the user gave."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(str(err) for err in reversed(chain))  # the root cause first
    for old, new in (rename or {}).items():
        text = text.replace(old, new)
    for err in reversed(chain):
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
    m = _OS_ERROR.search(text)
    if m:
        return m.group(1) or m.group(2)
    for line in text.splitlines():
        m = _STATUS.search(line)
        if m:
            return f"{m.group(1)}: {m.group(2)}"[:300]
    first = text.strip().splitlines()
    return (first[0] if first else type(chain[0]).__name__)[:300]


def kind_of(path) -> str | None:
    """The ``kind`` of the sjd-jax checkpoint at ``path``, or None if it is not one (no weights read)."""
    return (_meta_or_none(path) or {}).get("kind")


def require_kind(path, want: str, family: str) -> None:
    """Fail unless ``path`` holds a ``want`` checkpoint; the message names the convert command."""
    kind = kind_of(path)
    if kind is None:
        raise ValueError(f"{path} is not an sjd-jax checkpoint; make one with: sjd-jax convert --family "
                         f"{family} <downloaded files> --out {path}")
    if kind != want:
        raise ValueError(f"{path} holds a {kind!r} checkpoint, not {want!r} (sjd-jax convert --family {family})")


def read_meta(path, kinds=None) -> dict:
    """``path/config.json`` of an sjd-jax checkpoint of one of ``kinds`` (default: every registered
    kind), checked (one-line ``ValueError`` otherwise)."""
    path = Path(path)
    known = families.kind_names()
    kinds = known if kinds is None else kinds
    meta_file = path / "config.json"
    if not meta_file.is_file() or not (path / "params").is_dir():
        raise ValueError(f"{path} is not an sjd-jax checkpoint (needs config.json and params/)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from e
    except UnicodeDecodeError:
        raise ValueError(f"{meta_file} is not valid JSON (not UTF-8 text)") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: expected a JSON object, got a {type(meta).__name__}")
    kind = meta.get("kind")
    if meta.get("format") != FORMAT or not isinstance(kind, str):
        raise ValueError(f"{meta_file} is not an sjd-jax config (format/kind missing)")
    if kind not in kinds:
        raise ValueError(f"{meta_file}: unknown checkpoint kind {kind!r} (this sjd-jax reads {', '.join(known)})"
                         if kind not in known else f"{path} holds a {kind!r} checkpoint, not "
                                                   f"{' or '.join(map(repr, kinds))}")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"{meta_file}: version must be a non-negative integer, got {version!r}")
    if version > VERSION:
        raise ValueError(f"{path} has format version {version}; this sjd-jax reads <= {VERSION}")
    if "config" in meta and not isinstance(meta["config"], dict):
        raise ValueError(f"{meta_file}: \"config\" must be a JSON object")
    return meta


def load(path, sharding=None, mesh=None, verify: bool = True, param_dtype: str | None = None):
    """``path`` -> ``(config, params)``. Params land on ``sharding`` (default: the first device),
    or with ``mesh`` on their ``sharding.RULES`` shardings: orbax restores each leaf straight into
    its shards (each process reads only what its devices hold; no full host copy first).

    ``param_dtype``: None (as stored), or one of ``precision.PARAM_DTYPES`` ("auto" resolved by
    ``precision.resolve_param_dtype`` for the transformer's size and the target devices' backend):
    the transformer's float leaves are restored in that dtype (orbax casts on read), and with
    bfloat16 params the returned config computes in bfloat16 too. Checkpoints without a
    transformer (VQ, T5) load as stored whatever ``param_dtype`` says.

    ``verify``: check every leaf against the checkpoint's checksums (of the bytes on disk, whatever
    dtype they are restored in) and for NaN/inf (``ValueError`` naming the leaf); damaged or missing
    data files are one ``ValueError`` too."""
    if param_dtype is not None:
        precision.check_param_dtype(param_dtype)
    path = Path(path).absolute()  # orbax refuses relative paths
    if not path.exists():
        atomic.sweep(path.parent, force=True)  # a replacement killed between its two renames
    meta = read_meta(path)
    if "config" not in meta:
        raise ValueError(f"{path / 'config.json'} has no \"config\" entry")
    try:
        config = config_from_dict(meta["kind"], meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / 'config.json'}: {e}") from None
    shapes = _abstract(meta["kind"], config)
    if mesh is not None and sharding is not None:
        raise ValueError("pass sharding or mesh, not both")
    if mesh is not None:
        from sjd_jax.parallel import sharding as shd

        if families.kind(meta["kind"]).replicated:  # run once per prompt/image (VQ, T5)
            target = jax.tree.map(lambda _: shd.replicated(mesh), shapes)
        else:
            target = shd.param_shardings(shapes, mesh)
    else:
        one = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda _: one, shapes)
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, target)
    part = transformer_part(config)
    if part is None:
        return config, restore(path, meta, abstract, verify)
    stored = stored_param_dtype(meta, path)
    want = stored if param_dtype is None else precision.resolve_param_dtype(
        param_dtype, n_params=sum(x.size for x in jax.tree.leaves(_subtree(shapes, part))),
        backend=precision.backend_of(sharding, mesh))
    on_disk = _with_subtree(abstract, part, precision.with_dtype(_subtree(abstract, part), stored))
    wanted = _with_subtree(abstract, part, precision.with_dtype(_subtree(abstract, part), want))
    if want == "bfloat16" and stored == "float32" and verify:  # checksums need the float32 bytes
        params = _restore_narrowed(path, meta, on_disk, wanted)
    else:  # same dtype, or widened on read (exact: the checksum is taken after casting back)
        params = restore(path, meta, wanted, verify, stored=on_disk)
    return precision.with_param_dtype(config, want), params


def restore(path: Path, meta: dict, abstract, verify: bool = True, stored=None):
    """The params of the checkpoint at ``path`` (``meta``: its ``read_meta``) into ``abstract``
    (shapes, dtypes, shardings). Refused before reading when they cannot fit in memory; any failure
    of the stored data (missing, truncated or corrupt files, a failed checksum, NaN/inf) is one
    ``ValueError`` naming ``path`` and the leaf.

    ``stored``: the same tree with the dtypes on disk, where ``abstract`` widens some (bfloat16 ->
    float32, cast by orbax on read): those leaves are checksummed after an exact cast back."""
    memory.require_tree(abstract, f"loading {path}")
    params = _ocp_load(path, abstract)
    if verify:
        integrity.verify(params, meta.get("integrity"), path, stored_dtypes=_widened(abstract, stored))
    return params


def _widened(abstract, stored) -> dict | None:
    """``{leaf key: stored dtype}`` of the leaves ``abstract`` holds in another dtype than ``stored``."""
    if stored is None:
        return None
    return {k: s.dtype for (k, a), (_, s) in zip(integrity.keyed(abstract), integrity.keyed(stored))
            if a.dtype != s.dtype}


def _ocp_load(path: Path, abstract, partial: bool = False):
    """orbax's restore of ``path/params`` into ``abstract`` (``partial``: a subset of its leaves);
    any failure is one ``ValueError`` naming ``path``."""
    from orbax.checkpoint import v1 as ocp

    ctx = ocp.Context()
    if partial:
        if hasattr(ctx, "pytree"):  # orbax >= 0.12: dot-notation options
            ctx.pytree.loading.partial_load = True
        else:
            ctx = ocp.Context(pytree_options=ocp.options.PyTreeOptions(
                loading=ocp.options.PyTreeOptions.Loading(partial_load=True)))
    try:
        with ctx, _orbax_errors_are_ours():
            return ocp.load(path / "params", abstract)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        raise ValueError(f"{path}: checkpoint data is damaged or incomplete ({error_reason(e)}); convert or copy "
                         f"it again") from None


NARROW_GROUP_BYTES = 256 << 20  # float32 bytes restored per group when narrowing (plus the largest leaf)


def _restore_narrowed(path: Path, meta: dict, stored, abstract):
    """Float32 checkpoint -> bfloat16 params with every checksum checked on the float32 bytes, in
    bounded memory: leaves are restored as stored a group at a time (``NARROW_GROUP_BYTES``), each
    group verified, cast and its float32 copy dropped before the next; never a float32 copy of the
    whole tree. ``stored`` / ``abstract``: the tree as on disk / as wanted (same shardings)."""
    pairs = list(zip(integrity.keyed(stored), integrity.keyed(abstract)))
    biggest = max((s.size * s.dtype.itemsize for (_, s), _ in pairs), default=0)
    memory.require_tree(abstract, f"loading {path}")
    keys = [k for (k, _), _ in pairs]
    out, group, size = {}, [], 0
    for n, pair in enumerate(pairs):
        group.append(pair)
        size += pair[0][1].size * pair[0][1].dtype.itemsize
        if size >= max(NARROW_GROUP_BYTES, biggest) or n == len(pairs) - 1:
            part = _ocp_load(path, _nest({k: s for (k, s), _ in group}), partial=True)
            integrity.verify(part, meta.get("integrity"), path, all_keys=keys)
            leaves = dict(integrity.keyed(part))
            for (k, _), (_, a) in group:
                out[k] = leaves.pop(k).astype(a.dtype)
            del part, leaves
            group, size = [], 0
    return _nest(out)


def _nest(flat: dict) -> dict:
    """``{"a/b/c": leaf}`` -> ``{"a": {"b": {"c": leaf}}}`` (sjd-jax params trees are nested dicts)."""
    tree: dict = {}
    for key, leaf in flat.items():
        *head, last = key.split("/")
        node = tree
        for k in head:
            node = node.setdefault(k, {})
        node[last] = leaf
    return tree


@contextlib.contextmanager
def _orbax_errors_are_ours():
    """A failed orbax read or write is reported by the caller as one line. Meanwhile orbax logs it
    with a traceback from its worker thread; its asyncio tasks log theirs again when collected
    ("Task/Future exception was never retrieved"); tensorstore callbacks that arrive after orbax closed
    its event loop print "RuntimeError: Event loop is closed" tracebacks. All of that is muted:
    absl during the call, the other two for good once installed (narrow filters)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropOrbaxTaskNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_DropOrbaxTaskNoise())
    if not getattr(sys.unraisablehook, "_sjd_jax", False):
        sys.unraisablehook = _without_closed_loop_errors(sys.unraisablehook)
    try:
        yield
    finally:
        logger.setLevel(level)


def _without_closed_loop_errors(hook):
    def unraisablehook(u):
        if not (u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed"):
            hook(u)

    unraisablehook._sjd_jax = True
    return unraisablehook


class _DropOrbaxTaskNoise(logging.Filter):
    def filter(self, record):
        msg = record.getMessage()
        return not ("exception was never retrieved" in msg.split("\n", 1)[0] and "orbax" in msg)

"""The tuning cache: JSON entries in the user's cache directory, and the keys they are found by.

Directory: ``$SJD_JAX_CACHE``, else ``$XDG_CACHE_HOME/sjd-jax``, else ``~/.cache/sjd-jax``; an
entry is ``DIR/KIND/HASH.json`` (written through ``io.atomic``). The cache only saves work: an entry
that is missing, unreadable or not what this version writes is ignored (and rewritten), and a
cache directory that cannot be written costs a note, never the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

VERSION = 1
log = logging.getLogger("sjd_jax")


def directory() -> Path:
    if os.environ.get("SJD_JAX_CACHE"):
        return Path(os.environ["SJD_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sjd-jax"


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _path(kind: str, key: dict) -> Path:
    return directory() / kind / f"{key_hash(key)}.json"


def load(kind: str, key: dict) -> dict | None:
    """The entry stored under ``key`` (a JSON-able dict), or None (absent, unreadable, another key
    with the same hash, or another version)."""
    try:
        entry = json.loads(_path(kind, key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("version") != VERSION or entry.get("key") != key:
        return None
    value = entry.get("value")
    return value if isinstance(value, dict) else None


def store(kind: str, key: dict, value: dict) -> bool:
    """Write ``value`` under ``key``; False (with one note) when the cache cannot be written."""
    from sjd_jax.io import atomic

    path = _path(kind, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, {"version": VERSION, "key": key, "value": value})
        return True
    except (OSError, ValueError) as e:
        log.info(f"note: tuning cache {directory()} not written ({e}); the choice is measured again next time")
        return False


def fingerprint(params, config) -> str:
    """A short id of a model: its config (but the prompt length) and a sample of its weights (the
    first 64 values of up to 16 leaves, in tree order), so a converted checkpoint and its retrained
    twin differ while the same weights in another directory, on another mesh or in another dtype
    agree."""
    import dataclasses

    import jax

    fields = dataclasses.asdict(config)
    fields.pop("cls_token_num", None)  # a text model's prompt length changes per call, the model does not
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in leaves:
        h.update(f"{jax.tree_util.keystr(path)}{list(leaf.shape)}".encode())
    step = max(1, len(leaves) // 16)
    sample = [leaf for _, leaf in leaves[::step][:16]]
    if all(isinstance(x, np.ndarray) or (x.is_fully_addressable and x.devices() == {jax.devices("cpu")[0]})
           for x in sample):  # host memory: read in place
        heads = [np.asarray(x).reshape(-1)[:64].astype(jax.numpy.bfloat16).astype(np.float32) for x in sample]
    else:  # one small compiled gather for all of them, then one transfer
        heads = jax.device_get(jax.jit(lambda xs: [jax.numpy.ravel(x)[:64].astype(jax.numpy.bfloat16)
                                                   .astype(jax.numpy.float32) for x in xs])(sample))
    for head in heads:  # (rounded to bfloat16: a bfloat16 copy of the same weights has the same fingerprint)
        h.update(np.asarray(head, np.float32).tobytes())
    return h.hexdigest()[:16]


def device_kind() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind}:{jax.device_count()}"

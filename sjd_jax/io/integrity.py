"""Per-leaf checksums of parameter trees, and the finite check every load runs.

A checkpoint's ``config.json`` records ``"integrity": {"algorithm": "xxh3_64", "leaves": {KEY:
HEX}}``, one digest per leaf (``KEY``: the leaf's path, e.g. ``params/layers_0/attention/wqkv/kernel``). The digest
covers the dtype, the shape and the leaf's bytes (C order, little-endian), so a flipped byte, a
truncated or swapped leaf, or a leaf restored with another shape is caught. xxh3 hashes at
~16 GB/s on one core (zlib's crc32: ~2 GB/s) and leaves are checked on a few threads, so
verifying a GPT-XL-size checkpoint (2.9 GiB) takes 0.25 s, ~5% of its load on 2 CPU cores
(``python docs/scripts/bench_load.py``).

The finite check uses ``isfinite(sum)``: a float sum is non-finite iff some element is or the sum
overflowed (then the exact per-element check decides), at ~16 GB/s instead of ~8.
"""

from __future__ import annotations

import logging
import os

import numpy as np

ALGORITHM = "xxh3_64"
log = logging.getLogger("sjd_jax")


def _host(leaf) -> np.ndarray:
    """Host view of a fully addressable leaf (zero-copy on the CPU backend)."""
    return np.asarray(leaf)


def digest(array) -> str:
    """Hex xxh3-64 of ``array``'s dtype, shape and bytes."""
    import xxhash

    a = np.ascontiguousarray(_host(array))
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    h = xxhash.xxh3_64(f"{a.dtype.name}{list(a.shape)}".encode())
    if a.size:
        h.update(memoryview(a.view(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else a).cast("B"))
    return h.hexdigest()


def keyed(tree) -> list[tuple[str, object]]:
    """``[(key, leaf)]`` of ``tree`` in leaf order; ``key``: the leaf's path joined by "/" (the
    keys of a checkpoint's integrity record)."""
    import jax

    return [("/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in k), v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)]


def _parallel(fn, items: list) -> list:
    """``[fn(x) for x in items]`` on a few threads: xxhash and numpy's sum release the GIL, so
    leaves hash side by side (2 cores: 1.8x)."""
    workers = min(8, os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


def record(tree) -> dict:
    """The ``integrity`` entry of a checkpoint's metadata for ``tree``."""
    items = keyed(tree)
    return {"algorithm": ALGORITHM, "leaves": dict(zip((k for k, _ in items), _parallel(digest, [v for _, v in items])))}


def is_finite(array) -> bool:
    a = _host(array)
    if a.dtype.kind in "iub":  # integers and bools
        return True
    if a.dtype.kind != "f" or a.dtype.itemsize < 4:  # bfloat16 / float16: sum in float32
        a = a.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(a.sum()):
            return True
    return bool(np.isfinite(a).all())


def verify(tree, entry: dict | None, where, *, all_keys=None, stored_dtypes: dict | None = None) -> None:
    """Check ``tree`` against a checkpoint's ``integrity`` entry, and that every float leaf is
    finite. ``ValueError`` naming the leaf and ``where`` on the first failure. ``entry`` None (a
    checkpoint written before checksums): finite check only, with one note on the ``sjd_jax``
    logger. Leaves spread over several processes cannot be hashed here: they get the finite
    check, computed on their devices.

    ``all_keys``: the keys of the whole checkpoint when ``tree`` is a part of it (restored a group
    at a time): the record must list exactly those, and each leaf of ``tree`` is checked.
    ``stored_dtypes``: ``{key: dtype}`` for leaves held wider than stored (bfloat16 restored as
    float32): hashed after casting back, which is exact, so the digest is still of the stored bytes."""
    leaves = keyed(tree)
    want = None
    stored_dtypes = stored_dtypes or {}
    first_part = all_keys is None or (leaves and all_keys and leaves[0][0] == next(iter(all_keys), None))
    if entry is None and not first_part:
        pass  # a later group of a part-by-part restore: the first one gave the note
    elif entry is None:
        log.warning(f"note: {where} has no checksums (written by an older sjd-jax): checked for NaN/inf "
                    f"only; convert or save it again to add them")
    else:
        if not isinstance(entry, dict) or not isinstance(entry.get("leaves"), dict):
            raise ValueError(f"{where}: config.json has a malformed integrity record")
        if entry.get("algorithm") != ALGORITHM:
            raise ValueError(f"{where}: checksums of algorithm {entry.get('algorithm')!r} (this sjd-jax knows "
                             f"{ALGORITHM}): written by a newer sjd-jax?")
        want = entry["leaves"]
        odd = sorted(set(want) ^ ({k for k, _ in leaves} if all_keys is None else set(all_keys)))
        if odd:
            raise ValueError(f"{where}: the checksum list and the parameter tree disagree at {odd[0]}"
                             + (f" and {len(odd) - 1} more" if len(odd) > 1 else ""))

    def check(item) -> tuple[str | None, bool | None]:  # (digest or None, finite; None: not here)
        key, leaf = item
        if getattr(leaf, "is_fully_addressable", True):
            if want is None:
                return None, is_finite(leaf)
            stored = stored_dtypes.get(key)
            return digest(leaf if stored is None else _host(leaf).astype(stored)), is_finite(leaf)
        return None, None

    for (key, leaf), (got, ok) in zip(leaves, _parallel(check, leaves)):
        if ok is None:  # spread over processes: a global reduction, in the same order on every process
            import jax.numpy as jnp

            ok = bool(jnp.isfinite(leaf).all()) if jnp.issubdtype(leaf.dtype, jnp.floating) else True
        if got is not None and got != want[key]:
            raise ValueError(f"{where}: parameter {key} fails its checksum: the checkpoint's data is "
                             f"damaged; convert or copy it again")
        if not ok:
            raise ValueError(f"{where}: parameter {key} holds NaN or inf: the checkpoint's data is damaged; "
                             f"convert or copy it again")

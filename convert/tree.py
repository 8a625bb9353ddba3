"""Strict assignment of converted tensors onto an abstract params tree."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

Path = tuple[str, ...]

try:  # glibc keeps freed medium-sized blocks in its arenas; hand them back between tensors
    import ctypes

    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def _release_freed_memory() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


def paths_of(abstract) -> dict[Path, jax.ShapeDtypeStruct]:
    return {tuple(str(p.key) for p in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def nest(leaves: dict[Path, object]) -> dict:
    """``{(k1, k2, ..., name): leaf}`` -> the nested dict ``{k1: {k2: {... name: leaf}}}``."""
    tree: dict = {}
    for path, leaf in leaves.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    return tree


def assign(items: Iterable[tuple[str, np.ndarray]], abstract, to_path: Callable, what: str,
           place: Callable | None = None):
    """Place ``(checkpoint_name, array)`` pairs at ``to_path(name, array) -> (path | None, array)``.

    ``path=None`` means the tensor is deliberately ignored. Fails on unused names, params filled
    twice or never, and shape mismatches. Returns a nested dict of jax arrays, or of whatever
    ``place(path, float32 array)`` returns (``convert.staging.Staging.put``: disk-backed leaves).
    """
    want = paths_of(abstract)
    out: dict[Path, jax.Array] = {}
    cpu = jax.devices("cpu")[0]  # host memory even where an accelerator is present
    unused = []
    for name, value in items:
        path, arr = to_path(name, value)
        if path is None:
            continue
        arr = np.asarray(arr, np.float32)
        if path not in want:
            unused.append(name)
            continue
        if path in out:
            raise ValueError(f"two checkpoint tensors map to {'/'.join(path)} (second: {name})")
        if arr.shape != tuple(want[path].shape):
            raise ValueError(f"shape mismatch for {name}: checkpoint {arr.shape}, "
                             f"model {tuple(want[path].shape)} at {'/'.join(path)}")
        # one tensor at a time: the re-laid-out copy goes straight to a jax array (orbax writes
        # those without another host copy) and the numpy temporaries are freed
        out[path] = (jax.device_put(np.ascontiguousarray(arr), cpu) if place is None
                     else place(path, np.ascontiguousarray(arr)))
        del arr, value
        _release_freed_memory()
    missing = sorted("/".join(p) for p in want if p not in out)
    if unused or missing:
        raise ValueError(f"{what} checkpoint does not match the config: "
                         + (f"unused keys {unused[:8]}{' ...' if len(unused) > 8 else ''}; " if unused else "")
                         + (f"unfilled params {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else ""))
    return nest(out)

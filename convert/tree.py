"""Strict assignment of converted tensors onto an abstract params tree."""

from __future__ import annotations

import re
from typing import Callable, Iterable

import jax
import numpy as np

Path = tuple[str, ...]

try:  # glibc keeps freed medium-sized blocks in its arenas; hand them back between tensors
    import ctypes

    malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    malloc_trim = None


def _release_freed_memory() -> None:
    if malloc_trim is not None:
        malloc_trim(0)


def require_finite(arr: np.ndarray, what: str) -> None:
    """Refuse a float array holding NaN or inf (a corrupt file, or weights saved after a diverged
    step), naming ``what``. Cheap: one float32 sum (~16 GB/s here) is finite unless some element is
    non-finite or the sum itself overflowed; only then is every element checked."""
    if arr.size == 0 or np.isfinite(arr.sum(dtype=np.float32)):
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))
        raise ValueError(f"{what} holds {int(bad.sum())} non-finite value(s) (NaN/inf) of {arr.size}, the first "
                         f"at index {first}: refusing to convert corrupt weights")


def count_indexed(names: Iterable[str], pattern: str, where: str) -> int:
    """The number of blocks ``pattern`` (whose one group is the block index) finds in ``names``;
    the indices must be 0..n-1 (e.g. ``layers\\.(\\d+)\\.`` -> the layer count). A one-line ValueError
    naming ``where`` (the file) otherwise."""
    found = sorted({int(m.group(1)) for k in names if (m := re.match(pattern, k))})
    shown = pattern.replace(r"(\d+)", "N").replace("\\", "") + "*"  # layers\.(\d+)\. -> layers.N.*
    if not found:
        raise ValueError(f"{where}: no tensors named {shown}: not a complete state dict")
    if found != list(range(len(found))):
        raise ValueError(f"{where}: tensors named {shown} number blocks {found[:8]}{' ...' if len(found) > 8 else ''}, "
                         "not 0..n-1: some are missing")
    return len(found)


def shape_of(tensors: dict, key: str, ndim: int, where: str) -> tuple[int, ...]:
    """``tensors[key].shape``, which must have ``ndim`` dims (one-line ValueError naming ``where``)."""
    if key not in tensors:
        raise ValueError(f"{where}: tensor {key} is missing")
    shape = tuple(tensors[key].shape)
    if len(shape) != ndim or 0 in shape:
        raise ValueError(f"{where}: tensor {key} has shape {shape}, expected {ndim} non-empty dims")
    return shape


def channel_multiple(tensors: dict, key: str, base: int, where: str) -> int:
    """A conv weight's output channels ``[O, I, kh, kw]`` as a multiple of ``base`` (VQ ``ch_mult``)."""
    out = shape_of(tensors, key, 4, where)[0]
    if out % base:
        raise ValueError(f"{where}: tensor {key} has {out} output channels, not a multiple of the base {base}")
    return out // base


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


def host_place(dtype: str = "float32") -> Callable:
    """An ``assign`` ``place``: each tensor becomes a CPU jax array in ``dtype`` ("float32" /
    "bfloat16": ``--param-dtype``), cast one tensor at a time (never a float32 copy of the model)."""
    import ml_dtypes

    cpu = jax.devices("cpu")[0]
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    return lambda path, arr: jax.device_put(np.asarray(arr, np_dtype), cpu)


def assign(items: Iterable[tuple[str, np.ndarray]], abstract, to_path: Callable, what: str,
           place: Callable | None = None):
    """Place ``(checkpoint_name, array)`` pairs at ``to_path(name, array) -> (path | None, array)``.

    ``path=None`` means the tensor is deliberately ignored. Fails on unused names, params filled
    twice or never, shape mismatches, and complex or non-finite (NaN/inf) tensors. Returns a
    nested dict of jax arrays, or of whatever ``place(path, float32 array)`` returns
    (``sjd_jax.convert.staging.Staging.put``: disk-backed leaves).
    """
    want = paths_of(abstract)
    out: dict[Path, jax.Array] = {}
    cpu = jax.devices("cpu")[0]  # host memory even where an accelerator is present
    unused = []
    for name, value in items:
        path, arr = to_path(name, value)
        if path is None:
            continue
        if np.iscomplexobj(arr):  # float32 would silently drop the imaginary part
            raise ValueError(f"{what} tensor {name} is complex ({arr.dtype}); model weights are real")
        arr = np.asarray(arr, np.float32)
        if path not in want:
            unused.append(name)
            continue
        if path in out:
            raise ValueError(f"two checkpoint tensors map to {'/'.join(path)} (second: {name})")
        if arr.shape != tuple(want[path].shape):
            raise ValueError(f"shape mismatch for {name}: checkpoint {arr.shape}, "
                             f"model {tuple(want[path].shape)} at {'/'.join(path)}")
        arr = np.ascontiguousarray(arr)
        require_finite(arr, f"{what} tensor {name}")
        # one tensor at a time: the re-laid-out copy goes straight to a jax array (orbax writes
        # those without another host copy) and the numpy temporaries are freed
        out[path] = jax.device_put(arr, cpu) if place is None else place(path, arr)
        del arr, value
        _release_freed_memory()
    missing = sorted("/".join(p) for p in want if p not in out)
    if unused or missing:
        raise ValueError(f"{what} checkpoint does not match the config: "
                         + (f"unused keys {unused[:8]}{' ...' if len(unused) > 8 else ''}; " if unused else "")
                         + (f"unfilled params {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else ""))
    return nest(out)

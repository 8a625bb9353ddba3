"""Disk-staged params for converting models larger than RAM (e.g. Emu3-Gen: ~34 GB of float32).

Converters build the whole float32 params tree before ``checkpoint.save``. Held as ordinary numpy or
jax arrays that tree is *anonymous* memory (34 GB on a 24 GB machine: OOM). ``Staging`` writes each
converted tensor into a file-backed ``.npy`` memmap in a temporary directory next to the output and
hands back a read-only memmap: its pages are clean page cache, which the kernel drops and re-reads
at will, so the tree costs (almost) no anonymous memory however big it is.

Saving those leaves, measured (``python docs/scripts/bench_staging.py``; orbax-checkpoint 0.12.8, jax
0.10.2, CPU):

* ``ocp.save`` on the *numpy* memmap leaves is NOT bounded: orbax's numpy path copies leaves into
  anonymous memory (~2x the params size for 2 GiB, even with ``MemoryOptions`` byte limits).
* ``jax.device_put(memmap, cpu)`` is zero-copy on the CPU backend (the jax array aliases the mapped
  file pages; checked per leaf here via ``unsafe_buffer_pointer``). ``checkpoint.save`` then sees jax
  arrays, its ``device_put`` keeps them (already committed to the CPU device) and its
  ``write_concurrent_bytes``/``transfer_concurrent_bytes`` budget (2x the largest leaf) bounds orbax's
  write buffers. So ``save_bounded`` = zero-copy CPU jax arrays + the unchanged ``checkpoint.save``;
  the directory is an ordinary sjd-jax checkpoint that ``checkpoint.load`` reads.

If a leaf is not aliased (a jax/platform that copies on ``device_put``), ``save_bounded`` raises
rather than silently materialising the model (``strict=False`` accepts the copies).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

Key = tuple[str, ...]


class Staging:
    """Context manager: a temp dir of ``.npy`` memmaps, removed on exit (on error too).

    ``put(path, array)`` copies ``array`` (as float32 unless ``dtype`` given, e.g. ml_dtypes.bfloat16
    for ``--param-dtype bfloat16``: half the staging disk) into a new memmap and
    returns it read-only; ``alloc(path, shape)`` returns a writable memmap to fill chunk-wise, then
    ``seal(path)`` swaps it for the read-only one. ``tree()`` is the nested dict of all leaves.
    Put ``dir`` on the output's filesystem (default: next to ``out``): staging needs the params'
    size on disk in addition to the checkpoint itself.
    """

    def __init__(self, out=None, dir=None):
        self._parent = Path(dir) if dir is not None else (Path(out).absolute().parent if out else None)
        self.root: Path | None = None
        self.leaves: dict[Key, np.ndarray] = {}
        self._n = 0

    def __enter__(self) -> "Staging":
        from sjd_jax.io import atomic

        if self._parent is not None:
            self._parent.mkdir(parents=True, exist_ok=True)
            atomic.sweep(self._parent)  # a killed conversion's staging (it can be the model's size)
        # an atomic temp name (host, pid): a later run removes it if this process dies
        self.root = atomic.exclusive_temp(self._parent or Path(tempfile.gettempdir()), "sjd-staging",
                                          directory=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.leaves.clear()  # drop our references (the mappings die with the last one)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _file(self, path: Key) -> Path:
        if self.root is None:
            raise RuntimeError("Staging is not open (use it as a context manager)")
        if path in self.leaves:
            raise ValueError(f"{'/'.join(path)} staged twice")
        self._n += 1
        return self.root / f"{self._n:06d}.npy"

    def alloc(self, path: Key, shape, dtype=np.float32) -> np.memmap:
        path = tuple(path)
        f = self._file(path)
        m = np.lib.format.open_memmap(f, mode="w+", dtype=dtype, shape=tuple(shape))
        self.leaves[path] = m
        return m

    def seal(self, path: Key) -> np.ndarray:
        path = tuple(path)
        m = self.leaves[path]
        if isinstance(m, np.memmap) and m.mode == "r":
            return m
        m.flush()
        fname, dtype = m.filename, m.dtype
        del m
        ro = np.load(fname, mmap_mode="r")  # clean, reclaimable pages from here on
        if ro.dtype != dtype:  # .npy headers cannot name ml_dtypes' bfloat16 (read back as raw |V2)
            ro = ro.view(dtype)
        self.leaves[path] = ro
        return ro

    def put(self, path: Key, array, dtype=np.float32) -> np.ndarray:
        array = np.asarray(array)
        m = self.alloc(path, array.shape, dtype)
        m[...] = array
        del m
        return self.seal(path)

    def put_tree(self, prefix: Key, tree):
        """Stage every leaf of an in-memory tree under ``prefix``; the same tree of staged leaves."""
        import jax

        def key(k):
            return str(getattr(k, "key", getattr(k, "idx", k)))

        return jax.tree_util.tree_map_with_path(lambda path, a: self.put(prefix + tuple(map(key, path)), a), tree)

    def tree(self) -> dict:
        from sjd_jax.convert.tree import nest

        for path in self.leaves:
            self.seal(path)
        return nest(self.leaves)


def as_cpu_arrays(params, strict: bool = True):
    """Memmap leaves -> jax arrays on the CPU device that alias the mapped pages (no copy).

    Raises if a leaf was copied (unless ``strict=False``): the copies would add up to the model.
    """
    import jax

    cpu = jax.devices("cpu")[0]

    def one(x):
        if not isinstance(x, np.ndarray):
            return jax.device_put(x, cpu)
        y = jax.device_put(x, cpu)
        if strict and x.size and y.unsafe_buffer_pointer() != x.ctypes.data:
            raise RuntimeError("jax copied a staged leaf on device_put (no zero-copy on this "
                               "platform): saving would hold the whole model in RAM")
        return y

    return jax.tree.map(one, params)


def save_bounded(out, kind: str, config, params, *, force: bool = False, extra_files=None,
                 strict: bool = True, trim_every_s: float | None = 0.25) -> Path:
    """``checkpoint.save`` for a tree of staged (memmap) leaves in bounded anonymous memory.

    Leaves become zero-copy CPU jax arrays, so ``checkpoint.save`` (unchanged: same layout, same
    atomic rename) holds only its bounded write buffers in anonymous memory. Keep the ``Staging``
    open until this returns: the jax arrays read the staged files.
    """
    from sjd_jax.io import checkpoint

    arrays = as_cpu_arrays(params, strict=strict)
    try:
        with _TrimFreedMemory(trim_every_s):
            return checkpoint.save(out, kind, config, arrays, force=force, extra_files=extra_files)
    finally:
        del arrays


class _TrimFreedMemory:
    """Calls glibc ``malloc_trim(0)`` every ``every_s`` seconds in a thread (no-op off glibc or with
    ``every_s=None``): orbax/tensorstore free their per-leaf write buffers, but glibc arenas keep the
    freed pages resident, so anonymous memory otherwise creeps up with the number of leaves written."""

    def __init__(self, every_s):
        self.every_s = every_s

    def __enter__(self):
        import threading

        from sjd_jax.convert.tree import malloc_trim

        self._stop = threading.Event()
        self._t = None
        if self.every_s and malloc_trim is not None:
            def run():
                while not self._stop.wait(self.every_s):
                    malloc_trim(0)

            self._t = threading.Thread(target=run, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._t is not None:
            self._t.join()


def rss_anon() -> int:
    """Anonymous resident bytes of this process (RssAnon of /proc/self/status; 0 if unavailable)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakAnon:
    """``with PeakAnon() as p: ...`` -> ``p.base``, ``p.peak``, ``p.growth`` (bytes; sampled 100 Hz)."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval

    def __enter__(self) -> "PeakAnon":
        import threading

        self.base = self.peak = rss_anon()
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_anon())
                self._stop.wait(self.interval)

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_anon())

    @property
    def growth(self) -> int:
        return self.peak - self.base

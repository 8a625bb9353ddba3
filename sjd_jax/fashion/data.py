"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (MIT; idx files, no network).

    apt-get install dataset-fashion-mnist    # -> /usr/share/datasets/fashion-mnist/*.gz
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from sjd_jax.families.fashion_mnist import CLASSES  # noqa: F401  (the labels' names)

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_SIZES = {"train": 60000, "test": 10000}


def data_dir() -> Path:
    return Path(os.environ.get("SJD_FASHION_MNIST_DIR", DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally .gz): big-endian magic (0, 0, dtype 0x08 = uint8, ndim), dims, data."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            raw = (gzip.open if p.suffix == ".gz" else open)(p, "rb").read()
            break
    else:
        raise FileNotFoundError(
            f"{path}(.gz) not found: install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
            f"or point SJD_FASHION_MNIST_DIR at a directory holding the idx files")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated ({data.size} bytes of {int(np.prod(dims))})")
    return data.reshape(dims)


def load(split: str = "train", directory=None) -> tuple[np.ndarray, np.ndarray]:
    """(images ``[n, 28, 28]`` uint8, labels ``[n]`` int32 in 0..9) for split "train" or "test"."""
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; choose train or test")
    d = Path(directory) if directory is not None else data_dir()
    images = _read_idx(d / _FILES[split][0])
    labels = _read_idx(d / _FILES[split][1]).astype(np.int32)
    if images.shape != (_SIZES[split], 28, 28) or labels.shape != (_SIZES[split],):
        raise ValueError(f"{d}: unexpected {split} shapes {images.shape}, {labels.shape}")
    return images, labels


def to_model_range(images: np.ndarray, pad_to: int = 32) -> np.ndarray:
    """uint8 ``[n, 28, 28]`` -> float32 ``[n, pad_to, pad_to, 1]`` in [-1, 1], zero (black) padded."""
    p = (pad_to - images.shape[1]) // 2
    x = images.astype(np.float32) / 127.5 - 1.0
    x = np.pad(x, ((0, 0), (p, pad_to - images.shape[1] - p), (p, pad_to - images.shape[2] - p)),
               constant_values=-1.0)
    return x[..., None]


def from_model_range(x: np.ndarray, crop: int = 28) -> np.ndarray:
    """float ``[n, 32, 32, 1]`` in [-1, 1] -> uint8 ``[n, 28, 28]`` (center crop)."""
    p = (x.shape[1] - crop) // 2
    x = np.asarray(x)[:, p:p + crop, p:p + crop, 0]
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)

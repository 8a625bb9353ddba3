"""Image grids, and PNGs written through ``atomic.write_file``."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def grid(images: np.ndarray, ncols: int, pad: int = 2, scale: int = 1) -> np.ndarray:
    """uint8 ``[n, H, W]`` or ``[n, H, W, C]`` -> one ``[rows*(H+pad)+pad, cols*(W+pad)+pad, C]`` image."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if scale > 1:
        x = x.repeat(scale, 1).repeat(scale, 2)
    n, H, W, C = x.shape
    rows = -(-n // ncols)
    out = np.full((rows * (H + pad) + pad, ncols * (W + pad) + pad, C), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i]
    return out


def save_png(image: np.ndarray, path) -> Path:
    """Write ``[H, W, C]`` uint8 (C = 1 or 3) as PNG; a failed write leaves no file behind."""
    from PIL import Image

    from sjd_jax.io.atomic import write_file

    img = image[..., 0] if image.shape[-1] == 1 else image
    pil = Image.fromarray(np.ascontiguousarray(img))
    return write_file(path, lambda f: pil.save(f, format="PNG"))

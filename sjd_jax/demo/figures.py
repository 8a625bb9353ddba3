"""The demo's pictures as uint8 arrays (numpy + PIL only: no matplotlib, no gradio).

* ``tile``: a batch of images as one upscaled grid (pixels stay sharp: nearest-neighbour).
* ``committed_chart``: tokens committed by each forward of one image (a bar per forward).
* ``token_grid``: the image's token grid coloured by the forward that committed each token, white
  lines between tokens of different forwards (the README's SJD figure, right panel).
"""

from __future__ import annotations

import numpy as np

TARGET_SIDE = 224  # pixels an image (or the token grid) is scaled up to, about
# viridis at 0, 1/4, 1/2, 3/4, 1: early forwards dark blue, late ones yellow
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def scale_for(side: int) -> int:
    """Integer upscale that brings ``side`` pixels to about ``TARGET_SIDE``."""
    return max(1, TARGET_SIDE // max(side, 1))


def tile(images: np.ndarray, ncols: int = 4) -> np.ndarray:
    """uint8 [B, H, W, 3] -> one uint8 image: B = 1 is the image scaled by ``scale_for(H)`` (28 ->
    224 x 224); more are a grid of up to ``ncols`` columns with 2-pixel white gaps."""
    from sjd_jax.io.imaging import grid

    x = np.asarray(images)
    s = scale_for(x.shape[1])
    if x.shape[0] == 1:
        return x[0].repeat(s, 0).repeat(s, 1)
    return grid(x, ncols=min(ncols, x.shape[0]), pad=2, scale=s)


def colours(n: int) -> np.ndarray:
    """[n, 3] uint8 colours along the ramp (index 0 first)."""
    t = np.linspace(0.0, 1.0, max(n, 1)) * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    f = (t - lo)[:, None]
    return ((1 - f) * _RAMP[lo] + f * _RAMP[lo + 1] + 0.5).astype(np.uint8)


def iteration_of(committed: np.ndarray, N: int) -> np.ndarray:
    """committed [K] (tokens committed by forward k) -> [N] the forward that committed each token."""
    c = np.asarray(committed, np.int64)
    return np.repeat(np.arange(c.size), np.maximum(c, 0))[:N]


def token_grid(committed: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """committed [K] of one image -> uint8 [h*s, w*s, 3]: each token's cell coloured by its
    forward's index, white lines where neighbouring tokens came from different forwards."""
    h, w = grid
    it = iteration_of(committed, h * w).reshape(h, w)
    s = scale_for(max(h, w))
    pal = colours(int(it.max()) + 1)
    img = pal[it].repeat(s, 0).repeat(s, 1)
    big = it.repeat(s, 0).repeat(s, 1)
    edge = np.zeros(big.shape, bool)
    edge[1:, :] |= big[1:, :] != big[:-1, :]  # a row-boundary pixel between two forwards' tokens
    edge[:, 1:] |= big[:, 1:] != big[:, :-1]
    img[edge] = 255
    return img


def committed_chart(committed: np.ndarray, size: tuple[int, int] = (560, 260), title: str = "") -> np.ndarray:
    """committed [K] of one image -> uint8 [H, W, 3] bar chart: x the forward (0 = prefill, up to
    the image's last forward), y the tokens it committed; bars coloured as in ``token_grid``."""
    from PIL import Image, ImageDraw, ImageFont

    c = np.asarray(committed, np.int64)
    k = max(int(np.flatnonzero(c).max()) + 1 if c.any() else 1, 1)  # the image's forwards
    c = c[:k]
    W, H = size
    left, right, top, bottom = 44, 12, 28, 36
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=12)
    ymax = max(int(c.max()), 1)
    pw, ph = W - left - right, H - top - bottom
    pal = colours(k)
    bw = pw / k
    for i, v in enumerate(c):
        x0 = left + i * bw
        y0 = top + ph * (1 - v / ymax)
        d.rectangle([x0, y0, max(x0 + bw - (1 if bw > 3 else 0), x0), top + ph], fill=tuple(int(u) for u in pal[i]))
    d.line([left, top, left, top + ph, left + pw, top + ph], fill="black")
    for v in sorted({0, ymax // 2, ymax}):
        y = top + ph * (1 - v / ymax)
        d.line([left - 4, y, left, y], fill="black")
        d.text((left - 6, y), str(v), fill="black", font=font, anchor="rm")
    for i in sorted({0, k // 2, k - 1}):
        x = left + (i + 0.5) * bw
        d.text((x, top + ph + 4), str(i), fill="black", font=font, anchor="mt")
    d.text((left + pw / 2, H - 4), "forward (0 = prefill)", fill="black", font=font, anchor="mb")
    d.text((left, 6), title or "tokens committed per forward", fill="black", font=font)
    return np.asarray(img)

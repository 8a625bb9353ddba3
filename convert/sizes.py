"""Image sizes given to the converters (``--image-size`` or a file name's ``_256``): pixels -> the
latent grid side, checked once for every family."""

from __future__ import annotations

MAX_IMAGE_SIZE = 8192  # px per side: above every released model; bounds what a typo can allocate


def latent_side(size, downsample: int, what: str) -> int:
    """Image side ``size`` (px) -> latent side (codes), or a one-line ValueError naming ``what``
    (the flag or file the size came from)."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"{what}: image size {size!r} must be a whole number of pixels in 1..{MAX_IMAGE_SIZE}")
    if size % downsample:
        raise ValueError(f"{what}: image size {size} is not a multiple of the {downsample}x downsampling")
    return size // downsample

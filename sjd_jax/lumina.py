"""Lumina-mGPT's image token layout and Chameleon's code <-> BPE-id mapping.

Layout of a generated image (Lumina-mGPT ``item_processor`` / ``inference_solver``): ``<racm3:break>``
(image start), two size tokens ``<reserved0{8800 + h/32}>``, ``<reserved0{8800 + w/32}>``, then
``h/16`` rows of ``w/16`` image codes each followed by a newline ``<reserved08799>``, then ``<eoss>``
(image end) and ``<reserved08706>``. The start and size tokens are deterministic for a requested size:
sjd-jax puts them at the end of the prompt; the sampler generates the rows, newlines forced
(``GPTConfig.row_end_token``).
"""

from __future__ import annotations

import re

import numpy as np

BOI, EOI, NEWLINE, END_OF_TURN = 8197, 8196, 8803, 8710  # <racm3:break>, <eoss>, <reserved08799>, <reserved08706>
SIZE_BASE = 8804  # <reserved0{8800 + n}> has id 8804 + n
_IMG_NAME = re.compile(r"IMGIMG([A-J]+)Z")


def grid_of(height: int, width: int | None = None) -> tuple[int, int]:
    """Pixels -> the sampler's grid ``(rows, codes per row + 1)`` (16x down; sizes multiples of 32)."""
    width = height if width is None else width
    if height % 32 or width % 32 or min(height, width) < 32:
        raise ValueError(f"Lumina-mGPT image sizes are positive multiples of 32, got {height}x{width}")
    return height // 16, width // 16 + 1


def image_prefix(height: int, width: int | None = None) -> list[int]:
    """The deterministic tokens before the first code: image start, height and width size tokens."""
    width = height if width is None else width
    grid_of(height, width)
    return [BOI, SIZE_BASE + height // 32, SIZE_BASE + width // 32]


def full_image_tokens(rows_tokens: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """Sampler output ``[B, rows * (w + 1)]`` -> the whole image span as Lumina writes it:
    prefix, rows with their newlines, image end."""
    rows_tokens = np.asarray(rows_tokens)
    B = rows_tokens.shape[0]
    pre = np.broadcast_to(np.asarray(image_prefix(height, width)), (B, 3))
    return np.concatenate([pre, rows_tokens, np.full((B, 1), EOI)], axis=1)


def strip_row_ends(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``[B, rows * (w + 1)]`` -> the codes' BPE ids ``[B, rows * w]`` (row-end column dropped)."""
    h, w1 = grid
    t = np.asarray(tokens).reshape(-1, h, w1)
    return t[:, :, :-1].reshape(t.shape[0], h * (w1 - 1))


def code_to_bpe(vocabulary_map: dict) -> np.ndarray:
    """``[num_codes]`` BPE id of each VQGAN code, from Chameleon's token names (``IMGIMG`` + the
    code's decimal digits written as letters A-J + ``Z``). The ids are not an offset: read them."""
    pairs = {}
    for name, bpe in vocabulary_map.items():
        m = _IMG_NAME.fullmatch(name)
        if m:
            code = int("".join(str(ord(ch) - ord("A")) for ch in m.group(1)))
            if code in pairs:
                raise ValueError(f"two image tokens for code {code}")
            pairs[code] = int(bpe)
    if not pairs:
        raise ValueError("vocabulary_map has no IMGIMG...Z image tokens")
    n = max(pairs) + 1
    if len(pairs) != n:
        raise ValueError(f"image codes are not contiguous: {n - len(pairs)} of 0..{n - 1} missing")
    return np.asarray([pairs[c] for c in range(n)], np.int32)


def bpe_to_code(bpe_ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """BPE ids -> VQGAN codes (``table`` from ``code_to_bpe``); an id that is not an image token is
    an error."""
    lut = np.full(int(table.max()) + 1, -1, np.int64)
    lut[table] = np.arange(table.size)
    ids = np.asarray(bpe_ids)
    codes = np.where((ids >= 0) & (ids < lut.size), lut[np.clip(ids, 0, lut.size - 1)], -1)
    if (codes < 0).any():
        raise ValueError(f"token id {int(ids[codes < 0].flat[0])} is not an image code")
    return codes

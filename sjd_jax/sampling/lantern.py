"""LANTERN-style relaxed acceptance (arXiv 2410.03355) — NOT lossless, opt-in only.

A draft x is accepted with probability ``min(1, p~(x) / q(x))`` where ``p~(x) = p(x) + sum of p over
x's nearest codebook neighbours n_1..n_J``, J the largest index whose cumulative neighbour mass is
``<= delta``. Rejected tokens are still drawn from ``max(0, p - q)``. Images drift from the model's
distribution by at most a total-variation budget that grows with ``delta`` and ``k``.
"""

from __future__ import annotations

import numpy as np


def codebook_neighbours(codebook, k: int) -> np.ndarray:
    """``[V, k]`` int32: for each code, the k nearest other codes by Euclidean distance in latent
    space (nearest first). ``codebook: [V, d]`` (the VQ's embedding table as the decoder sees it)."""
    e = np.asarray(codebook, np.float64)
    V = e.shape[0]
    if not 1 <= k < V:
        raise ValueError(f"lantern k must be in [1, {V - 1}], got {k}")
    sq = (e * e).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * e @ e.T
    np.fill_diagonal(dist, np.inf)
    return np.argsort(dist, axis=1, kind="stable")[:, :k].astype(np.int32)

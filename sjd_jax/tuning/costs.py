"""Seconds per cached forward of the model by window, timed on the current device.

A forward is timed as the samplers run it: inside one jitted loop that carries the KV cache (no
per-call dispatch), at a cache length in the middle of the image, with CFG's doubled rows. The
same code serves ``sjd-jax bench`` (many repetitions, every window) and the automatic choice
(``min_seconds``: few repetitions, and larger windows are skipped once they cannot win).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.core import model as gpt
from sjd_jax.core.cache import init_cache
from sjd_jax.core.config import GPTConfig


def _timed_forwards(params, config: GPTConfig, rows: int):
    """A jitted ``f(params, tokens [rows, W], reps) -> scalar`` running ``reps`` forwards."""
    mid = config.cls_token_num + config.num_image_tokens // 2

    def f(params, tokens, reps):
        cache = init_cache(config, rows)  # (made inside: no compiles of its own, no copy in per call)

        def body(i, carry):
            cache, acc = carry
            logits, cache = gpt.forward(params, config, gpt.embed_tokens(params, config, tokens),
                                        cache.with_length(jnp.full((rows,), mid, jnp.int32)))
            return cache, acc + logits[:, -1, 0].sum()
        return jax.lax.fori_loop(0, reps, body, (cache, jnp.float32(0)))[1]

    return jax.jit(f)


def forward_seconds(params, config: GPTConfig, rows: int, windows, *, reps: int = 32, repeats: int = 3,
                    min_seconds: float = 0.0, stop=None) -> tuple[dict[int, float], dict[int, float]]:
    """Seconds per forward of W tokens for ``rows`` cache rows, by W (ascending; W = 1 always), and
    the seconds to compile each W's loop (the first call less one call: the device's compile speed
    for this model, the unit ``auto`` scales a sampler's compile time by).

    Differential timing: the best of ``repeats`` calls of 1 forward and of ``1 + m`` forwards,
    ``m = reps`` (or, with ``min_seconds``, just enough forwards for that long), and their difference
    over ``m``, so what a call costs besides its forwards (dispatch, the cache's zero fill) is not
    counted. ``stop(W, seconds_by_window, compiles_by_window) -> bool``:
    after each window, whether the larger ones are not worth timing."""
    f = _timed_forwards(params, config, rows)

    def best_of(tokens, n: int, repeats: int = repeats) -> float:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(params, tokens, n))
            ts.append(time.perf_counter() - t0)
        return min(ts)

    out: dict[int, float] = {}
    compiles: dict[int, float] = {}
    for W in sorted({1, *windows}):
        tokens = np.zeros((rows, W), np.int32)  # (numpy: no compiled fill per shape)
        t0 = time.perf_counter()
        jax.block_until_ready(f(params, tokens, 1))  # compiles (reps is traced: one compile per W)
        first = time.perf_counter() - t0
        one = best_of(tokens, 1)
        compiles[W] = max(first - one, 0.0)
        n = repeats
        if min_seconds:  # a budget: forwards enough for min_seconds, and a long call is its own average
            # (one call's time, per-call costs included, bounds a forward's from above: m errs low)
            m = max(1, min(reps, int(min_seconds / max(one, 1e-6)) + 1))
            n = repeats if one < min_seconds else min(repeats, 2)
        else:
            m = reps
        out[W] = max((best_of(tokens, 1 + m, n) - one) / m, 1e-9)
        if stop is not None and stop(W, out, compiles):
            break
    return out, compiles


def interpolate(seconds: dict[int, float], W: int) -> float:
    """Seconds of a W-token forward from measured windows (linear between them; beyond the largest
    measured, proportional to W from there)."""
    ws = sorted(seconds)
    if W in seconds:
        return seconds[W]
    if W > ws[-1]:
        return seconds[ws[-1]] * W / ws[-1]
    lo = max(w for w in ws if w < W)
    hi = min(w for w in ws if w > W)
    return seconds[lo] + (seconds[hi] - seconds[lo]) * (W - lo) / (hi - lo)

"""Host-side statistics of sampler outputs (numpy; nothing here is traced)."""

from __future__ import annotations

import numpy as np


def acceptance_stats(nfe, committed, num_tokens: int, window: int) -> dict:
    """Summary of ``GenerateOutput`` rows (``nfe [B]``, ``committed [B, N]``; rows may be
    concatenated across batches): mean NFE, step compression vs AR, tokens committed per loop
    iteration (prefill excluded) and their histogram over 0..window."""
    nfe = np.asarray(nfe)
    committed = np.asarray(committed)[:, 1:]
    per_iter = committed[committed > 0]
    return {"nfe_mean": float(nfe.mean()), "step_compression": float(num_tokens / nfe.mean()),
            "mean_accepted_per_iteration": float(per_iter.mean()) if per_iter.size else 0.0,
            "accepted_histogram": np.bincount(per_iter, minlength=window + 1).tolist()}

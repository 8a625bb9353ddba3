"""Argument checks that run before anything is traced or compiled: one clear ValueError each."""

from __future__ import annotations

import numpy as np

from sjd_jax.core.config import GPTConfig

def _concrete(x, name):
    try:
        return np.asarray(x)
    except Exception as e:  # a tracer: the public API must be called with concrete values
        raise ValueError(f"{name} must be a concrete array, not a traced value") from e


def check_cond(config: GPTConfig, cond, prefix_mask, batch: int | None, allow_null: bool) -> None:
    """Class ids / prompt ids in range, caption features of the right shape; batch sizes consistent."""
    if config.cond_kind == "tokens":
        ids = _concrete(cond, "prompt ids")
        C, V = config.cls_token_num, config.text_vocab_size
        want = (2, C) if config.cfg_negative_prompt else (C,)
        if ids.ndim != 1 + len(want) or tuple(ids.shape[1:]) != want:
            what = f"[B, 2, {C}] (each prompt and its negative prompt, " if config.cfg_negative_prompt else f"[B, {C}] ("
            raise ValueError(f"prompt ids must have shape {what}this config's prompt length; "
                             f"pad on the left), got {tuple(ids.shape)}")
        if tuple(prefix_mask.shape) != tuple(ids.shape):
            raise ValueError(f"prompt mask must have the ids' shape {tuple(ids.shape)}, "
                             f"got {tuple(prefix_mask.shape)}")
        bad = ids[(ids < 0) | (ids >= V)]
        if bad.size:
            raise ValueError(f"prompt token id {int(bad[0])} out of range: text vocabulary is 0..{V - 1}")
        mask = _concrete(prefix_mask, "prompt mask")
        k = config.cfg_uncond_suffix or 1
        if not mask[..., -k:].all():
            raise ValueError(f"prompt rows must end with {k} real token(s) (pad on the left)")
        n = ids.shape[0]
    elif config.text_conditional:
        feats = cond
        C, D = config.cls_token_num, config.caption_dim
        if feats.ndim != 3 or feats.shape[1:] != (C, D):
            raise ValueError(f"caption features must have shape [B, {C}, {D}], got {tuple(feats.shape)}")
        if tuple(prefix_mask.shape) != tuple(feats.shape[:2]):
            raise ValueError(f"caption mask must have shape [B, {C}] matching the features, "
                             f"got {tuple(prefix_mask.shape)}")
        if not np.all(_concrete(prefix_mask, "caption mask").any(axis=1)):
            raise ValueError("every caption mask row needs at least one valid position")
        n = feats.shape[0]
    else:
        ids = _concrete(cond, "cond")  # dtype and rank were checked by model.split_cond
        hi = config.num_classes if allow_null else config.num_classes - 1
        bad = ids[(ids < 0) | (ids > hi)]
        if bad.size:
            what = (f"0..{config.num_classes} ({config.num_classes} = null class)" if allow_null
                    else f"0..{config.num_classes - 1}")
            raise ValueError(f"class id {int(bad[0])} out of range: this model takes {what}")
        n = ids.shape[0]
    if n < 1:
        raise ValueError("cond has batch size 0")
    if batch is not None and n != batch:
        raise ValueError(f"cond batch size {n} does not match the other inputs' batch size {batch}")


def _int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def seed_bound() -> int:
    """Seeds are 0 <= seed < this: JAX keys take 32-bit seeds (64-bit with jax_enable_x64); a larger
    or negative seed would silently give the images of a smaller one."""
    import jax

    return 2 ** 63 if jax.config.jax_enable_x64 else 2 ** 32


def check_seed(seed, name: str = "seed") -> int:
    hi = seed_bound()
    if not _int(seed) or not 0 <= seed < hi:
        raise ValueError(f"{name} must be an integer in 0..{hi - 1} (JAX keys take {hi.bit_length() - 1}-bit "
                         f"seeds; others would repeat the images of a smaller seed), got {seed!r}")
    return int(seed)


def check_int(name: str, value, lo: int = 1, hi: int | None = None) -> int:
    """An integer flag in ``[lo, hi]``: one ValueError naming the flag otherwise."""
    if not _int(value) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be an integer {rng}, got {value!r}")
    return int(value)

"""Drafts for positions that have no target yet (the window's newest slots): the ``init`` rules.

Every init is a function ``rule(ctx, d: Fresh) -> (tokens [B, F], stored q [B, F])`` returning the
exact q its tokens were drawn from, registered in ``DRAFT_INITS`` with whether it reads the
latest-target history. Adding an init is one function and one line in that table.

* ``uniform`` — random over the allowed ids, q uniform.
* ``horizon-repeat`` / ``vertical-repeat`` — copy the token to the left / above (q one-hot: valid
  for any draft that does not use its own position's verification randomness).
* ``horizon-sample`` / ``vertical-sample`` — draw from that neighbour's latest target (q = that p).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from sjd_jax.sampling import keys as K
from sjd_jax.sampling.context import log


class DraftContext(NamedTuple):
    """What a custom ``draft_rule`` sees, for F positions that have no target yet (all traced)."""

    key: jax.Array  # [B, F] PRNG keys, one per (example, absolute token index, iteration)
    token: jax.Array  # [B, F] int32 absolute image-token index of each draft (raster order)
    known_end: jax.Array  # [B] int32: tokens[b, :known_end[b] + 1] hold committed tokens or drafts
    tokens: jax.Array  # [B, L] int32 token buffer (entries past known_end are not meaningful)
    p_last: jax.Array  # [B, V] float32 this iteration's target p for token known_end
    grid_width: int  # tokens per image row (static)


class Fresh(NamedTuple):
    """The inputs of an init rule (all traced)."""

    tok: jax.Array  # [B, F] absolute image-token index of each draft
    known_end: jax.Array  # [B]: tokens <= known_end hold committed tokens or current drafts in buf
    buf: jax.Array  # [B, L] token buffer
    p_last: jax.Array  # [B, V] the latest target (token known_end), dense
    q_last: object  # [B] the same target as stored
    hist: object  # [B, R] latest stored target per position mod R (history inits only)
    it: jax.Array  # [B] each row's iteration (forwards since its prefill; 0 in the prefill)


class Init(NamedTuple):
    rule: Callable
    history: bool = False  # keeps the latest target of the last grid_width + chain positions


def _random(ctx, d: Fresh):
    """Uniform over the allowed ids: tokens [B, F], stored q [B, F]."""
    keys = K.slot_keys(ctx.rows, K.INIT, d.tok, d.it)
    if ctx.allowed_ids is None:
        uni = K.randint(keys, ctx.V)
    else:  # uniform over the allowed ids
        uni = ctx.allowed_ids[K.randint(keys, ctx.allowed_ids.shape[0])]
    return uni, ctx.qs.uniform(d.tok.shape)


def uniform(ctx, d: Fresh):
    return _random(ctx, d)


def _left(ctx, d: Fresh):
    """Raster left neighbour of every draft (column 0: the last of the row above) -> [B, F]."""
    return jnp.broadcast_to(d.known_end[:, None], d.tok.shape)


def _above(ctx, d: Fresh):
    """The token above; as many rows up as needed to reach a known position -> [B, F]."""
    gw = ctx.gw
    return d.tok - gw * ((d.tok - d.known_end[:, None] + gw - 1) // gw)


def _copy(ctx, d: Fresh, src):
    vals = jnp.take_along_axis(d.buf, jnp.maximum(src, 0), axis=1)
    return _or_random(ctx, d, src, vals, ctx.qs.onehot(vals))


def _or_random(ctx, d: Fresh, src, vals, q):
    """A neighbour-based draft where the neighbour exists (src >= 0), else a uniform one."""
    uni, uni_q = _random(ctx, d)
    has = src >= 0
    return jnp.where(has, vals, uni), ctx.qs.where(has, q, uni_q)


def horizon_repeat(ctx, d: Fresh):
    return _copy(ctx, d, _left(ctx, d))


def vertical_repeat(ctx, d: Fresh):
    return _copy(ctx, d, _above(ctx, d))


def horizon_sample(ctx, d: Fresh):
    qs, rows, V = ctx.qs, ctx.rows, ctx.V
    q = qs.map(lambda x: jnp.broadcast_to(x[:, None], d.tok.shape + x.shape[1:]), d.q_last)
    vals = ctx.by_slots(lambda tk: K.categorical(K.slot_keys(rows, K.INIT, tk, d.it),
                                                 log(jnp.broadcast_to(d.p_last[:, None], tk.shape + (V,)))), d.tok)
    return _or_random(ctx, d, _left(ctx, d), vals, q)


def vertical_sample(ctx, d: Fresh):
    qs, rows = ctx.qs, ctx.rows
    src = _above(ctx, d)
    q = qs.take(d.hist, jnp.maximum(src, 0) % ctx.R)
    vals = ctx.by_slots(lambda tk, qq: K.categorical(K.slot_keys(rows, K.INIT, tk, d.it), log(qs.dense(qq))),
                        d.tok, q)
    return _or_random(ctx, d, src, vals, q)


DRAFT_INITS = {
    "uniform": Init(uniform),
    "horizon-repeat": Init(horizon_repeat),
    "horizon-sample": Init(horizon_sample),
    "vertical-repeat": Init(vertical_repeat),
    "vertical-sample": Init(vertical_sample, history=True),
}


def custom(ctx, d: Fresh, rule):
    """A research ``draft_rule`` (dense q)."""
    V = ctx.V
    dc = DraftContext(key=K.slot_keys(ctx.rows, K.INIT, d.tok, d.it), token=d.tok, known_end=d.known_end,
                      tokens=d.buf, p_last=d.p_last, grid_width=ctx.gw)
    vals, q = rule(dc)
    if jnp.shape(vals) != d.tok.shape or jnp.shape(q) != d.tok.shape + (V,):
        raise ValueError(f"draft_rule must return tokens {d.tok.shape} and q {d.tok.shape + (V,)}, "
                         f"got {jnp.shape(vals)} and {jnp.shape(q)}")
    return jnp.asarray(vals, jnp.int32), jnp.asarray(q, jnp.float32)


def fresh(ctx, d: Fresh):
    """Drafts (tokens [B, F], stored q [B, F]) for ``d.tok``: the spec's draft rule or init, with
    forced structure tokens put in place."""
    rule = ctx.spec.rules.draft
    vals, q = custom(ctx, d, rule) if rule is not None else DRAFT_INITS[ctx.spec.init].rule(ctx, d)
    return ctx.force(vals, q, d.tok)

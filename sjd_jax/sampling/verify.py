"""Verification, residual and coupling: which drafts a row keeps, what replaces the first rejected
one, and how the next drafts are made from this iteration's targets.

A draft x drawn from q is accepted iff ``u < p(x) / q(x)`` (u ~ U[0, 1)); the first rejected draft
is replaced by a draw from ``norm(max(0, p - q))``. ``Rules`` names every rule the loop applies, so
research code (and the tests' negative controls) can replace one without touching the loop.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from sjd_jax.sampling import keys as K
from sjd_jax.sampling.context import LoopContext, gather_rows, log


def standard_accept(u, p_x, q_x):
    """The lossless test ``u < p(x) / q(x)``, written without a division."""
    return u * q_x < p_x


def residual(p, q):
    """norm(max(0, p - q)); p itself where nothing is left (p == q up to rounding: rejection had
    probability 0)."""
    r = jnp.maximum(p - q, 0.0)
    s = jnp.sum(r, axis=-1, keepdims=True)
    return jnp.where(s > 0, r / jnp.where(s > 0, s, 1.0), p)


@dataclasses.dataclass(frozen=True)
class Rules:
    """The loop's rules, each a pure function traced into it (one compile per function object).

    * ``accept(u, p_x, q_x) -> bool`` — the acceptance test of every draft, chain and tree alike.
    * ``draft(DraftContext) -> (tokens [B, F], q [B, F, V])`` or None — drafts for positions with no
      target yet, replacing ``init``; must return the exact q its tokens were drawn from.
    * ``residual(p, q)`` — the distribution a rejected draft is replaced from.
    * ``sibling_residual(p, q)`` — a draft tree's running target after a level-1 candidate fails.
    * ``kept_q(old_q, new_q)`` or None — what maximal coupling stores as the q of a kept draft
      (stored form; None: the new target, which makes the next verification exact).

    ``exactness.check`` tells whether a replacement is still lossless."""

    accept: Callable = standard_accept
    draft: Callable | None = None
    residual: Callable = residual
    sibling_residual: Callable = residual
    kept_q: Callable | None = None

    def check(self) -> None:
        for name in ("accept", "draft", "residual", "sibling_residual", "kept_q"):
            f = getattr(self, name)
            if f is not None and not callable(f):
                label = {"accept": "accept_rule", "draft": "draft_rule"}.get(name, f"the {name} rule")
                raise ValueError(f"{label} must be a function, got {type(f).__name__}")


def accept_mass(ctx: LoopContext, p, x):
    """p(x), or LANTERN's relaxed p(x) + nearby latent-neighbour mass (NOT lossless)."""
    px = jnp.take_along_axis(p, x[..., None], axis=-1)[..., 0]
    if not ctx.spec.lantern_k:
        return px
    pn = jnp.take_along_axis(p, ctx.neighbours[x], axis=-1)  # [..., k] nearest first
    return px + jnp.sum(jnp.where(jnp.cumsum(pn, -1) <= ctx.knobs.lantern_delta, pn, 0.0), -1)


def accepts(ctx: LoopContext, u, px, qx):
    return ctx.spec.rules.accept(u, px, qx)


class ChainVerdict(NamedTuple):
    acc_exact: jax.Array  # [B, Wc-1] each chain draft passes the exact test (maximal coupling keeps it)
    acc: jax.Array  # [B, Wc-1] each chain draft passes the test in use (slot 0: the tree's primary)
    inside: jax.Array  # [B, Wc-1] each chain draft's token lies inside the image
    L: jax.Array  # [B] leading accepted drafts
    p_L: jax.Array  # [B, V] p of token n + L along the accepted path
    q_L1: object  # [B] stored q of the path's draft for token n + L
    path: jax.Array  # [B, Wc-1] the path's drafts (tokens n ..)
    path_len: jax.Array  # [B] drafts of the path inside the image


def verify_chain(ctx: LoopContext, q, win, pc, n, it) -> ChainVerdict:
    """Chain drafts (window slot i >= 1, token n + i - 1) against output slot i - 1.
    q: stored [B, Wc]; win: [B, Wc] window tokens; pc: [B, Wc, V] chain targets; n: [B]."""
    Wc, N = ctx.Wc, ctx.N
    slots = jnp.arange(Wc, dtype=jnp.int32)
    tok = n[:, None] + slots[None, :]  # [B, Wc] token index of each chain output slot
    d = win[:, 1:]  # [B, Wc-1]
    q_d = ctx.qs.at(ctx.sl(q, 1), d)
    u = K.uniform(K.slot_keys(ctx.rows, K.ACCEPT, tok[:, :-1], it))
    inside = tok[:, :-1] < N
    acc_exact = accepts(ctx, u, jnp.take_along_axis(pc[:, :-1], d[..., None], axis=-1)[..., 0], q_d) & inside
    acc = accepts(ctx, u, accept_mass(ctx, pc[:, :-1], d), q_d) & inside if ctx.spec.lantern_k else acc_exact
    chain_len = jnp.clip(N - n, 0, Wc - 1)  # drafts inside the image
    L = jnp.sum(jnp.cumprod(acc.astype(jnp.int32), axis=1), axis=1)  # leading accepted drafts
    p_L = gather_rows(pc, L)  # p for token n + L along the accepted path
    q_L1 = ctx.rows_at(q, jnp.minimum(L + 1, Wc - 1))  # q of the path's draft there (stored)
    return ChainVerdict(acc_exact, acc, inside, L, p_L, q_L1, d, chain_len)


def correction(ctx: LoopContext, v: ChainVerdict, n, it, fallback=None):
    """[B] the token after the accepted drafts: a residual draw if the path's next draft was
    rejected, else a bonus draw from p. ``fallback`` [B, V] (trees): the target where every level-1
    candidate failed (None: none)."""
    rejected = v.L < v.path_len  # the path's draft for token n + L was rejected
    resid = ctx.spec.rules.residual(v.p_L, ctx.qs.dense(v.q_L1))
    if fallback is not None:
        resid = jnp.where(fallback[0][:, None], fallback[1], resid)
    fix = K.categorical(K.slot_keys(ctx.rows, K.RESIDUAL, (n + v.L)[:, None], it), log(resid)[:, None])[:, 0]
    bonus = ctx.target_draw((n + v.L)[:, None], it, v.p_L[:, None])[:, 0]
    return jnp.where(rejected, fix, bonus)


def next_drafts(ctx: LoopContext, q, win, acc_exact, pc, tok, it):
    """[B, Wc] drafts for the chain's tokens ``tok`` from this iteration's targets ``pc`` (so q := p
    there): independent draws (SJD), the position's fixed Gumbel vector (gumbel), or a maximal
    coupling with the old draft — kept where it passed, else a residual draw (maximal)."""
    if ctx.spec.coupling != "maximal":
        return ctx.target_draw(tok, it, pc)
    qs, rows = ctx.qs, ctx.rows
    redraw = ctx.by_slots(lambda tk, pp, qq: K.categorical(K.slot_keys(rows, K.RESIDUAL, tk, it),
                                                           log(residual(pp, qs.dense(qq)))),
                          tok[:, :-1], pc[:, :-1], ctx.sl(q, 1))
    return jnp.concatenate([jnp.where(acc_exact, win[:, 1:], redraw),
                            ctx.target_draw(tok[:, -1:], it, pc[:, -1:])], axis=1)


def kept_targets(ctx: LoopContext, q, q_targets, acc_exact):
    """[B, Wc] stored q of the next chain drafts: this iteration's targets ``q_targets`` (the
    ``kept_q`` rule may replace a maximal-coupling kept draft's; ``q``: the old stored q)."""
    rule = ctx.spec.rules.kept_q
    if rule is None or ctx.spec.coupling != "maximal":
        return q_targets
    kept = jnp.concatenate([acc_exact, jnp.zeros((ctx.B, 1), bool)], axis=1)
    old = ctx.qs.concat([ctx.sl(q, 1), ctx.sl(q, -1)])
    return ctx.qs.where(kept, rule(old, q_targets), q_targets)

"""AR / greedy Jacobi / SJD and its lossless successors in one ``lax.while_loop``.

Notation (per row): ``n`` image tokens are committed; the KV cache holds the condition and tokens
``< n - 1``. The window's *chain* of Wc slots feeds token ``n - 1`` and drafts for tokens
``n .. n + Wc - 2``; chain output slot j is p for token ``n + j``. The draft in slot ``i >= 1``
(token ``n + i - 1``, drawn from q_i) is verified against output slot ``i - 1``: accept iff
``u < p(x) / q(x)``. The first rejected draft is replaced by a draw from ``norm(max(0, p - q))``; if
every draft passes, a bonus token is drawn from the last p. Each row keeps its own n, drafts and
acceptance (lossless batching); the loop ends when all rows are done. Rows that are done still ride
along in the (static-shape) forward but change nothing.

One iteration (``body``) is draft -> forward -> verify -> commit. The concerns live in their own
modules: ``drafting`` (drafts for positions with no target yet: the ``init`` rules), ``verify``
(acceptance, residual, coupling of the next drafts), ``tree`` (the proactive draft tree),
``state`` (the carry), ``context`` (per-trace constants and targets), ``compiled`` (jit, meshes).

What every static option changes (``options.SamplerSpec``):

* ``coupling`` — how the next drafts for not-yet-committed positions are made from this iteration's
  targets p_j (q := p_j in every case, so the next verification is exact):
  ``none`` (SJD) independent draws; ``gumbel`` (SCD pi_GS) ``argmax(log p_j + g_j)`` with one Gumbel
  vector per absolute position (regenerated from the key, never stored), so drafts change only when
  p does; ``maximal`` (SCD pi_MC, paper version; the same rule as SJD-PAC's *adaptive
  continuation*) verifies every drafted slot, keeps accepted drafts and replaces rejected ones by a
  residual draw — a maximal coupling of the old draft with p_j.
* ``init`` — drafts for positions that have no target yet (``drafting.DRAFT_INITS``).
* ``tree_width`` K, ``tree_depth`` D — a proactive draft tree (``tree``).
* ``q_slots`` — how the drafts' q are kept between iterations: dense ``[..., V]`` rows, or S
  (id, value) entries over a uniform base (``qstore``; the same tokens, far less state at large V).
* ``chunk_elements`` — the target filters and window-wide draws run in slot chunks whose
  ``[B, t, V]`` temporaries stay under this many elements (the same tokens; less memory, slower).
* ``rules`` — research hooks (``verify.Rules``): pure functions replacing the acceptance test, the
  drafting of positions without a target, the residual; ``exactness.check`` tests them.
* ``lantern_k`` — NOT LOSSLESS (off by default): LANTERN-style relaxed acceptance
  ``u < (p(x) + p(latent neighbours of x within mass delta)) / q(x)``.

``ar`` is this loop with W = 1 (one token per forward). ``jacobi`` is this loop with a one-hot
argmax p: it accepts a draft iff it equals the argmax, so it reproduces greedy AR exactly (so do
all options at temperature 0).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sjd_jax.core import model as gpt
from sjd_jax.core.cache import init_cache
from sjd_jax.sampling import drafting, progress, tree, verify
from sjd_jax.sampling.context import LoopContext, slice_rows, update_rows
from sjd_jax.sampling.drafting import Fresh
from sjd_jax.sampling.state import SamplerState


def prefill(ctx: LoopContext, cond, prefix_mask) -> SamplerState:
    """Condition positions, then token 0 from the last condition output, and the first window's
    drafts (tokens 1 .. Wc - 1; later ones are written by the loop before they are read)."""
    c, B, N, W, Wc, D, qs = ctx.config, ctx.B, ctx.N, ctx.W, ctx.Wc, ctx.D, ctx.qs
    null = jnp.tile(jnp.asarray([False, True]), B) if ctx.spec.cfg else jnp.zeros((B,), bool)
    cond, prefix_mask = gpt.pick_prompt(c, ctx.double(cond), ctx.double(prefix_mask), null)
    x = gpt.embed_cond(ctx.params, c, cond, null)
    cache = init_cache(c, x.shape[0], gpt.null_prefix_mask(c, prefix_mask, null), extra=W if ctx.A else 0)
    logits, cache = gpt.forward(ctx.params, c, x, cache)
    zeros_b = jnp.zeros((B, 1), jnp.int32)
    p0 = ctx.probs(logits[:, -1:], zeros_b)  # [B, 1, V]
    tok0 = ctx.target_draw(zeros_b, 0, p0)  # [B, 1]
    q0_stored = qs.from_p(p0)  # [B, 1]: horizon-sample drafts' q, vertical-sample history row 0
    hist = jnp.zeros((B, 1, 1), jnp.float32)
    if ctx.R > 1:
        hist = qs.concat([q0_stored, qs.uniform((B, ctx.R - 1))])  # rows other than 0 are never read
    buf = jnp.concatenate([tok0, jnp.zeros((B, N + 2 * W - 1), jnp.int32)], axis=1)
    init_tok = jnp.arange(1, Wc + 1, dtype=jnp.int32)[None, :].repeat(B, 0)
    vals, q0 = drafting.fresh(ctx, Fresh(init_tok, jnp.zeros((B,), jnp.int32), buf, p0[:, 0],
                                         qs.map(lambda x: x[:, 0], q0_stored), hist, 0))
    buf = buf.at[:, 1:Wc + 1].set(vals)
    q = qs.concat([qs.uniform((B, 1)), ctx.sl(q0, 0, Wc - 1)])
    if ctx.A:
        alt, alt_q, alt_ok = tree.candidates(ctx, buf[:, 1:D + 1], ctx.sl(q, 1, D + 1), init_tok[:, :D], 0)
    else:
        alt, alt_q, alt_ok = jnp.zeros((B, 0), jnp.int32), qs.uniform((B, 0)), jnp.zeros((B, 0), bool)
    return SamplerState.make(buf=buf, q=q, alt=alt, alt_q=alt_q, alt_ok=alt_ok, hist=hist, cache=cache,
                             num_tokens=N)


class Verdict(NamedTuple):
    path: jax.Array  # [B, Wc-1] the accepted path's drafts (tokens n ..)
    L: jax.Array  # [B] accepted drafts
    last: jax.Array  # [B] the corrected or bonus token after them
    acc_exact: jax.Array  # [B, Wc-1] chain drafts passing the exact test (maximal coupling keeps them)
    chosen: jax.Array | None  # [B] tree: 0 primary, k + 1 side branch k, -1 none (None: no tree)


def forward(ctx: LoopContext, s: SamplerState, win, root):
    """The window (chain ``win [B, Wc]`` + side branches) through the model from cache slot
    ``root [B]``: (targets p [B, W, V], cache)."""
    n, D, Kb = s.n, ctx.D, ctx.Kb
    cache = s.cache.with_length(ctx.double(root))
    inputs = jnp.concatenate([win, s.alt], axis=1) if ctx.A else win
    offsets, tree_mask = ctx.spec.tree_structure()
    logits, cache = gpt.forward(ctx.params, ctx.config, gpt.embed_tokens(ctx.params, ctx.config, ctx.double(inputs)),
                                cache, offsets, tree_mask)
    # output slot tokens: chain slot j predicts n + j; branch slot at level d (0-based) n + 1 + d
    slots = jnp.arange(ctx.Wc, dtype=jnp.int32)
    out_tok = n[:, None] + jnp.concatenate([slots, 1 + jnp.tile(jnp.arange(D, dtype=jnp.int32), Kb)])[None]
    return ctx.probs(logits, out_tok), cache


def check(ctx: LoopContext, s: SamplerState, win, p, it) -> Verdict:
    """Verify the chain (and the tree's side branches) and draw the token after the accepted path."""
    v = verify.verify_chain(ctx, s.q, win, p[:, :ctx.Wc], s.n, it)
    chosen = fallback = None
    if ctx.A:
        v, chosen, p_cur = tree.verify(ctx, v, s, p, s.n, it)
        fallback = (chosen < 0, p_cur)  # every level-1 candidate failed: draw from the running target
    last = verify.correction(ctx, v, s.n, it, fallback)
    return Verdict(v.path, v.L, last, v.acc_exact, chosen)


def commit(ctx: LoopContext, s: SamplerState, win, pc, v: Verdict, it):
    """The accepted path and its last token, the next drafts and their stored q ->
    (n_new [B], accepted [B], buf, q, hist)."""
    qs, B, N, Wc = ctx.qs, ctx.B, ctx.N, ctx.Wc
    n, active = s.n, s.n < N
    slots = jnp.arange(Wc, dtype=jnp.int32)
    tok = n[:, None] + slots[None, :]  # [B, Wc] token index of each chain output slot
    nxt = verify.next_drafts(ctx, s.q, win, v.acc_exact, pc, tok, it)
    path_next = jnp.concatenate([v.path, jnp.zeros((B, 1), jnp.int32)], axis=1)  # token n + j
    y = jnp.where(slots[None] < v.L[:, None], path_next, jnp.where(slots[None] == v.L[:, None], v.last[:, None], nxt))
    a = jnp.where(active, v.L + (n + v.L < N), 0)  # accepted drafts + corrected/bonus token
    q_targets = qs.from_p(pc)  # [B, Wc] stored
    hist = s.hist
    if ctx.R > 1:  # latest p of each position, for the history inits
        R = ctx.R
        hist = jax.vmap(lambda h, t, pr, on: qs.where(on, qs.map(lambda x, y: x.at[t % R].set(y), h, pr), h))(
            hist, tok, q_targets, active)
    buf = update_rows(s.buf, y, n)
    known_end = n + Wc - 1
    # the next window reaches token n_new + Wc - 2 <= n + 2 Wc - 2: Wc fresh drafts are enough
    fresh_tok = known_end[:, None] + 1 + jnp.arange(Wc, dtype=jnp.int32)[None]
    f_vals, f_q = drafting.fresh(ctx, Fresh(fresh_tok, known_end, buf, pc[:, -1],
                                            qs.map(lambda x: x[:, -1], q_targets), hist, it))
    buf = jnp.where(active[:, None], update_rows(buf, f_vals, n + Wc), s.buf)
    # Chain slot i of the next window is token n_new + i - 1 = output slot a + i - 1 of this one.
    src = a[:, None] + slots[None, :] - 1
    q_pool = qs.concat([verify.kept_targets(ctx, s.q, q_targets, v.acc_exact), f_q])  # targets, then fresh
    q_new = qs.where(active[:, None], qs.take(q_pool, jnp.clip(src, 0, 2 * Wc - 1)), s.q)
    return n + a, a, buf, q_new, hist


def regrow(ctx: LoopContext, s: SamplerState, cache, root, chosen, n_new, buf, q_new, it):
    """Tree: move an accepted branch's K/V onto the chain and draw the next side branches."""
    D, active = ctx.D, s.n < ctx.N
    cache = tree.move_branch_kv(ctx, cache, root, chosen)
    nb_tok = n_new[:, None] + jnp.arange(D, dtype=jnp.int32)[None]
    b_alt, b_q, b_ok = tree.candidates(ctx, slice_rows(buf, n_new, D), ctx.sl(q_new, 1, D + 1), nb_tok, it)
    keep = active[:, None]
    return s.replace(cache=cache, alt=jnp.where(keep, b_alt, s.alt), alt_q=ctx.qs.where(keep, b_q, s.alt_q),
                     alt_ok=jnp.where(keep, b_ok, s.alt_ok), branch_hits=s.branch_hits + (active & (chosen >= 1)))


def body(ctx: LoopContext, s: SamplerState) -> SamplerState:
    """One iteration: draft -> forward -> verify -> commit, for every row at once."""
    it, n, N = s.it + 1, s.n, ctx.N
    active = n < N
    row_it = s.nfe  # [B] each row's own iteration (keys follow it, so a refilled row draws as if alone)
    win = slice_rows(s.buf, n - 1, ctx.Wc)  # [B, Wc]: token n-1, then drafts for n .. n+Wc-2
    root = ctx.C + n - 1  # cache slot of the window's first token
    p, cache = forward(ctx, s, win, root)
    v = check(ctx, s, win, p, row_it)
    n_new, a, buf, q_new, hist = commit(ctx, s, win, p[:, :ctx.Wc], v, row_it)
    if ctx.A:
        s = regrow(ctx, s, cache, root, v.chosen, n_new, buf, q_new, row_it)
    else:
        s = s.replace(cache=cache)
    if ctx.spec.progress:  # row iterations: forwards after the prefill of each row while it was active
        progress.emit(ctx.knobs, jnp.sum(jnp.minimum(n_new, N)), it, jnp.sum(s.nfe + active - 1))
    return s.replace(n=n_new, buf=buf, q=q_new, hist=hist).record(it, active, a, N)


def cond_fn(ctx: LoopContext, s: SamplerState):
    return jnp.any(s.n < ctx.N) & (s.it < ctx.N)

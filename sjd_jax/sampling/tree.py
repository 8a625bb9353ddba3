"""The proactive draft tree (SJD-PAC): K - 1 side branches of D tokens hang off the window's first
token, after the chain in the window.

Level d of branch k is drawn without replacement from the primary draft's q at that level (Gumbel
top-k), so its q is q with the earlier candidates zeroed and renormalised. Level 1 is verified by
recursive rejection (primary, then each sibling against the residual of the previous); an accepted
side branch continues down its own levels, and its K/V are moved onto the chain's cache slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sjd_jax.sampling import keys as K
from sjd_jax.sampling.context import LoopContext, gather_rows, log
from sjd_jax.sampling.verify import ChainVerdict, accept_mass, accepts


def candidates(ctx: LoopContext, primary, qp, tok, it):
    """Side-branch candidates for window levels 1..D: ``primary [B, D]`` with stored q ``qp [B, D]``
    for tokens ``tok [B, D]``. Returns tokens [B, A], stored q [B, A], ok [B, A] (branch-major)."""
    qs, B, Kb, A, V, N = ctx.qs, ctx.B, ctx.Kb, ctx.A, ctx.V, ctx.N
    g = K.gumbel(K.slot_keys(ctx.rows, K.TREE, tok, it), V)
    first = jax.nn.one_hot(primary, V, dtype=bool)
    score = jnp.where(first, -jnp.inf, log(qs.dense(qp)) + g)
    top, idx = jax.lax.top_k(score, Kb)  # Gumbel top-k = sequential draws without replacement
    removed = jnp.concatenate([primary[..., None], idx.astype(jnp.int32)], -1)  # [B, D, 1 + Kb]
    sib = [qs.exclude(qp, removed[..., :k + 1]) for k in range(Kb)]  # q without the earlier candidates
    ok = jnp.isfinite(top) & (tok < N)[..., None]  # [B, D, Kb]
    alt = jnp.moveaxis(idx, -1, 1).reshape(B, A).astype(jnp.int32)
    alt_q = qs.map(lambda *xs: jnp.stack(xs, 1).reshape((B, A) + xs[0].shape[2:]), *sib)
    return alt, alt_q, jnp.moveaxis(ok, -1, 1).reshape(B, A)


def _level_one(ctx: LoopContext, v: ChainVerdict, q, alt, alt_q, alt_ok, pc0, n, it):
    """Recursive rejection over the primary draft and the side-branch siblings at level 1.
    Returns (chosen [B]: 0 primary, k + 1 branch k, -1 none; the running target [B, V])."""
    qs, rules = ctx.qs, ctx.spec.rules
    first = v.acc[:, 0]  # the primary draft (token n)
    chosen = jnp.where(first, 0, -1)
    p_cur = jnp.where((~first & v.inside[:, 0])[:, None], rules.sibling_residual(pc0, qs.dense(ctx.sl(q, 1, 2))[:, 0]),
                      pc0)
    for k in range(ctx.Kb):
        xk, qk = alt[:, k, 0], qs.map(lambda x: x[:, k, 0], alt_q)
        uk = K.uniform(K.slot_keys(ctx.rows, K.ACCEPT_BRANCH + k, n[:, None], it))[:, 0]
        ok = alt_ok[:, k, 0] & (chosen < 0)
        chosen = jnp.where(ok & accepts(ctx, uk, accept_mass(ctx, p_cur, xk), qs.at(qk, xk)), k + 1, chosen)
        p_cur = jnp.where((ok & (chosen < 0))[:, None], rules.sibling_residual(p_cur, qs.dense(qk)), p_cur)
    return chosen, p_cur


def _deeper(ctx: LoopContext, alt, alt_q, alt_ok, pa, n, it):
    """[B, Kb, D-1] acceptance of each branch's deeper levels against its own parent's output."""
    qs, B, Kb, D = ctx.qs, ctx.B, ctx.Kb, ctx.D
    lvl_tok = n[:, None] + jnp.arange(1, D, dtype=jnp.int32)[None]  # [B, D-1]
    accs = []
    for k in range(Kb):
        uk = K.uniform(K.slot_keys(ctx.rows, K.ACCEPT_BRANCH + k, lvl_tok, it))
        xk = alt[:, k, 1:]
        q_k = qs.at(qs.map(lambda x: x[:, k, 1:], alt_q), xk)
        accs.append(alt_ok[:, k, 1:] & accepts(ctx, uk, accept_mass(ctx, pa[:, k, :-1], xk), q_k))
    return jnp.stack(accs, 1) if D > 1 else jnp.zeros((B, Kb, 0), bool)


def verify(ctx: LoopContext, v: ChainVerdict, s, p, n, it):
    """The chain verdict ``v`` with the tree's side branches: the accepted path may leave the chain
    for a side branch. p: [B, W, V] this iteration's targets. Returns (verdict, chosen [B], the
    target where every level-1 candidate failed [B, V])."""
    qs, B, Kb, D, Wc, V, N = ctx.qs, ctx.B, ctx.Kb, ctx.D, ctx.Wc, ctx.V, ctx.N
    alt = s.alt.reshape(B, Kb, D)
    alt_q = qs.map(lambda x: x.reshape((B, Kb, D) + x.shape[2:]), s.alt_q)
    alt_ok = s.alt_ok.reshape(B, Kb, D)
    pa = p[:, Wc:].reshape(B, Kb, D, V)  # branch k, level d: p for token n + d
    # (a tree's chain always has Wc >= D + 1 >= 2, so the primary draft exists)
    chosen, p_cur = _level_one(ctx, v, s.q, alt, alt_q, alt_ok, p[:, 0], n, it)
    acc_b = _deeper(ctx, alt, alt_q, alt_ok, pa, n, it)
    kk = jnp.clip(chosen - 1, 0, Kb - 1)
    on_branch = chosen >= 1
    L_b = 1 + jnp.sum(jnp.cumprod(gather_rows(acc_b, kk).astype(jnp.int32), axis=1), axis=1)
    len_b = jnp.sum(jnp.cumprod(gather_rows(alt_ok, kk).astype(jnp.int32), axis=1), axis=1)
    L = jnp.where(chosen < 0, 0, jnp.where(on_branch, L_b, v.L))
    path_len = jnp.where(on_branch, jnp.minimum(len_b, N - n), v.path_len)
    pa_k, qa_k = gather_rows(pa, kk), ctx.rows_at(alt_q, kk)  # [B, D]
    p_L = jnp.where(on_branch[:, None], gather_rows(pa_k, jnp.clip(L - 1, 0, D - 1)), v.p_L)
    q_L1 = qs.where(on_branch, ctx.rows_at(qa_k, jnp.clip(L, 0, D - 1)), v.q_L1)
    b_tok = jnp.pad(gather_rows(alt, kk), ((0, 0), (0, max(Wc - 1 - D, 0))))[:, :Wc - 1]
    path = jnp.where(on_branch[:, None], b_tok, v.path)
    v = v._replace(L=L, p_L=p_L, q_L1=q_L1, path=path, path_len=path_len)
    return v, chosen, p_cur


def move_branch_kv(ctx: LoopContext, cache, root, chosen):
    """An accepted side branch: its K/V move from the branch's cache slots onto the chain's
    (``root [B]``: cache slot of the window's first token)."""
    Wc, D = ctx.Wc, ctx.D
    on_branch = chosen >= 1
    lv = jnp.arange(1, D + 1, dtype=jnp.int32)[None]
    src_slot = jnp.where(on_branch[:, None], root[:, None] + Wc + (chosen[:, None] - 1) * D + lv - 1,
                         root[:, None] + lv)
    dst_slot, src_slot = ctx.double(root[:, None] + lv), ctx.double(src_slot)
    r_idx = jnp.arange(dst_slot.shape[0])[:, None]
    move = lambda x: x.at[r_idx, dst_slot].set(x[r_idx, src_slot], mode="drop")  # noqa: E731
    return cache.replace(k=tuple(move(x) for x in cache.k), v=tuple(move(x) for x in cache.v))

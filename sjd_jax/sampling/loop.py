"""AR / greedy Jacobi / SJD and its lossless successors in one jit-compiled ``lax.while_loop``.

Notation (per row): ``n`` image tokens are committed; the KV cache holds the condition and tokens
``< n - 1``. The window's *chain* of Wc slots feeds token ``n - 1`` and drafts for tokens
``n .. n + Wc - 2``; chain output slot j is p for token ``n + j``. The draft in slot ``i >= 1``
(token ``n + i - 1``, drawn from q_i) is verified against output slot ``i - 1``: accept iff
``u < p(x) / q(x)``. The first rejected draft is replaced by a draw from ``norm(max(0, p - q))``; if
every draft passes, a bonus token is drawn from the last p. Each row keeps its own n, drafts and
acceptance (lossless batching); the loop ends when all rows are done. Rows that are done still ride
along in the (static-shape) forward but change nothing.

What every static option changes (``SamplerSpec``):

* ``coupling`` — how the next drafts for not-yet-committed positions are made from this iteration's
  targets p_j (q := p_j in every case, so the next verification is exact):
  ``none`` (SJD) independent draws; ``gumbel`` (SCD pi_GS) ``argmax(log p_j + g_j)`` with one Gumbel
  vector per absolute position (regenerated from the key, never stored), so drafts change only when
  p does; ``maximal`` (SCD pi_MC, paper version; the same rule as SJD-PAC's *adaptive
  continuation*) verifies every drafted slot, keeps accepted drafts and replaces rejected ones by a
  residual draw — a maximal coupling of the old draft with p_j.
* ``init`` — drafts for positions that have no target yet: ``uniform`` random with q = 1/V;
  ``horizon-repeat`` / ``vertical-repeat`` copy the token to the left / above (q = one-hot: valid
  for any draft that does not use its own position's verification randomness); ``horizon-sample``
  / ``vertical-sample`` draw from that neighbour's latest target distribution (q = that p).
* ``tree_width`` K, ``tree_depth`` D — a proactive draft tree (SJD-PAC): K - 1 side branches of D
  tokens each hang off the window's first token, after the chain in the window. Level d of branch k
  is drawn without replacement from the primary draft's q at that level (Gumbel top-k), so its q is
  q with the earlier candidates zeroed and renormalised. Level 1 is verified by recursive rejection
  (primary, then each sibling against the residual of the previous); an accepted side branch
  continues down its own levels, and its K/V are moved into place in the cache.
* ``q_slots`` — how the drafts' q are kept between iterations: dense ``[..., V]`` rows, or S
  (id, value) entries over a uniform base (``qstore``; the same tokens, far less state at large V).
* ``chunk_elements`` — the target filters and window-wide draws run in slot chunks whose
  ``[B, t, V]`` temporaries stay under this many elements (the same tokens; less memory, slower).
* ``accept_rule`` / ``draft_rule`` — research hooks: a pure function replacing the acceptance test or
  the drafting of positions without a target (``DraftContext``); ``exactness.check`` tests them.
* ``lantern_k`` — NOT LOSSLESS (off by default): LANTERN-style relaxed acceptance
  ``u < (p(x) + p(latent neighbours of x within mass delta)) / q(x)``.

``ar`` is this loop with W = 1 (one token per forward). ``jacobi`` is this loop with a one-hot
argmax p: it accepts a draft iff it equals the argmax, so it reproduces greedy AR exactly (so do
all options at temperature 0).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .. import model as gpt
from .. import sharding as shd
from ..cache import KVCache, init_cache
from ..config import GPTConfig
from ..validate import COUPLINGS, INITS  # noqa: F401  (re-exported)
from . import keys as K
from .processors import target_probs
from .qstore import QStore, SparseQ

# 2^28 float32 = 1 GiB per temporary: one pass on an accelerator for Emu3 up to B * W = 1453
DEFAULT_CHUNK_ELEMENTS = 1 << 28
TRACE_COUNT = 0  # incremented each time the sampler is traced (tests assert no recompiles)
# host callbacks f(committed_tokens, iteration, row_iterations); the last one is called
PROGRESS_HOOKS: list = []


def _report_progress(done, it, row_iters):
    if PROGRESS_HOOKS:
        PROGRESS_HOOKS[-1](int(done), int(it), int(row_iters))


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Everything static about a generate call (hashable; one compile per spec and batch shape)."""

    config: GPTConfig
    method: str = "sjd"
    window: int = 16  # forward positions per iteration (chain + tree side branches)
    cfg: bool = True  # compute unconditional rows (cfg_scale itself is traced)
    progress: bool = False  # report (committed tokens, iteration) to the host after each iteration
    coupling: str = "none"
    init: str = "uniform"
    tree_width: int = 1  # K candidates for the window's first draft (1 = no tree)
    tree_depth: int = 0  # D tokens per side branch
    lantern_k: int = 0  # LOSSY relaxed acceptance over k latent neighbours (0 = off)
    # Draft distributions q: 0 = dense [..., V] rows; S > 0 = compact rows of S entries
    # (``qstore``; exact when p has at most S non-zeros, which ``qstore.q_capacity`` ensures).
    q_slots: int = 0
    # Most elements of a [B, t, V] temporary of the target filters and the window's draws: above it
    # they run t < W slots at a time (sequential passes: less memory, more latency).
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    # Research hooks (pure functions, traced into the loop; one compile per function object):
    # ``accept_rule(u, p_x, q_x) -> bool`` replaces the test ``u * q_x < p_x`` (u ~ U[0, 1)) for
    # every draft, chain and tree alike; ``draft_rule(DraftContext) -> (tokens [B, F], q [B, F, V])``
    # replaces ``init`` for positions that have no target yet, and must return the exact q its
    # tokens were drawn from (dense q storage). ``exactness.check`` tells whether a rule is lossless.
    accept_rule: Callable | None = None
    draft_rule: Callable | None = None
    # Device mesh (``sharding.make_mesh``) or None (one device). Part of the compile key: the
    # sampler pins params, cache and state to ``sharding.RULES`` on it.
    mesh: Any = None
    # Test hooks for negative controls only: deliberately wrong rules must fail the
    # exact-distribution test. "resample_from_p": draw the rejected token from p, not the residual;
    # "keep_old_q": maximal coupling keeps an accepted draft's old q (SCD's released code);
    # "sibling_vs_p": tree siblings are each tested against p instead of the running residual.
    _broken: str = ""

    @property
    def effective_window(self) -> int:
        return 1 if self.method == "ar" else self.window

    @property
    def branches(self) -> int:
        """Side branches of the draft tree (0 = plain chain)."""
        return self.tree_width - 1 if self.method != "ar" and self.tree_depth > 0 else 0

    @property
    def chain(self) -> int:
        """Chain slots of the window (the rest are tree side branches)."""
        return self.effective_window - self.branches * self.tree_depth

    def tree_structure(self):
        """(offsets [W], ancestor mask [W, W]) of the window, or (None, None) for a plain chain."""
        if not self.branches:
            return None, None
        W, Wc, D = self.effective_window, self.chain, self.tree_depth
        offsets = np.concatenate([np.arange(Wc), np.tile(np.arange(1, D + 1), self.branches)])
        mask = np.zeros((W, W), bool)
        mask[:Wc, :Wc] = np.tril(np.ones((Wc, Wc), bool))
        for k in range(self.branches):
            for d in range(D):
                s = Wc + k * D + d
                mask[s, 0] = True
                mask[s, Wc + k * D: s + 1] = True
        return offsets.astype(np.int32), mask


class DraftContext(NamedTuple):
    """What a custom ``draft_rule`` sees, for F positions that have no target yet (all traced)."""

    key: jax.Array  # [B, F] PRNG keys, one per (example, absolute token index, iteration)
    token: jax.Array  # [B, F] int32 absolute image-token index of each draft (raster order)
    known_end: jax.Array  # [B] int32: tokens[b, :known_end[b] + 1] hold committed tokens or drafts
    tokens: jax.Array  # [B, L] int32 token buffer (entries past known_end are not meaningful)
    p_last: jax.Array  # [B, V] float32 this iteration's target p for token known_end
    grid_width: int  # tokens per image row (static)


def make_knobs(cfg_scale, temperature, top_k, top_p, lantern_delta=0.0) -> dict:
    """The traced numeric sampling arguments, with fixed dtypes (so values never retrace)."""
    return dict(cfg_scale=jnp.float32(cfg_scale), temperature=jnp.float32(temperature),
                top_k=jnp.int32(top_k), top_p=jnp.float32(top_p), lantern_delta=jnp.float32(lantern_delta))


@flax.struct.dataclass
class GenerateOutput:
    tokens: jax.Array  # [B, N] int32 image tokens
    nfe: jax.Array  # [B] int32 model forwards while the row was active (prefill included)
    iterations: jax.Array  # [] int32 loop iterations run (total forwards = iterations + 1)
    committed: jax.Array  # [B, N] int32: tokens committed by forward k (k = 0 is the prefill)
    branch_hits: jax.Array  # [B] int32 iterations in which a tree side branch was accepted

    @property
    def total_nfe(self):
        return self.iterations + 1


def acceptance_stats(nfe, committed, num_tokens: int, window: int) -> dict:
    """Host-side summary of ``GenerateOutput`` rows (``nfe [B]``, ``committed [B, N]``, rows may be
    concatenated across batches): mean NFE, step compression vs AR, tokens committed per loop
    iteration (prefill excluded) and their histogram over 0..window."""
    nfe = np.asarray(nfe)
    committed = np.asarray(committed)[:, 1:]
    per_iter = committed[committed > 0]
    return {"nfe_mean": float(nfe.mean()), "step_compression": float(num_tokens / nfe.mean()),
            "mean_accepted_per_iteration": float(per_iter.mean()) if per_iter.size else 0.0,
            "accepted_histogram": np.bincount(per_iter, minlength=window + 1).tolist()}


@flax.struct.dataclass
class _State:
    it: jax.Array  # [] int32 iteration id (prefill = 0)
    n: jax.Array  # [B] committed image tokens
    buf: jax.Array  # [B, N + 2W] committed tokens at [0, n), current chain drafts at [n, n + Wc - 1)
    q: Any  # [B, Wc] chain draft distributions by window slot (slot 0 unused), stored by ``QStore``
    alt: jax.Array  # [B, A] side-branch tokens (A = branches * depth; branch-major)
    alt_q: Any  # [B, A] their draft distributions
    alt_ok: jax.Array  # [B, A] candidate exists (a q with mass left) and lies inside the image
    hist: Any  # [B, R] latest p per position mod R (vertical-sample only; else a [B, 1, 1] array)
    cache: KVCache  # rows [cond; uncond] when cfg
    nfe: jax.Array  # [B]
    committed: jax.Array  # [B, N]
    branch_hits: jax.Array  # [B]


def _gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x: [B, W, ...], idx: [B] -> x[b, idx[b]]: [B, ...]."""
    return jax.vmap(lambda xb, i: xb[i])(x, idx)


def _slice_rows(buf: jax.Array, start: jax.Array, size: int) -> jax.Array:
    return jax.vmap(lambda b, s: jax.lax.dynamic_slice(b, (s,), (size,)))(buf, start)


def _update_rows(buf: jax.Array, vals: jax.Array, start: jax.Array) -> jax.Array:
    return jax.vmap(lambda b, v, s: jax.lax.dynamic_update_slice(b, v, (s,)))(buf, vals, start)


def _log(p):
    return jnp.log(jnp.maximum(p, 0.0))  # zeros -> -inf: never drawn


def _residual(p, q):
    """norm(max(0, p - q)); p itself where nothing is left (p == q up to rounding: rejection had
    probability 0)."""
    r = jnp.maximum(p - q, 0.0)
    s = jnp.sum(r, axis=-1, keepdims=True)
    return jnp.where(s > 0, r / jnp.where(s > 0, s, 1.0), p)


def _slot_chunk(B: int, T: int, V: int, budget: int) -> int:
    """Window slots per pass over ``[B, t, V]`` temporaries (target filters, draws): as many as fit
    ``budget`` elements (at least 1, at most T)."""
    return min(T, max(1, budget // (B * V)))


def _by_chunks(T: int, t: int, f, xs, out):
    """``out`` with slots [s, s + t) set to ``f(xs[:, s:s + t])`` for s = 0, t, 2t, ...; the last
    chunk is shifted back to end at T (its overlap is recomputed identically)."""
    def step(i, out):
        start = jnp.minimum(i * t, T - t)
        part = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, t, axis=1), xs)
        return jax.lax.dynamic_update_slice_in_dim(out, f(*part), start, axis=1)

    return jax.lax.fori_loop(0, -(-T // t), step, out)


def _build(spec: SamplerSpec, params, rows, knobs, neighbours):
    """The sampler's pieces for one trace: ``prefill(cond, prefix_mask) -> _State``, ``body`` and
    ``cond_fn`` of the while loop (closures over params, row keys and the traced knobs)."""
    c: GPTConfig = spec.config
    W, N, V, C = spec.effective_window, c.num_image_tokens, c.vocab_size, c.cls_token_num
    Wc, Kb, D = spec.chain, spec.branches, spec.tree_depth
    A = Kb * D
    gw = c.grid_size[1]
    B = rows.shape[0]
    offsets, tree_mask = spec.tree_structure()
    temperature = jnp.where(spec.method == "jacobi", 0.0, knobs["temperature"])
    R = gw + Wc if spec.init == "vertical-sample" else 1

    def sl(q, start, stop=None):  # q[:, start:stop] along the slot axis
        return qs.map(lambda x: x[:, start:stop], q)

    def rows_at(q, idx):  # q[b, idx[b]]
        return qs.map(lambda x: _gather_rows(x, idx), q)

    def double(x):  # CFG rows: each row's unconditional twin right after it ([b cond, b uncond]),
        return jnp.repeat(x, 2, axis=0) if spec.cfg else x  # so both stay on the row's data shard

    # Structure tokens: forced positions get p = one-hot and are drafted as that token with q =
    # one-hot (p/q = 1: always accepted, never a wasted draft); free positions may be restricted to
    # an id range (p renormalised over it; uniform drafts draw from it).
    forced_np, allowed_np = c.forced_tokens(), c.allowed_tokens()
    qs = QStore(V, allowed_np, spec.q_slots)
    has_forced = bool((forced_np >= 0).any())
    forced_tab = jnp.asarray(forced_np)
    allowed_ids = None if allowed_np is None else jnp.asarray(np.flatnonzero(allowed_np), jnp.int32)

    def forced_at(tok):  # tok [B, T] absolute image-token index -> forced id or -1
        return jnp.where(tok < N, forced_tab[jnp.clip(tok, 0, N - 1)], -1)

    def force(vals, q, tok):  # drafts / targets at forced positions -> the forced token, one-hot
        if not has_forced:
            return vals, q
        f = forced_at(tok)
        on = f >= 0
        if vals is None:  # a target p (dense)
            return None, jnp.where(on[..., None], jax.nn.one_hot(jnp.maximum(f, 0), V, dtype=jnp.float32), q)
        return jnp.where(on, f, vals), qs.where(on, qs.onehot(jnp.maximum(f, 0)), q)

    def probs_chunk(logits):  # logits: [B or 2B, t, V] -> p [B, t, V]
        if spec.cfg:
            pair = logits.reshape((B, 2) + logits.shape[1:])
            l_c, l_u = pair[:, 0], pair[:, 1]
        else:
            l_c, l_u = logits, None
        return target_probs(l_c, l_u, knobs["cfg_scale"], temperature, knobs["top_k"], knobs["top_p"], allowed_np)

    def probs(logits, tok):  # logits: [B or 2B, T, V], tok [B, T] -> p [B, T, V]
        T = logits.shape[1]
        t = _slot_chunk(B, T, V, spec.chunk_elements)
        if t == T:
            p = probs_chunk(logits)
        else:  # a few slots at a time: the filters' [B, t, V] temporaries stay small next to p
            p = _by_chunks(T, t, probs_chunk, (logits,), jnp.zeros((B, T, V), jnp.float32))
        return force(None, p, tok)[1]

    def by_slots(f, *xs):
        """``f(*xs)`` -> [B, T] token draws, a few slots at a time (each slot has its own key, so
        the draws are the same): the Gumbel noise and log-probabilities stay ``[B, t, V]``.
        ``xs``: arrays / stored q with the slot axis 1 of length T."""
        T = jax.tree.leaves(xs)[0].shape[1]
        t = _slot_chunk(B, T, V, spec.chunk_elements)
        return f(*xs) if t == T else _by_chunks(T, t, f, xs, jnp.zeros((B, T), jnp.int32))

    def target_draw(tok, it, p):  # a draw from p for tokens tok [B, T] (p [B, T, V])
        if spec.coupling == "gumbel":  # the same Gumbel vector at a position in every iteration
            return by_slots(lambda tk, pp: K.categorical(K.slot_keys(rows, K.GUMBEL, tk, 0), _log(pp)), tok, p)
        return by_slots(lambda tk, pp: K.categorical(K.slot_keys(rows, K.SAMPLE, tk, it), _log(pp)), tok, p)

    def accept_mass(p, x):  # p(x), or LANTERN's relaxed p(x) + nearby latent-neighbour mass
        px = jnp.take_along_axis(p, x[..., None], axis=-1)[..., 0]
        if not spec.lantern_k:
            return px
        pn = jnp.take_along_axis(p, neighbours[x], axis=-1)  # [..., k] nearest first
        return px + jnp.sum(jnp.where(jnp.cumsum(pn, -1) <= knobs["lantern_delta"], pn, 0.0), -1)

    def accepts(u, px, qx):  # the acceptance test of a draft x with target mass px and draft mass qx
        return spec.accept_rule(u, px, qx) if spec.accept_rule is not None else u * qx < px

    def fresh(tok, known_end, buf, p_last, q_last, hist, it):
        """Drafts (values [B, F], stored q [B, F]) for tokens ``tok [B, F]`` that have no target yet;
        tokens ``<= known_end [B]`` hold committed tokens or current drafts in ``buf``. ``p_last``
        [B, V] / ``q_last`` [B] (stored): the latest target, dense and as stored."""
        return force(*_fresh(tok, known_end, buf, p_last, q_last, hist, it), tok)

    def _fresh(tok, known_end, buf, p_last, q_last, hist, it):
        if spec.draft_rule is not None:
            ctx = DraftContext(key=K.slot_keys(rows, K.INIT, tok, it), token=tok, known_end=known_end,
                               tokens=buf, p_last=p_last, grid_width=gw)
            vals, q = spec.draft_rule(ctx)
            if jnp.shape(vals) != tok.shape or jnp.shape(q) != tok.shape + (V,):
                raise ValueError(f"draft_rule must return tokens {tok.shape} and q {tok.shape + (V,)}, "
                                 f"got {jnp.shape(vals)} and {jnp.shape(q)}")
            return jnp.asarray(vals, jnp.int32), jnp.asarray(q, jnp.float32)
        if allowed_ids is None:
            uni = K.randint(K.slot_keys(rows, K.INIT, tok, it), V)
        else:  # uniform over the allowed ids
            uni = allowed_ids[K.randint(K.slot_keys(rows, K.INIT, tok, it), allowed_ids.shape[0])]
        uni_q = qs.uniform(tok.shape)
        if spec.init == "uniform":
            return uni, uni_q
        if spec.init.startswith("horizon"):  # raster left neighbour (column 0: last of the row above)
            src = jnp.broadcast_to(known_end[:, None], tok.shape)
        else:  # the token above; as many rows up as needed to reach a known position
            src = tok - gw * ((tok - known_end[:, None] + gw - 1) // gw)
        has = src >= 0
        if spec.init.endswith("repeat"):
            vals = jnp.take_along_axis(buf, jnp.maximum(src, 0), axis=1)
            q = qs.onehot(vals)
        else:
            if spec.init == "horizon-sample":
                q = qs.map(lambda x: jnp.broadcast_to(x[:, None], tok.shape + x.shape[1:]), q_last)
                draw = lambda tk: K.categorical(K.slot_keys(rows, K.INIT, tk, it),  # noqa: E731
                                                _log(jnp.broadcast_to(p_last[:, None], tk.shape + (V,))))
                vals = by_slots(draw, tok)
            else:
                q = qs.take(hist, jnp.maximum(src, 0) % R)
                vals = by_slots(lambda tk, qq: K.categorical(K.slot_keys(rows, K.INIT, tk, it), _log(qs.dense(qq))),
                                tok, q)
        return jnp.where(has, vals, uni), qs.where(has, q, uni_q)

    def branches(primary, qp, tok, it):
        """Side-branch candidates for window levels 1..D: ``primary [B, D]`` with stored q ``qp [B, D]``.
        Returns tokens [B, A], stored q [B, A], ok [B, A] (branch-major)."""
        g = K.gumbel(K.slot_keys(rows, K.TREE, tok, it), V)
        first = jax.nn.one_hot(primary, V, dtype=bool)
        score = jnp.where(first, -jnp.inf, _log(qs.dense(qp)) + g)
        top, idx = jax.lax.top_k(score, Kb)  # Gumbel top-k = sequential draws without replacement
        removed = jnp.concatenate([primary[..., None], idx.astype(jnp.int32)], -1)  # [B, D, 1 + Kb]
        sib = [qs.exclude(qp, removed[..., :k + 1]) for k in range(Kb)]  # q without the earlier candidates
        ok = jnp.isfinite(top) & (tok < N)[..., None]  # [B, D, Kb]
        alt = jnp.moveaxis(idx, -1, 1).reshape(B, A).astype(jnp.int32)
        alt_q = qs.map(lambda *xs: jnp.stack(xs, 1).reshape((B, A) + xs[0].shape[2:]), *sib)
        return alt, alt_q, jnp.moveaxis(ok, -1, 1).reshape(B, A)

    # ---- prefill: condition positions, then token 0 from the last condition output ----------
    def prefill(cond, prefix_mask):
        null = jnp.tile(jnp.asarray([False, True]), B) if spec.cfg else jnp.zeros((B,), bool)
        cond, prefix_mask = gpt.pick_prompt(c, double(cond), double(prefix_mask), null)
        x = gpt.embed_cond(params, c, cond, null)
        cache = init_cache(c, x.shape[0], gpt.null_prefix_mask(c, prefix_mask, null), extra=W if A else 0)
        logits, cache = gpt.forward(params, c, x, cache)
        zeros_b = jnp.zeros((B, 1), jnp.int32)
        p0 = probs(logits[:, -1:], zeros_b)  # [B, 1, V]
        tok0 = target_draw(zeros_b, 0, p0)  # [B, 1]
        q0_stored = qs.from_p(p0)  # [B, 1]: horizon-sample drafts' q, vertical-sample history row 0
        hist = jnp.zeros((B, 1, 1), jnp.float32)
        if R > 1:
            hist = qs.concat([q0_stored, qs.uniform((B, R - 1))])  # rows other than 0 are never read
        buf = jnp.concatenate([tok0, jnp.zeros((B, N + 2 * W - 1), jnp.int32)], axis=1)
        # Only the first window's drafts (tokens 1 .. Wc - 1) are read before the loop writes later ones.
        init_tok = jnp.arange(1, Wc + 1, dtype=jnp.int32)[None, :].repeat(B, 0)
        vals, q0 = fresh(init_tok, jnp.zeros((B,), jnp.int32), buf, p0[:, 0], qs.map(lambda x: x[:, 0], q0_stored), hist, 0)
        buf = buf.at[:, 1:Wc + 1].set(vals)
        q = qs.concat([qs.uniform((B, 1)), sl(q0, 0, Wc - 1)])
        if A:
            alt, alt_q, alt_ok = branches(buf[:, 1:D + 1], sl(q, 1, D + 1), init_tok[:, :D], 0)
        else:
            alt, alt_q, alt_ok = jnp.zeros((B, 0), jnp.int32), qs.uniform((B, 0)), jnp.zeros((B, 0), bool)
        state = _State(it=jnp.int32(0), n=jnp.ones((B,), jnp.int32), buf=buf, q=q, alt=alt, alt_q=alt_q,
                       alt_ok=alt_ok, hist=hist, cache=cache, nfe=jnp.ones((B,), jnp.int32),
                       committed=jnp.zeros((B, N), jnp.int32).at[:, 0].set(1),
                       branch_hits=jnp.zeros((B,), jnp.int32))
        return state

    slots = jnp.arange(Wc, dtype=jnp.int32)

    def body(s: _State) -> _State:
        it = s.it + 1
        n = s.n
        active = n < N
        win = _slice_rows(s.buf, n - 1, Wc)  # [B, Wc]: token n-1, then drafts for n .. n+Wc-2
        root = C + n - 1  # cache slot of the window's first token
        cache = s.cache.with_length(double(root))
        inputs = jnp.concatenate([win, s.alt], axis=1) if A else win
        logits, cache = gpt.forward(params, c, gpt.embed_tokens(params, c, double(inputs)), cache,
                                    offsets, tree_mask)
        # output slot tokens: chain slot j predicts n + j; branch slot at level d (0-based) n + 1 + d
        out_tok = n[:, None] + jnp.concatenate([slots, 1 + jnp.tile(jnp.arange(D, dtype=jnp.int32), Kb)])[None]
        p = probs(logits, out_tok)  # [B, W, V]
        pc = p[:, :Wc]  # chain slot j: p for token n + j
        tok = n[:, None] + slots[None, :]  # [B, Wc] token index of each chain output slot

        # Verify the chain drafts (slot i >= 1) against slot i - 1: accept iff u < p(x) / q(x).
        d = win[:, 1:]  # [B, Wc-1]
        q_d = qs.at(sl(s.q, 1), d)
        u = K.uniform(K.slot_keys(rows, K.ACCEPT, tok[:, :-1], it))
        inside = tok[:, :-1] < N
        acc_exact = accepts(u, jnp.take_along_axis(pc[:, :-1], d[..., None], axis=-1)[..., 0], q_d) & inside
        acc = accepts(u, accept_mass(pc[:, :-1], d), q_d) & inside if spec.lantern_k else acc_exact
        chain_len = jnp.clip(N - n, 0, Wc - 1)  # drafts inside the image
        L = jnp.sum(jnp.cumprod(acc.astype(jnp.int32), axis=1), axis=1)  # leading accepted drafts
        p_L = _gather_rows(pc, L)  # p for token n + L along the accepted path
        q_L1 = rows_at(s.q, jnp.minimum(L + 1, Wc - 1))  # q of the path's draft there (stored)
        path = d
        path_len = chain_len

        if A:  # level 1: recursive rejection over the primary draft and the side-branch siblings
            alt = s.alt.reshape(B, Kb, D)
            alt_q = qs.map(lambda x: x.reshape((B, Kb, D) + x.shape[2:]), s.alt_q)
            alt_ok = s.alt_ok.reshape(B, Kb, D)
            pa = p[:, Wc:].reshape(B, Kb, D, V)  # branch k, level d: p for token n + d
            first = acc[:, 0]  # the primary draft (a tree's chain always has Wc >= D + 1 >= 2)
            chosen = jnp.where(first, 0, -1)
            p_cur = pc[:, 0]
            if spec._broken != "sibling_vs_p":
                p_cur = jnp.where((~first & inside[:, 0])[:, None], _residual(p_cur, qs.dense(sl(s.q, 1, 2))[:, 0]),
                                  p_cur)
            for k in range(Kb):
                xk, qk = alt[:, k, 0], qs.map(lambda x: x[:, k, 0], alt_q)
                uk = K.uniform(K.slot_keys(rows, K.ACCEPT_BRANCH + k, n[:, None], it))[:, 0]
                ok = alt_ok[:, k, 0] & (chosen < 0)
                chosen = jnp.where(ok & accepts(uk, accept_mass(p_cur, xk), qs.at(qk, xk)), k + 1, chosen)
                if spec._broken != "sibling_vs_p":
                    p_cur = jnp.where((ok & (chosen < 0))[:, None], _residual(p_cur, qs.dense(qk)), p_cur)
            # deeper levels of each branch against its own parent's output
            lvl_tok = n[:, None] + jnp.arange(1, D, dtype=jnp.int32)[None]  # [B, D-1]
            accs = []
            for k in range(Kb):
                uk = K.uniform(K.slot_keys(rows, K.ACCEPT_BRANCH + k, lvl_tok, it))
                xk = alt[:, k, 1:]
                q_k = qs.at(qs.map(lambda x: x[:, k, 1:], alt_q), xk)
                accs.append(alt_ok[:, k, 1:] & accepts(uk, accept_mass(pa[:, k, :-1], xk), q_k))
            acc_b = jnp.stack(accs, 1) if D > 1 else jnp.zeros((B, Kb, 0), bool)  # [B, Kb, D-1]
            kk = jnp.clip(chosen - 1, 0, Kb - 1)
            on_branch = chosen >= 1
            L_b = 1 + jnp.sum(jnp.cumprod(_gather_rows(acc_b, kk).astype(jnp.int32), axis=1), axis=1)
            len_b = jnp.sum(jnp.cumprod(_gather_rows(alt_ok, kk).astype(jnp.int32), axis=1), axis=1)
            L = jnp.where(chosen < 0, 0, jnp.where(on_branch, L_b, L))
            path_len = jnp.where(on_branch, jnp.minimum(len_b, N - n), chain_len)
            pa_k, qa_k = _gather_rows(pa, kk), rows_at(alt_q, kk)  # [B, D]
            p_L = jnp.where(on_branch[:, None], _gather_rows(pa_k, jnp.clip(L - 1, 0, D - 1)), p_L)
            q_L1 = qs.where(on_branch, rows_at(qa_k, jnp.clip(L, 0, D - 1)), q_L1)
            b_tok = jnp.pad(_gather_rows(alt, kk), ((0, 0), (0, max(Wc - 1 - D, 0))))[:, :Wc - 1]
            path = jnp.where(on_branch[:, None], b_tok, d)

        rejected = L < path_len  # the path's draft for token n + L was rejected
        resid = _residual(p_L, qs.dense(q_L1))
        if A:
            resid = jnp.where((chosen < 0)[:, None], p_cur, resid)  # every level-1 candidate failed
        if spec._broken == "resample_from_p":
            resid = p_L
        fix = K.categorical(K.slot_keys(rows, K.RESIDUAL, (n + L)[:, None], it), _log(resid)[:, None])[:, 0]
        bonus = target_draw((n + L)[:, None], it, p_L[:, None])[:, 0]
        last = jnp.where(rejected, fix, bonus)

        # Next drafts for the chain's later tokens (q := this iteration's p there).
        if spec.coupling == "maximal":
            redraw = by_slots(lambda tk, pp, qq: K.categorical(K.slot_keys(rows, K.RESIDUAL, tk, it),
                                                               _log(_residual(pp, qs.dense(qq)))),
                              tok[:, :-1], pc[:, :-1], sl(s.q, 1))
            nxt = jnp.concatenate([jnp.where(acc_exact, d, redraw),
                                   target_draw(tok[:, -1:], it, pc[:, -1:])], axis=1)
        else:
            nxt = target_draw(tok, it, pc)  # [B, Wc]
        path_next = jnp.concatenate([path, jnp.zeros((B, 1), jnp.int32)], axis=1)  # token n + j
        y = jnp.where(slots[None] < L[:, None], path_next, jnp.where(slots[None] == L[:, None], last[:, None], nxt))
        a = jnp.where(active, L + (n + L < N), 0)  # accepted drafts + corrected/bonus token
        n_new = n + a

        q_targets = qs.from_p(pc)  # [B, Wc] stored
        hist = s.hist
        if R > 1:  # latest p of each position, for vertical-sample drafts
            hist = jax.vmap(lambda h, t, pr, on: qs.where(on, qs.map(lambda x, y: x.at[t % R].set(y), h, pr), h))(
                hist, tok, q_targets, active)
        buf = _update_rows(s.buf, y, n)
        known_end = n + Wc - 1
        # the next window reaches token n_new + Wc - 2 <= n + 2 Wc - 2: Wc fresh drafts are enough
        fresh_tok = known_end[:, None] + 1 + jnp.arange(Wc, dtype=jnp.int32)[None]
        f_vals, f_q = fresh(fresh_tok, known_end, buf, pc[:, -1], qs.map(lambda x: x[:, -1], q_targets), hist, it)
        buf = jnp.where(active[:, None], _update_rows(buf, f_vals, n + Wc), s.buf)

        # Chain slot i of the next window is token n_new + i - 1 = output slot a + i - 1 of this one.
        src = a[:, None] + slots[None, :] - 1
        if spec._broken == "keep_old_q" and spec.coupling == "maximal":  # kept draft keeps its old q
            kept = jnp.concatenate([acc_exact, jnp.zeros((B, 1), bool)], axis=1)
            q_targets = qs.where(kept, qs.concat([sl(s.q, 1), sl(s.q, -1)]), q_targets)
        q_pool = qs.concat([q_targets, f_q])  # targets, then fresh drafts' q
        q_new = qs.take(q_pool, jnp.clip(src, 0, 2 * Wc - 1))
        q_new = qs.where(active[:, None], q_new, s.q)

        new = dict(alt=s.alt, alt_q=s.alt_q, alt_ok=s.alt_ok, branch_hits=s.branch_hits)
        if A:
            # an accepted side branch: move its K/V from the branch's cache slots onto the chain's
            lv = jnp.arange(1, D + 1, dtype=jnp.int32)[None]
            src_slot = jnp.where(on_branch[:, None], root[:, None] + Wc + (chosen[:, None] - 1) * D + lv - 1,
                                 root[:, None] + lv)
            dst_slot, src_slot = double(root[:, None] + lv), double(src_slot)
            r_idx = jnp.arange(dst_slot.shape[0])[:, None]
            cache = cache.replace(k=tuple(x.at[r_idx, dst_slot].set(x[r_idx, src_slot], mode="drop") for x in cache.k),
                                  v=tuple(x.at[r_idx, dst_slot].set(x[r_idx, src_slot], mode="drop") for x in cache.v))
            nb_tok = n_new[:, None] + jnp.arange(D, dtype=jnp.int32)[None]
            b_alt, b_q, b_ok = branches(_slice_rows(buf, n_new, D), sl(q_new, 1, D + 1), nb_tok, it)
            keep = active[:, None]
            new = dict(alt=jnp.where(keep, b_alt, s.alt), alt_q=qs.where(keep, b_q, s.alt_q),
                       alt_ok=jnp.where(keep, b_ok, s.alt_ok), branch_hits=s.branch_hits + (active & on_branch))
        committed = s.committed.at[:, jnp.minimum(it, N - 1)].set(
            jnp.where(active, a, s.committed[:, jnp.minimum(it, N - 1)]))
        if spec.progress:
            # row iterations: forwards after the prefill of each row while it was active
            jax.debug.callback(_report_progress, jnp.sum(jnp.minimum(n_new, N)), it, jnp.sum(s.nfe + active - 1))
        return _State(it=it, n=n_new, buf=buf, q=q_new, hist=hist, cache=cache, nfe=s.nfe + active,
                      committed=committed, **new)

    def cond_fn(s: _State):
        return jnp.any(s.n < N) & (s.it < N)

    return prefill, body, cond_fn


def _state_axes(state: _State) -> _State:
    """Logical axes of every state leaf (``sharding.RULES`` maps them to the mesh)."""
    cache = state.cache.replace(k=tuple(shd.KV_AXES for _ in state.cache.k), v=tuple(shd.KV_AXES for _ in state.cache.v),
                                length=("batch",), prefix_mask=("batch", None))
    row, row2 = ("batch",), ("batch", None)

    def dist(q):  # dense rows shard their vocabulary; compact entries stay whole
        if isinstance(q, SparseQ):
            return SparseQ(ids=("batch", None, None), vals=("batch", None, None), base=row2)
        return ("batch", None, "vocab")

    return _State(it=(), n=row, buf=row2, q=dist(state.q), alt=row2, alt_q=dist(state.alt_q), alt_ok=row2,
                  hist=dist(state.hist), cache=cache, nfe=row, committed=row2, branch_hits=row)


def _pin(state: _State) -> _State:
    """Constrain the state to its shardings (identity without an active mesh)."""
    return shd.constrain_tree(state, _state_axes(state), "sampler state")


def _prefill_impl(spec: SamplerSpec, params, cond, prefix_mask, rows, knobs, neighbours=None) -> _State:
    global TRACE_COUNT
    TRACE_COUNT += 1
    with shd.active(spec.mesh):
        prefill, _, _ = _build(spec, params, _keys(rows), knobs, neighbours)
        return _pin(prefill(cond, prefix_mask))


def _loop_impl(spec: SamplerSpec, params, state: _State, rows, knobs, neighbours=None):
    """Runs the while loop -> (final state, GenerateOutput). Returning the state lets a donated
    input state's buffers (the KV cache above all) be updated in place instead of copied."""
    with shd.active(spec.mesh):
        _, body, cond_fn = _build(spec, params, _keys(rows), knobs, neighbours)
        s = _pin(jax.lax.while_loop(cond_fn, lambda s: _pin(body(s)), state))
    return s, GenerateOutput(tokens=s.buf[:, :spec.config.num_image_tokens], nfe=s.nfe, iterations=s.it,
                             committed=s.committed, branch_hits=s.branch_hits)


def _generate_impl(spec: SamplerSpec, params, cond, prefix_mask, rows, knobs, neighbours=None) -> GenerateOutput:
    """Prefill and loop in one executable: the state never leaves it, so XLA updates the loop carry
    in place (one device; meshes use ``sharded_jits``)."""
    state = _prefill_impl(spec, params, cond, prefix_mask, rows, knobs, neighbours)
    return _loop_impl(spec, params, state, rows, knobs, neighbours)[1]


def _keys(rows):
    """Row keys arrive typed, or as raw ``[B, 2]`` uint32 data (sharded inputs are built from host
    numbers, which cannot hold key dtypes)."""
    return rows if jnp.issubdtype(rows.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(rows)


_generate_jit = jax.jit(_generate_impl, static_argnums=0)


def run(spec: SamplerSpec, params, cond, prefix_mask, rows, knobs, neighbours=None) -> GenerateOutput:
    """The sampler on validated, placed arguments: one executable on one device; on a mesh the
    prefill (creating the sharded cache and state) and the loop (taking that state donated), both
    with explicit in/out shardings."""
    if spec.mesh is None:
        return _generate_jit(spec, params, cond, prefix_mask, rows, knobs, neighbours)
    prefill, loop = sharded_jits(spec, _sig(cond, prefix_mask, rows, neighbours))
    state = prefill(params, cond, prefix_mask, rows, knobs, neighbours)
    return loop(params, state, rows, knobs, neighbours)[1]


def _sig(*xs):
    """Hashable shapes/dtypes of the inputs (the sharded jits are built per input signature)."""
    return tuple(None if x is None else (tuple(x.shape), str(x.dtype)) for x in xs)


@functools.lru_cache(maxsize=32)
def sharded_jits(spec: SamplerSpec, sig):
    """(prefill, loop) jitted with explicit in/out shardings on ``spec.mesh`` for inputs of
    signature ``sig`` (cond, prefix_mask, rows, neighbours); the loop donates the state."""
    mesh = spec.mesh
    cond_s, mask_s, rows_s, nb_s = sig
    abstract_params = gpt.abstract_params(spec.config)
    params_sh = shd.param_shardings(abstract_params, mesh)
    rep = shd.replicated(mesh)
    cond_sh = shd.batch_sharding(mesh, cond_s[0], "cond")
    mask_sh = shd.batch_sharding(mesh, mask_s[0], "prefix mask")
    rows_sh = shd.batch_sharding(mesh, rows_s[0], "row keys")
    knobs_sh = rep  # scalars (a prefix of the knobs dict)
    nb_sh = None if nb_s is None else rep
    abstract = jax.eval_shape(functools.partial(_prefill_impl, spec), abstract_params,
                              jax.ShapeDtypeStruct(*cond_s), jax.ShapeDtypeStruct(*mask_s),
                              jax.ShapeDtypeStruct(*rows_s), make_knobs(1.0, 1.0, 0, 1.0),
                              None if nb_s is None else jax.ShapeDtypeStruct(*nb_s))
    state_sh = jax.tree.map(lambda x, ax: shd.named(mesh, x.shape, ax, "sampler state"), abstract,
                            _state_axes(abstract), is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    B, N = cond_s[0][0], spec.config.num_image_tokens
    row = ("batch",)
    out_sh = GenerateOutput(tokens=shd.named(mesh, (B, N), row), nfe=shd.named(mesh, (B,), row), iterations=rep,
                            committed=shd.named(mesh, (B, N), row), branch_hits=shd.named(mesh, (B,), row))
    prefill = jax.jit(functools.partial(_prefill_impl, spec),
                      in_shardings=(params_sh, cond_sh, mask_sh, rows_sh, knobs_sh, nb_sh),
                      out_shardings=state_sh)
    loop = jax.jit(functools.partial(_loop_impl, spec),
                   in_shardings=(params_sh, state_sh, rows_sh, knobs_sh, nb_sh),
                   out_shardings=(state_sh, out_sh), donate_argnums=1)
    return prefill, loop

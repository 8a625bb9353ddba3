"""What one trace of the sampler shares: sizes, row keys, knobs, structure tokens, and the targets.

``LoopContext`` is built once per trace (``loop.build``) and handed to the drafting, verification
and tree modules; it holds no loop state. Its target helpers turn logits into target
distributions p (CFG, temperature, top-k, top-p, structure tokens) and draw from them, a few
window slots at a time when the ``[B, t, V]`` temporaries would exceed ``spec.chunk_elements``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.sampling import keys as K
from sjd_jax.sampling.processors import target_probs
from sjd_jax.sampling.qstore import QStore


def log(p):
    return jnp.log(jnp.maximum(p, 0.0))  # zeros -> -inf: never drawn


def gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x: [B, W, ...], idx: [B] -> x[b, idx[b]]: [B, ...]."""
    return jax.vmap(lambda xb, i: xb[i])(x, idx)


def slice_rows(buf: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """buf: [B, L], start: [B] -> [B, size] (each row's own window)."""
    return jax.vmap(lambda b, s: jax.lax.dynamic_slice(b, (s,), (size,)))(buf, start)


def update_rows(buf: jax.Array, vals: jax.Array, start: jax.Array) -> jax.Array:
    """buf: [B, L] with vals [B, T] written at each row's start [B]."""
    return jax.vmap(lambda b, v, s: jax.lax.dynamic_update_slice(b, v, (s,)))(buf, vals, start)


def slot_chunk(B: int, T: int, V: int, budget: int) -> int:
    """Window slots per pass over ``[B, t, V]`` temporaries (target filters, draws): as many as fit
    ``budget`` elements (at least 1, at most T)."""
    return min(T, max(1, budget // (B * V)))


def by_chunks(T: int, t: int, f, xs, out):
    """``out`` with slots [s, s + t) set to ``f(xs[:, s:s + t])`` for s = 0, t, 2t, ...; the last
    chunk is shifted back to end at T (its overlap is recomputed identically)."""
    def step(i, out):
        start = jnp.minimum(i * t, T - t)
        part = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, t, axis=1), xs)
        return jax.lax.dynamic_update_slice_in_dim(out, f(*part), start, axis=1)

    return jax.lax.fori_loop(0, -(-T // t), step, out)


class LoopContext:
    """Static sizes of the window (``W`` slots: ``Wc`` chain + ``A = Kb * D`` tree side-branch
    slots), the traced row keys ``rows [B]`` and ``knobs``, and the structure-token tables."""

    def __init__(self, spec, params, rows: jax.Array, knobs, neighbours):
        """spec: ``options.SamplerSpec``; knobs: ``options.Knobs`` (traced)."""
        c = spec.config
        self.spec, self.config, self.params, self.rows, self.knobs = spec, c, params, rows, knobs
        self.neighbours = neighbours
        self.W, self.N, self.V, self.C = spec.window, c.num_image_tokens, c.vocab_size, c.cls_token_num
        self.Wc, self.Kb, self.D = spec.chain, spec.branches, spec.tree_depth
        self.A = self.Kb * self.D
        self.gw = c.grid_size[1]
        self.B = rows.shape[0]
        self.R = spec.history_rows or 1  # rows of the latest-target history ([B, 1, 1] placeholder if 1)
        self.temperature = jnp.where(spec.method == "jacobi", 0.0, knobs.temperature)
        # Structure tokens: forced positions get p = one-hot and are drafted as that token with q =
        # one-hot (p/q = 1: always accepted, never a wasted draft); free positions may be restricted
        # to an id range (p renormalised over it; uniform drafts draw from it).
        forced_np, self.allowed_np = c.forced_tokens(), c.allowed_tokens()
        self.qs = QStore(self.V, self.allowed_np, spec.q_slots)
        self.has_forced = bool((forced_np >= 0).any())
        self.forced_tab = jnp.asarray(forced_np)
        self.allowed_ids = (None if self.allowed_np is None
                            else jnp.asarray(np.flatnonzero(self.allowed_np), jnp.int32))

    # ---- slot-axis helpers on stored q ----------------------------------------------------------
    def sl(self, q, start, stop=None):
        """q[:, start:stop] along the slot axis."""
        return self.qs.map(lambda x: x[:, start:stop], q)

    def rows_at(self, q, idx):
        """q[b, idx[b]]."""
        return self.qs.map(lambda x: gather_rows(x, idx), q)

    def double(self, x):
        """CFG rows: each row's unconditional twin right after it ([b cond, b uncond]), so both
        stay on the row's data shard."""
        return jnp.repeat(x, 2, axis=0) if self.spec.cfg else x

    # ---- structure tokens ------------------------------------------------------------------------
    def forced_at(self, tok):
        """tok [B, T] absolute image-token index -> forced id or -1."""
        N = self.N
        return jnp.where(tok < N, self.forced_tab[jnp.clip(tok, 0, N - 1)], -1)

    def force(self, vals, q, tok):
        """Drafts (``vals``, stored ``q``) or a dense target p (``vals`` None) at forced positions ->
        the forced token, one-hot."""
        if not self.has_forced:
            return vals, q
        f = self.forced_at(tok)
        on = f >= 0
        if vals is None:
            return None, jnp.where(on[..., None], jax.nn.one_hot(jnp.maximum(f, 0), self.V, dtype=jnp.float32), q)
        return jnp.where(on, f, vals), self.qs.where(on, self.qs.onehot(jnp.maximum(f, 0)), q)

    # ---- targets ---------------------------------------------------------------------------------
    def _probs_chunk(self, logits):
        """logits: [B or 2B, t, V] -> p [B, t, V]."""
        if self.spec.cfg:
            pair = logits.reshape((self.B, 2) + logits.shape[1:])
            l_c, l_u = pair[:, 0], pair[:, 1]
        else:
            l_c, l_u = logits, None
        k = self.knobs
        return target_probs(l_c, l_u, k.cfg_scale, self.temperature, k.top_k, k.top_p, self.allowed_np)

    def probs(self, logits, tok):
        """logits: [B or 2B, T, V], tok [B, T] -> target p [B, T, V]."""
        B, V, T = self.B, self.V, logits.shape[1]
        t = slot_chunk(B, T, V, self.spec.chunk_elements)
        if t == T:
            p = self._probs_chunk(logits)
        else:  # a few slots at a time: the filters' [B, t, V] temporaries stay small next to p
            p = by_chunks(T, t, self._probs_chunk, (logits,), jnp.zeros((B, T, V), jnp.float32))
        return self.force(None, p, tok)[1]

    def by_slots(self, f, *xs):
        """``f(*xs)`` -> [B, T] token draws, a few slots at a time (each slot has its own key, so
        the draws are the same): the Gumbel noise and log-probabilities stay ``[B, t, V]``.
        ``xs``: arrays / stored q with the slot axis 1 of length T."""
        T = jax.tree.leaves(xs)[0].shape[1]
        t = slot_chunk(self.B, T, self.V, self.spec.chunk_elements)
        return f(*xs) if t == T else by_chunks(T, t, f, xs, jnp.zeros((self.B, T), jnp.int32))

    def target_draw(self, tok, it, p):
        """A draw from p [B, T, V] for tokens tok [B, T] (Gumbel coupling: the same Gumbel vector
        at a position in every iteration)."""
        rows = self.rows
        if self.spec.coupling == "gumbel":
            return self.by_slots(lambda tk, pp: K.categorical(K.slot_keys(rows, K.GUMBEL, tk, 0), log(pp)), tok, p)
        return self.by_slots(lambda tk, pp: K.categorical(K.slot_keys(rows, K.SAMPLE, tk, it), log(pp)), tok, p)

"""Draft distributions q as the sampler stores them: dense ``[..., V]`` rows, or compact rows.

Every q the sampler keeps is one of: a target distribution p (Jacobi drafts, ``*-sample`` inits),
a one-hot (copied drafts, forced structure tokens), uniform over the allowed ids (random drafts),
or uniform with a few ids removed (draft-tree siblings). With top-k on, p has at most k non-zeros
(``processors.filter_logits`` keeps exactly k), so each of these fits ``S`` sparse entries over a
uniform base::

    q(x) = vals[j]            if ids[j] == x
           base * allowed[x]  otherwise

Compact storage holds ``S`` ids + values + one base per slot (``8 S + 4`` bytes) instead of ``4 V``:
for Emu3 (V = 184622) at top-k 2048 and window 64 that is 1.0 MiB per row instead of 45 MiB (q,
plus the same for the vertical-sample history and the tree). The values are p's own float32
values, so sampling is unchanged (tree siblings' renormalisation may round differently by an
ulp); the cost is a scatter to rebuild dense rows where a
residual ``max(0, p - q)`` is needed (the rejected slot; every chain slot under maximal coupling)
and a compaction of this iteration's targets (one cumsum + scatter over V per slot). It needs a
bound on p's support: top-k in [1, S] or greedy decoding. ``q_capacity`` picks S.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Q_STORAGE = ("auto", "dense", "compact")


@flax.struct.dataclass
class SparseQ:
    ids: jax.Array  # [..., S] int32 token ids; V marks an empty entry
    vals: jax.Array  # [..., S] float32 q at those ids
    base: jax.Array  # [...] float32 q of every allowed id that is not listed (0: a sparse p)


AUTO_MIN_SLOTS = 2048  # auto's smallest S: every top-k up to it (and greedy) shares one compile


def q_capacity(vocab_size: int, method: str, temperature: float, top_k: int, storage: str = "auto",
               tree_width: int = 1) -> int:
    """Compact entries per q row, or 0 for dense rows.

    p's support is bounded by top-k (or is one id when greedy); S is the next power of two >= that
    bound and >= ``tree_width`` (tree siblings list their removed ids), at most V. ``compact`` uses
    that S (the tightest rows; top-k values in another power-of-two bucket compile anew). ``auto``
    uses at least ``AUTO_MIN_SLOTS`` so that changing top-k (<= 2048) or the temperature never
    recompiles, and stores compactly only where that is under half a dense row (V > 2 S); without
    top-k (full-support p) it is dense."""
    if storage not in Q_STORAGE:
        raise ValueError(f"q_storage must be one of {', '.join(Q_STORAGE)}, got {storage!r}")
    if storage == "dense":
        return 0
    support = 1 if method == "jacobi" or temperature == 0 else int(top_k)
    if support == 0:
        if storage == "compact":
            raise ValueError("compact q storage needs top-k > 0 (or greedy decoding): it stores at most "
                             "k non-zeros of each p; use q_storage='dense' without top-k")
        return 0
    S = 1 << (max(support, int(tree_width)) - 1).bit_length()
    if storage == "auto":
        S = max(S, AUTO_MIN_SLOTS)
        return S if 2 * S < vocab_size else 0
    return min(S, vocab_size)


def _expand(cond: jax.Array, leaf: jax.Array) -> jax.Array:
    return cond.reshape(cond.shape + (1,) * (leaf.ndim - cond.ndim))


class QStore:
    """q operations for one trace: ``slots = 0`` dense ``[..., V]`` arrays, else ``SparseQ`` with
    ``slots`` entries. Leading axes behave alike in both (``where``/``take``/``concat``/``map``)."""

    def __init__(self, vocab_size: int, allowed, slots: int):
        self.V, self.S = vocab_size, slots
        allowed = np.ones(vocab_size, bool) if allowed is None else np.asarray(allowed, bool)
        self.allowed_f = jnp.asarray(allowed, jnp.float32)
        self.n_allowed = int(allowed.sum())

    @property
    def compact(self) -> bool:
        return self.S > 0

    # ---- constructors ---------------------------------------------------------------------------
    def uniform(self, shape) -> jax.Array | SparseQ:
        """Uniform over the allowed ids, ``shape`` leading axes."""
        shape = tuple(shape)
        if not self.compact:
            return jnp.broadcast_to(self.allowed_f / self.n_allowed, shape + (self.V,))
        return SparseQ(ids=jnp.full(shape + (self.S,), self.V, jnp.int32),
                       vals=jnp.zeros(shape + (self.S,), jnp.float32),
                       base=jnp.full(shape, 1.0 / self.n_allowed, jnp.float32))

    def onehot(self, x: jax.Array) -> jax.Array | SparseQ:
        if not self.compact:
            return jax.nn.one_hot(x, self.V, dtype=jnp.float32)
        first = jnp.arange(self.S) == 0
        return SparseQ(ids=jnp.where(first, x[..., None], self.V).astype(jnp.int32),
                       vals=jnp.broadcast_to(first.astype(jnp.float32), x.shape + (self.S,)),
                       base=jnp.zeros(x.shape, jnp.float32))

    def from_p(self, p: jax.Array) -> jax.Array | SparseQ:
        """p ``[..., V]`` with at most S non-zeros -> stored q (the non-zeros in id order)."""
        if not self.compact:
            return p
        lead = p.shape[:-1]
        iota = jnp.arange(self.V, dtype=jnp.int32)

        def row(pr):  # [V] -> ([S], [S]): stream compaction by the running count of non-zeros
            nz = pr > 0
            pos = jnp.where(nz, jnp.cumsum(nz, dtype=jnp.int32) - 1, self.S)  # S: dropped
            return (jnp.full((self.S,), self.V, jnp.int32).at[pos].set(iota, mode="drop"),
                    jnp.zeros((self.S,), jnp.float32).at[pos].set(pr, mode="drop"))

        # a few rows at a time: the [rows, V] index temporaries stay small next to p itself
        ids, vals = jax.lax.map(row, p.reshape(-1, self.V), batch_size=32)
        return SparseQ(ids=ids.reshape(lead + (self.S,)), vals=vals.reshape(lead + (self.S,)),
                       base=jnp.zeros(lead, jnp.float32))

    # ---- reads ------------------------------------------------------------------------------------
    def at(self, q, x: jax.Array) -> jax.Array:
        """q(x) for tokens ``x`` (q's leading axes)."""
        if not self.compact:
            return jnp.take_along_axis(q, x[..., None], axis=-1)[..., 0]
        match = q.ids == x[..., None]
        listed = jnp.sum(jnp.where(match, q.vals, 0.0), axis=-1)
        return jnp.where(jnp.any(match, axis=-1), listed, q.base * self.allowed_f[x])

    def dense(self, q) -> jax.Array:
        """q as ``[..., V]`` float32."""
        if not self.compact:
            return q
        lead = q.base.shape
        d = q.base.reshape(-1, 1) * self.allowed_f[None]
        rows = jnp.arange(d.shape[0])[:, None]
        d = d.at[rows, q.ids.reshape(-1, self.S)].set(q.vals.reshape(-1, self.S), mode="drop")
        return d.reshape(lead + (self.V,))

    # ---- leading-axis plumbing (the same for both layouts) ---------------------------------------
    @staticmethod
    def map(f, *qs):
        return jax.tree.map(f, *qs)

    @staticmethod
    def where(cond: jax.Array, a, b):
        """Per-slot select; ``cond`` has (a broadcastable form of) q's leading axes."""
        return jax.tree.map(lambda x, y: jnp.where(_expand(cond, x), x, y), a, b)

    @staticmethod
    def concat(qs, axis: int = 1):
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *qs)

    @staticmethod
    def take(q, idx: jax.Array, axis: int = 1):
        """``q[b, idx[b, t]]`` along ``axis`` for ``idx`` [B, T]."""
        return jax.tree.map(lambda x: jnp.take_along_axis(x, _expand(idx, x), axis=axis), q)

    # ---- tree siblings ---------------------------------------------------------------------------
    def exclude(self, q, removed: jax.Array):
        """q with the ids ``removed [..., E]`` (distinct) zeroed and renormalised (E <= S)."""
        if not self.compact:
            excl = jnp.any(jax.nn.one_hot(removed, self.V, dtype=bool), axis=-2)
            rest = jnp.where(excl, 0.0, q)
            return rest / jnp.maximum(jnp.sum(rest, -1, keepdims=True), 1e-30)
        hit = jnp.any(q.ids[..., :, None] == removed[..., None, :], axis=-1)
        vals = jnp.where(hit, 0.0, q.vals)
        # a uniform base lists nothing yet: list the removed ids there with value 0
        E = removed.shape[-1]
        listed = jnp.concatenate([removed.astype(jnp.int32), jnp.full(q.ids.shape[:-1] + (self.S - E,), self.V, jnp.int32)], -1)
        on_base = (q.base > 0)[..., None]
        rest = SparseQ(ids=jnp.where(on_base, listed, q.ids), vals=jnp.where(on_base, 0.0, vals), base=q.base)
        s = jnp.maximum(jnp.sum(self.dense(rest), -1), 1e-30)  # as the dense layout sums (up to order)
        return SparseQ(ids=rest.ids, vals=rest.vals / s[..., None], base=rest.base / s)

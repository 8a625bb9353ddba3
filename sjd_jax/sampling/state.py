"""The while loop's carry (``SamplerState``), its logical sharding axes, and the loop's output."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sjd_jax.core.cache import KVCache
from sjd_jax.parallel import sharding as shd
from sjd_jax.sampling.qstore import SparseQ


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


@flax.struct.dataclass
class SamplerState:
    """Per row b: ``n[b]`` image tokens are committed; the window's chain holds token n - 1 and
    drafts for n .. n + Wc - 2 (W = Wc chain + A tree slots)."""

    it: jax.Array  # [] int32 loop iterations run (prefill = 0); a row's own iteration is its ``nfe``
    n: jax.Array  # [B] committed image tokens
    buf: jax.Array  # [B, N + 2W] committed tokens at [0, n), current chain drafts at [n, n + Wc - 1)
    q: Any  # [B, Wc] chain draft distributions by window slot (slot 0 unused), stored by ``QStore``
    alt: jax.Array  # [B, A] side-branch tokens (A = branches * depth; branch-major)
    alt_q: Any  # [B, A] their draft distributions
    alt_ok: jax.Array  # [B, A] candidate exists (a q with mass left) and lies inside the image
    hist: Any  # [B, R] latest p per position mod R (history inits only; else a [B, 1, 1] array)
    cache: KVCache  # rows [cond; uncond] when cfg
    nfe: jax.Array  # [B]
    committed: jax.Array  # [B, N]
    branch_hits: jax.Array  # [B]

    @classmethod
    def make(cls, *, buf, q, alt, alt_q, alt_ok, hist, cache, num_tokens: int) -> "SamplerState":
        """The state after the prefill: token 0 committed by forward 0."""
        B = buf.shape[0]
        ones = jnp.ones((B,), jnp.int32)
        return cls(it=jnp.int32(0), n=ones, buf=buf, q=q, alt=alt, alt_q=alt_q, alt_ok=alt_ok, hist=hist,
                   cache=cache, nfe=ones, committed=jnp.zeros((B, num_tokens), jnp.int32).at[:, 0].set(1),
                   branch_hits=jnp.zeros((B,), jnp.int32))

    def record(self, it, active, accepted, num_tokens: int) -> "SamplerState":
        """Iteration ``it``'s bookkeeping: forwards of the active rows, ``accepted [B]`` tokens (in
        each row's own iteration column: its forwards so far)."""
        rows = jnp.arange(self.n.shape[0])
        col = jnp.minimum(self.nfe, num_tokens - 1)
        committed = self.committed.at[rows, col].set(jnp.where(active, accepted, self.committed[rows, col]))
        return self.replace(it=it, nfe=self.nfe + active, committed=committed)

    def output(self, num_tokens: int) -> GenerateOutput:
        return GenerateOutput(tokens=self.buf[:, :num_tokens], nfe=self.nfe, iterations=self.it,
                              committed=self.committed, branch_hits=self.branch_hits)


def state_axes(state: SamplerState) -> SamplerState:
    """Logical axes of every state leaf (``sharding.RULES`` maps them to the mesh)."""
    cache = state.cache.replace(k=tuple(shd.KV_AXES for _ in state.cache.k), v=tuple(shd.KV_AXES for _ in state.cache.v),
                                length=("batch",), prefix_mask=("batch", None))
    row, row2 = ("batch",), ("batch", None)

    def dist(q):  # dense rows shard their vocabulary; compact entries stay whole
        if isinstance(q, SparseQ):
            return SparseQ(ids=("batch", None, None), vals=("batch", None, None), base=row2)
        return ("batch", None, "vocab")

    return SamplerState(it=(), n=row, buf=row2, q=dist(state.q), alt=row2, alt_q=dist(state.alt_q), alt_ok=row2,
                        hist=dist(state.hist), cache=cache, nfe=row, committed=row2, branch_hits=row)


def pin(state: SamplerState) -> SamplerState:
    """Constrain the state to its shardings (identity without an active mesh)."""
    return shd.constrain_tree(state, state_axes(state), "sampler state")

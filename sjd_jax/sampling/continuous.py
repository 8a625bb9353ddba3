"""Continuous batching on the device: the loop in segments, finished rows refilled in place.

A batch of B row *slots* runs the sampler's loop body (``loop.body``) in segments: ``segment`` runs
iterations until at least ``free_target`` slots hold a finished row (or every row is finished);
``refill`` prefills R new rows (``loop.prefill`` on an R-row batch) and writes them over R slots of
the running state, KV cache included; ``retire`` marks slots empty (finished, nothing to emit).
The host (``batching``) decides which slots to refill between segments.

A row's randomness follows its example key and its *own* iteration (its forwards since its
prefill, ``SamplerState.nfe``), and every per-row quantity (cache length, drafts, q, history) lives
in that row's slots, so a row draws the same tokens whichever slot it runs in, whoever its
neighbours are and whenever it joined: continuous batching is exact per item.

One compile per (spec, B, R, condition shape): the number of items never changes a shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from sjd_jax.core import model as gpt
from sjd_jax.parallel import sharding as shd
from sjd_jax.sampling import compiled, loop
from sjd_jax.sampling import keys as K
from sjd_jax.sampling.context import LoopContext
from sjd_jax.sampling.options import Knobs, SamplerSpec
from sjd_jax.sampling.state import GenerateOutput, SamplerState, pin, state_axes


def insert(state: SamplerState, new: SamplerState, slots: jax.Array) -> SamplerState:
    """``new`` (R rows) written over rows ``slots [R]`` of ``state`` (B rows); a slot >= B writes
    nothing (padding). Leaves with 2B rows (the CFG cache: [b cond, b uncond]) take rows
    ``2 slot`` and ``2 slot + 1``; the loop counter ``it`` stays the running batch's."""
    B = state.n.shape[0]

    def put(x, y, axes):
        if not axes or axes[0] != "batch":
            return x
        f = x.shape[0] // B
        idx = (slots[:, None] * f + jnp.arange(f, dtype=slots.dtype)[None]).reshape(-1)
        return x.at[idx].set(y.astype(x.dtype), mode="drop")

    return jax.tree.map(put, state, new, state_axes(state))


def segment(spec: SamplerSpec, params, state: SamplerState, rows, knobs: Knobs, neighbours, free_target):
    """Loop iterations until ``free_target`` slots hold finished rows, or all do (at most N per
    call: every active row commits a token per iteration) -> (state, output, finished [B])."""
    with shd.active(spec.mesh):
        ctx = LoopContext(spec, params, K.as_key(rows), knobs, neighbours)
        N, B = ctx.N, ctx.B
        limit = state.it + N

        def cond(s):
            done = jnp.sum(s.n >= N)
            return (done < free_target) & (done < B) & (s.it < limit)

        s = pin(jax.lax.while_loop(cond, lambda s: pin(loop.body(ctx, s)), state))
    return s, s.output(N), s.n >= N


def refill(spec: SamplerSpec, params, state: SamplerState, rows, cond, prefix_mask, new_rows, slots, knobs: Knobs,
           neighbours):
    """Prefill R new rows (``cond``, ``prefix_mask``, raw keys ``new_rows [R, 2]``) into ``slots [R]``
    -> (state, rows [B, 2])."""
    new = compiled.prefill(spec, params, cond, prefix_mask, new_rows, knobs, neighbours)
    with shd.active(spec.mesh):
        state = pin(insert(state, new, slots))
    return state, rows.at[slots].set(new_rows, mode="drop")


def retire(spec: SamplerSpec, state: SamplerState, empty) -> SamplerState:
    """Slots ``empty [B]`` marked finished (padding rows of a first batch larger than the work)."""
    return state.replace(n=jnp.where(empty, spec.config.num_image_tokens, state.n))


def take(state: SamplerState, rows, slots):
    """Rows ``slots [B']`` of a B-row state and its keys -> a B'-row state (the drain: once no item
    waits, the unfinished rows move to a smaller batch)."""
    B = state.n.shape[0]

    def get(x, axes):
        if not axes or axes[0] != "batch":
            return x
        f = x.shape[0] // B
        return x[(slots[:, None] * f + jnp.arange(f, dtype=slots.dtype)[None]).reshape(-1)]

    return jax.tree.map(get, state, state_axes(state)), rows[slots]


@dataclasses.dataclass(frozen=True)
class Segments:
    """The continuous sampler for one spec, B slots and R-row refills (one device or a mesh).

    ``start(params, cond [B], mask, rows [B, 2], knobs, nb) -> state``;
    ``run(params, state, rows, knobs, nb, free_target) -> (state, GenerateOutput, finished [B])``
    (the state is donated); ``refill(params, state, rows, cond [R], mask, new_rows [R, 2], slots [R],
    knobs, nb) -> (state, rows)``; ``retire(state, empty [B]) -> state``; ``take(state, rows, slots
    [B]) -> (state, rows)``: B of a larger state's rows, as this sampler's state."""

    spec: SamplerSpec
    B: int
    R: int
    start: Callable
    run: Callable
    refill: Callable
    retire: Callable
    take: Callable


def build(spec: SamplerSpec, cond_b, mask_b, cond_r, mask_r, neighbours=None) -> Segments:
    """The executables for B = ``cond_b.shape[0]`` slots and R = ``cond_r.shape[0]`` row refills."""
    return _build(spec, compiled.signature(cond_b, mask_b, cond_r, mask_r, neighbours))


@functools.lru_cache(maxsize=16)
def _build(spec: SamplerSpec, sig) -> Segments:
    cond_b, mask_b, cond_r, mask_r, nb = sig
    B, R = cond_b[0][0], cond_r[0][0]
    raw = jax.ShapeDtypeStruct((B, 2), jnp.uint32)
    shapes = [None if s is None else jax.ShapeDtypeStruct(*s) for s in (cond_b, mask_b, nb)]
    exe = compiled.compile(spec, shapes[0], shapes[1], raw, shapes[2])
    seg, fill, ret = (functools.partial(f, spec) for f in (segment, refill, retire))
    mesh = spec.mesh
    if mesh is None:
        return Segments(spec, B, R, exe.prefill, jax.jit(seg, donate_argnums=1), jax.jit(fill, donate_argnums=(1, 2)),
                        jax.jit(ret, donate_argnums=0), jax.jit(take))
    state_sh, rep = exe.state_shardings, shd.replicated(mesh)
    params_sh = shd.param_shardings(gpt.abstract_params(spec.config), mesh)
    rows_sh = shd.batch_sharding(mesh, (B, 2), "row keys")
    row = ("batch",)
    out_sh = GenerateOutput(tokens=shd.named(mesh, (B, spec.config.num_image_tokens), row),
                            nfe=shd.named(mesh, (B,), row), iterations=rep,
                            committed=shd.named(mesh, (B, spec.config.num_image_tokens), row),
                            branch_hits=shd.named(mesh, (B,), row))
    done_sh = shd.named(mesh, (B,), row)
    nb_sh = None if nb is None else rep
    r_sh = tuple(shd.batch_sharding(mesh, s[0], what) for s, what in
                 ((cond_r, "refill cond"), (mask_r, "refill prefix mask"), (((R, 2),), "refill keys")))
    run = jax.jit(seg, in_shardings=(params_sh, state_sh, rows_sh, rep, nb_sh, rep),
                  out_shardings=(state_sh, out_sh, done_sh), donate_argnums=1)
    fill = jax.jit(fill, in_shardings=(params_sh, state_sh, rows_sh) + r_sh + (rep, rep, nb_sh),
                   out_shardings=(state_sh, rows_sh), donate_argnums=(1, 2))
    ret = jax.jit(ret, in_shardings=(state_sh, done_sh), out_shardings=state_sh, donate_argnums=0)
    moved = jax.jit(take, out_shardings=(state_sh, rows_sh))
    return Segments(spec, B, R, exe.prefill, run, fill, ret, moved)

"""The compile seam: the sampler as jitted executables, on one device or a mesh.

``compile(spec, cond, prefix_mask, rows, neighbours)`` (arrays or ``jax.ShapeDtypeStruct``) returns
``Executables``: the prefill (condition -> ``SamplerState``), the loop (state -> final state and
``GenerateOutput``, taking the state donated on a mesh), the state's logical axes, shardings and
abstract shapes. ``generate``, bench, shard-plan and the tests all build the sampler here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sjd_jax.core import model as gpt
from sjd_jax.parallel import sharding as shd
from sjd_jax.sampling import loop
from sjd_jax.sampling.context import LoopContext
from sjd_jax.sampling.options import Knobs, SamplerSpec
from sjd_jax.sampling.state import GenerateOutput, SamplerState, pin, state_axes

TRACE_COUNT = 0  # incremented each time the sampler is traced (tests assert no recompiles)


def _keys(rows):
    """Row keys arrive typed, or as raw ``[B, 2]`` uint32 data (sharded inputs are built from host
    numbers, which cannot hold key dtypes)."""
    return rows if jnp.issubdtype(rows.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(rows)


def prefill(spec: SamplerSpec, params, cond, prefix_mask, rows, knobs: Knobs, neighbours=None) -> SamplerState:
    """The prefill as a pure function (``spec`` static)."""
    global TRACE_COUNT
    TRACE_COUNT += 1
    with shd.active(spec.mesh):
        return pin(loop.prefill(LoopContext(spec, params, _keys(rows), knobs, neighbours), cond, prefix_mask))


def run_loop(spec: SamplerSpec, params, state: SamplerState, rows, knobs: Knobs, neighbours=None):
    """The while loop -> (final state, GenerateOutput). Returning the state lets a donated input
    state's buffers (the KV cache above all) be updated in place instead of copied."""
    with shd.active(spec.mesh):
        ctx = LoopContext(spec, params, _keys(rows), knobs, neighbours)
        s = pin(jax.lax.while_loop(functools.partial(loop.cond_fn, ctx),
                                   lambda s: pin(loop.body(ctx, s)), state))
    return s, s.output(spec.config.num_image_tokens)


def fused(spec: SamplerSpec, params, cond, prefix_mask, rows, knobs: Knobs, neighbours=None) -> GenerateOutput:
    """Prefill and loop in one executable: the state never leaves it, so XLA updates the loop carry
    in place (one device; meshes use separate prefill and loop executables)."""
    state = prefill(spec, params, cond, prefix_mask, rows, knobs, neighbours)
    return run_loop(spec, params, state, rows, knobs, neighbours)[1]


_fused_jit = jax.jit(fused, static_argnums=0)


def _abstract(x):
    return None if x is None else jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)


def signature(*xs):
    """Hashable shapes/dtypes of the inputs (executables are built per input signature)."""
    return tuple(None if x is None else (tuple(x.shape), str(x.dtype)) for x in xs)


@dataclasses.dataclass(frozen=True)
class Executables:
    """The sampler for one spec and input signature.

    ``prefill(params, cond, prefix_mask, rows, knobs, neighbours) -> SamplerState`` and
    ``loop(params, state, rows, knobs, neighbours) -> (SamplerState, GenerateOutput)``; without a
    mesh ``run`` uses one fused executable instead (``lower`` gives it ahead of time)."""

    spec: SamplerSpec
    prefill: Callable
    loop: Callable
    abstract_state: SamplerState  # of ShapeDtypeStruct leaves
    state_axes: SamplerState  # logical axes of each leaf (``sharding.RULES`` names)
    state_shardings: Any  # SamplerState of NamedSharding on the mesh, or None

    def run(self, params, cond, prefix_mask, rows, knobs: Knobs, neighbours=None) -> GenerateOutput:
        if self.spec.mesh is None:
            return _fused_jit(self.spec, params, cond, prefix_mask, rows, knobs, neighbours)
        state = self.prefill(params, cond, prefix_mask, rows, knobs, neighbours)
        return self.loop(params, state, rows, knobs, neighbours)[1]

    def lower(self, params, cond, prefix_mask, rows, knobs: Knobs, neighbours=None):
        """The fused one-device executable, lowered (``.compile()`` it to time or size it)."""
        return _fused_jit.lower(self.spec, params, cond, prefix_mask, rows, knobs, neighbours)


def compile(spec: SamplerSpec, cond, prefix_mask, rows, neighbours=None) -> Executables:  # noqa: A001
    """The executables of ``spec`` for inputs shaped like ``cond``, ``prefix_mask``, ``rows`` (row
    keys, typed or raw ``[B, 2]`` uint32) and the lantern ``neighbours`` table (arrays or shapes)."""
    return _compile(spec, signature(cond, prefix_mask, rows, neighbours), jnp.issubdtype(rows.dtype, jax.dtypes.prng_key))


@functools.lru_cache(maxsize=32)
def _compile(spec: SamplerSpec, sig, typed_keys: bool) -> Executables:
    cond_s, mask_s, rows_s, nb_s = sig
    shapes = [None if s is None or (i == 2 and typed_keys) else jax.ShapeDtypeStruct(*s) for i, s in enumerate(sig)]
    if typed_keys:
        shapes[2] = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows_s[0][0]))
    abstract_params = gpt.abstract_params(spec.config)
    abstract = jax.eval_shape(functools.partial(prefill, spec), abstract_params, shapes[0], shapes[1], shapes[2],
                              Knobs.make(), shapes[3])
    axes = state_axes(abstract)
    mesh = spec.mesh
    if mesh is None:
        return Executables(spec, jax.jit(functools.partial(prefill, spec)), jax.jit(functools.partial(run_loop, spec)),
                           abstract, axes, None)
    params_sh = shd.param_shardings(abstract_params, mesh)
    rep = shd.replicated(mesh)
    in_sh = tuple(shd.batch_sharding(mesh, s[0], what) for s, what in
                  ((cond_s, "cond"), (mask_s, "prefix mask"), (rows_s, "row keys")))
    nb_sh = None if nb_s is None else rep
    state_sh = jax.tree.map(lambda x, ax: shd.named(mesh, x.shape, ax, "sampler state"), abstract, axes,
                            is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    B, N = cond_s[0][0], spec.config.num_image_tokens
    row = ("batch",)
    out_sh = GenerateOutput(tokens=shd.named(mesh, (B, N), row), nfe=shd.named(mesh, (B,), row), iterations=rep,
                            committed=shd.named(mesh, (B, N), row), branch_hits=shd.named(mesh, (B,), row))
    knobs_sh = rep  # scalars (a prefix of the knobs pytree)
    pre = jax.jit(functools.partial(prefill, spec), in_shardings=(params_sh,) + in_sh + (knobs_sh, nb_sh),
                  out_shardings=state_sh)
    lp = jax.jit(functools.partial(run_loop, spec), in_shardings=(params_sh, state_sh, in_sh[2], knobs_sh, nb_sh),
                 out_shardings=(state_sh, out_sh), donate_argnums=1)
    return Executables(spec, pre, lp, abstract, axes, state_sh)


def run(spec: SamplerSpec, params, cond, prefix_mask, rows, knobs: Knobs, neighbours=None) -> GenerateOutput:
    """The sampler on validated, placed arguments: one fused executable on one device; on a mesh
    the prefill (creating the sharded cache and state) and the loop (taking that state donated)."""
    if spec.mesh is None:  # (no abstract trace needed: straight to the cached fused jit)
        return _fused_jit(spec, params, cond, prefix_mask, rows, knobs, neighbours)
    return compile(spec, cond, prefix_mask, rows, neighbours).run(params, cond, prefix_mask, rows, knobs, neighbours)

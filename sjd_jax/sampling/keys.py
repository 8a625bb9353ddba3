"""Random keys derived by ``fold_in``: per example, per purpose, per absolute token index, per iteration.

A row's randomness depends only on its own example id, never on its batch slot or the device count,
so the same seed gives the same image whatever the batch size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Purposes: independent streams so that acceptance uniforms, draws from p, residual draws and
# random draft initialisations never share randomness. GUMBEL keys ignore the iteration (one Gumbel
# vector per absolute position: Gumbel-coupled drafting). TREE draws a tree's side-branch candidates;
# ACCEPT_BRANCH + k tests side branch k (k < 64).
ACCEPT, SAMPLE, RESIDUAL, INIT, GUMBEL, TREE = 1, 2, 3, 4, 5, 6
ACCEPT_BRANCH = 64


def as_key(key) -> jax.Array:
    """An int seed, a typed key, or a raw uint32 key -> typed key (scalar or ``[B]``)."""
    if isinstance(key, (int, np.integer)):
        from sjd_jax.core.validate import check_seed

        return jax.random.key(check_seed(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
        return jax.random.wrap_key_data(key)
    raise ValueError(f"key must be an int seed or a JAX PRNG key, got dtype {key.dtype} shape {key.shape}")


def row_keys(key: jax.Array, example_ids: jax.Array) -> jax.Array:
    """``[B]`` per-example keys: ``fold_in(key, example_id)``."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, example_ids)


def slot_keys(rows: jax.Array, purpose: int, token_idx: jax.Array, iteration) -> jax.Array:
    """Keys ``[B, T]`` for (row, purpose, absolute image-token index ``token_idx: [B, T]``, the
    row's own iteration ``iteration``: ``[B]`` or one for every row). A row's iteration counts its
    forwards since its own prefill, so a row refilled into a running batch draws what it would
    draw alone."""

    def one(k, t, i):
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(k, purpose), t), i)

    its = jnp.broadcast_to(jnp.asarray(iteration, jnp.int32), rows.shape)
    return jax.vmap(jax.vmap(one, in_axes=(None, 0, None)))(rows, token_idx, its)


def categorical(keys: jax.Array, logp: jax.Array) -> jax.Array:
    """One draw per key: ``keys: [B, T]``, ``logp: [B, T, V]`` -> ``[B, T]`` int32."""
    return jax.vmap(jax.vmap(jax.random.categorical))(keys, logp).astype(jnp.int32)


def uniform(keys: jax.Array) -> jax.Array:
    return jax.vmap(jax.vmap(jax.random.uniform))(keys)


def randint(keys: jax.Array, high: int) -> jax.Array:
    return jax.vmap(jax.vmap(lambda k: jax.random.randint(k, (), 0, high)))(keys).astype(jnp.int32)


def gumbel(keys: jax.Array, num: int) -> jax.Array:
    """Standard Gumbel noise ``[B, T, num]`` float32, one vector per key ``[B, T]``."""
    return jax.vmap(jax.vmap(lambda k: jax.random.gumbel(k, (num,), jnp.float32)))(keys)

"""Public ``generate``: options (or keywords) resolved once, inputs checked, then the compiled loop."""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.parallel import sharding as shd
from sjd_jax.core.config import GPTConfig
from sjd_jax.parallel.memory import require_sampler
from sjd_jax.core.model import split_cond
from sjd_jax.core.validate import check_cond
from sjd_jax.sampling import compiled, progress as progress_mod
from sjd_jax.sampling import keys as K
from sjd_jax.sampling.options import Knobs, SamplerOptions, resolve
from sjd_jax.sampling.state import GenerateOutput
from sjd_jax.sampling.verify import Rules

KNOBS = ("cfg_scale", "temperature", "top_k", "top_p")
OPTION_FIELDS = ("method", "window", "coupling", "init", "tree", "q_storage", "chunk_elements", "cfg", "rules")
RULE_KEYWORDS = {"accept_rule": "accept", "draft_rule": "draft"}


def options_from_keywords(options: SamplerOptions | None, keywords: dict):
    """The keyword form over ``SamplerOptions``: (options, knob values, lantern table, lantern delta).
    Option keywords replace the fields of ``options``; ``accept_rule``/``draft_rule`` set its rules;
    ``lantern=(neighbours [V, k], delta)`` turns lantern on."""
    options = SamplerOptions() if options is None else options
    if not isinstance(options, SamplerOptions):
        raise ValueError(f"options must be a SamplerOptions, got {type(options).__name__}")
    unknown = sorted(set(keywords) - set(KNOBS) - set(OPTION_FIELDS) - set(RULE_KEYWORDS) - {"lantern"})
    if unknown:
        raise TypeError(f"generate() got an unexpected keyword argument {unknown[0]!r}")
    knobs = dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)
    knobs.update({k: keywords[k] for k in KNOBS if k in keywords})
    changes = {k: keywords[k] for k in OPTION_FIELDS if k in keywords}
    rules = {RULE_KEYWORDS[k]: keywords[k] for k in RULE_KEYWORDS if keywords.get(k) is not None}
    if rules:
        base = changes.get("rules", options.rules)
        if not isinstance(base, Rules):
            raise ValueError(f"rules must be a sampling.verify.Rules, got {type(base).__name__}")
        changes["rules"] = dataclasses.replace(base, **rules)
    neighbours, delta = None, 0.0
    if keywords.get("lantern") is not None:
        neighbours, delta = keywords["lantern"]
        changes["lantern"] = neighbours is not None
    return options.replace(**changes), knobs, neighbours, delta


def row_keys(key, batch: int, example_ids=None) -> jax.Array:
    """``[B]`` row keys: ``fold_in(key, example_ids[b])`` (default ``arange(B)``), or ``key`` itself
    when it already holds B keys."""
    key = K.as_key(key)
    if key.ndim == 1:
        if key.shape[0] != batch:
            raise ValueError(f"got {key.shape[0]} per-row keys for a cond batch of {batch}")
        if example_ids is not None:
            raise ValueError("pass either per-row keys or example_ids, not both")
        return key
    if key.ndim != 0:
        raise ValueError(f"key must be a single key or [B] keys, got shape {key.shape}")
    if example_ids is not None:
        ids = np.asarray(example_ids)
        if ids.shape != (batch,) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
            raise ValueError(f"example_ids must be {batch} non-negative integers, got {ids!r}")
    return K.row_keys(key, jnp.asarray(np.arange(batch) if example_ids is None else example_ids, jnp.uint32))


def place_inputs(mesh, params, cond, prefix_mask, rows, knobs, neighbours):
    """Every input as a global array on ``mesh`` (rows over data, the rest replicated); keys travel
    as raw uint32 data (host arrays cannot hold key dtypes)."""
    if jax.random.key_impl(rows) != jax.random.key_impl(jax.random.key(0)):
        raise ValueError("sharded generate needs keys of the default PRNG implementation")
    rows = np.asarray(jax.random.key_data(rows))
    rep = shd.replicated(mesh)
    cond, prefix_mask, rows = (shd.to_global(x, shd.batch_sharding(mesh, x.shape, what))
                               for x, what in ((cond, "cond"), (prefix_mask, "prefix mask"), (rows, "row keys")))
    knobs = jax.tree.map(lambda v: shd.to_global(v, rep), knobs)
    neighbours = None if neighbours is None else shd.to_global(neighbours, rep)
    return shd.place_params(params, mesh), cond, prefix_mask, rows, knobs, neighbours


def generate(params, config: GPTConfig, cond, key, options: SamplerOptions | None = None, *, example_ids=None,
             progress=None, mesh=None, **keywords) -> GenerateOutput:
    """Sample image tokens ``[B, N]``.

    ``options`` (``SamplerOptions``; default SJD, window 16) says which sampler; keywords replace
    its fields: ``method`` "ar" | "jacobi" | "sjd", ``window``, ``coupling`` "none" (SJD) | "gumbel" |
    "maximal" (= adaptive continuation), ``init`` "uniform" | "horizon-repeat" | "horizon-sample" |
    "vertical-repeat" | "vertical-sample", ``tree=(K, D)`` or "auto" (a draft tree with K candidates
    for the first draft and side branches D deep; ``window`` counts every tree slot), ``q_storage``
    "dense" | "compact" (needs top-k or greedy) | "auto", ``chunk_elements`` (the largest
    ``[B, t, V]`` temporary of the target filters and draws, default 2^28: less is sequential
    passes, the same tokens), ``cfg``. All of these are lossless (``sampling.loop`` explains each).
    ``lantern=(neighbours [V, k] int, delta)`` turns on LANTERN's relaxed acceptance, which is NOT
    lossless (``sampling.lantern.codebook_neighbours``). ``accept_rule(u, p_x, q_x) -> bool`` and
    ``draft_rule(DraftContext) -> (tokens [B, F], q [B, F, V])`` are research hooks
    (``sampling.verify.Rules``); ``exactness.check`` runs the exact-distribution test on them.

    Knobs (traced: any value, one compile): ``cfg_scale`` (1.0), ``temperature`` (1.0; 0 greedy;
    jacobi is always greedy), ``top_k`` (0 = off), ``top_p`` (1.0). ``cfg=True`` computes the
    unconditional rows in the same forward, so every ``cfg_scale`` shares one compile; ``cfg=False``
    skips them (then ``cfg_scale`` must be 1).

    cond: class ids ``[B]`` or (text models) caption features ``[B, C, caption_dim]`` or
    ``Caption(features, mask)`` / ``Prompt``. key: int seed or PRNG key; row b uses
    ``fold_in(key, example_ids[b])`` (default ``example_ids = arange(B)``), or pass ``[B]`` keys.
    ``progress``: optional host callback ``f(committed_tokens_in_batch, iteration)`` after every
    iteration (a separate compile, shared by all callbacks; the call blocks until done); a callback
    taking a third argument also gets the row iterations so far, so ``(committed - B) /
    row_iterations`` is the mean accepted tokens per iteration of a row.

    ``mesh`` (``sharding.make_mesh``): rows are split over ``data``, heads / MLP / vocabulary over
    ``model`` (``sharding.RULES``); params are moved to those shardings unless already there
    (``checkpoint.load(path, mesh=mesh)`` restores them there directly). Outputs are global arrays
    sharded over rows. Tokens do not depend on the mesh: keys are per example.
    """
    options, knob_values, neighbours, delta = options_from_keywords(options, keywords)
    spec = resolve(config, options, dict(knob_values, lantern_delta=delta), neighbours=neighbours, mesh=mesh,
                   progress=progress is not None)
    neighbours = None if neighbours is None else jnp.asarray(neighbours, jnp.int32)
    cond_arr, prefix_mask = split_cond(config, cond)
    B = cond_arr.shape[0]
    rows = row_keys(key, B, example_ids)
    check_cond(config, cond_arr, prefix_mask, B, allow_null=False)
    require_sampler(spec, B, mesh)  # sizes before work: one line instead of an out-of-memory abort
    listening = contextlib.nullcontext(0) if progress is None else progress_mod.listening(progress)
    with listening as pid:
        knobs = Knobs.make(**knob_values, lantern_delta=delta, progress_id=pid)
        if mesh is not None:
            params, cond_arr, prefix_mask, rows, knobs, neighbours = place_inputs(
                mesh, params, cond_arr, prefix_mask, rows, knobs, neighbours)
        out = compiled.run(spec, params, cond_arr, prefix_mask, rows, knobs, neighbours)
        # with a callback, wait inside: its reports must reach it before it is unregistered
        return out if progress is None else jax.block_until_ready(out)

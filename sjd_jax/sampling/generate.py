"""Public ``generate``: checks every argument, then runs the jit-compiled sampling loop."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..config import GPTConfig
from ..memory import require_sampler
from ..model import split_cond
from ..validate import check_chunk_elements, check_cond, check_drafting, check_sampling
from . import keys as K
from .loop import DEFAULT_CHUNK_ELEMENTS, GenerateOutput, SamplerSpec, make_knobs, run
from .qstore import q_capacity


def _check(config, method, window, cfg_scale, temperature, top_k, top_p, cfg, coupling, init, tree, lantern,
           q_storage="auto", chunk_elements=None, accept_rule=None, draft_rule=None):
    """Every argument check before tracing; returns (lantern neighbours [V, k] or None, delta, q slots)."""
    check_sampling(config, method, window, cfg_scale, temperature, top_k, top_p, cfg)
    if not (isinstance(tree, (tuple, list)) and len(tree) == 2):
        raise ValueError(f"tree must be a (width, depth) pair, got {tree!r}")
    neighbours, delta = (None, 0.0) if lantern is None else lantern
    lantern_k = 0
    if neighbours is not None:
        neighbours = np.asarray(neighbours)
        if neighbours.ndim != 2 or neighbours.shape[0] != config.vocab_size or \
                not np.issubdtype(neighbours.dtype, np.integer) or neighbours.min() < 0 or \
                neighbours.max() >= config.vocab_size:
            raise ValueError(f"lantern neighbours must be token ids of shape [{config.vocab_size}, k], "
                             f"got {neighbours.dtype} {neighbours.shape}")
        lantern_k = neighbours.shape[1]
        if lantern_k == 0:
            raise ValueError("lantern neighbours table has k = 0 columns")
        neighbours = jnp.asarray(neighbours, jnp.int32)
    check_drafting(config, method, window, coupling, init, int(tree[0]), int(tree[1]), lantern_k, float(delta))
    check_chunk_elements(chunk_elements)
    for name, rule in (("accept_rule", accept_rule), ("draft_rule", draft_rule)):
        if rule is not None and not callable(rule):
            raise ValueError(f"{name} must be a function, got {type(rule).__name__}")
    if draft_rule is not None:  # a rule's q is an arbitrary [V] row: only dense storage holds it
        if q_storage == "compact":
            raise ValueError("a custom draft_rule returns dense q rows: use q_storage='dense' or 'auto'")
        q_storage = "dense"
    return neighbours, delta, q_capacity(config.vocab_size, method, temperature, top_k, q_storage, int(tree[0]))


def check_generate_options(config: GPTConfig, method: str, window: int, knobs: dict, drafting: dict,
                           cfg: bool = True) -> None:
    """What ``generate`` checks first, for CLIs that validate before loading or writing anything.
    ``knobs``: cfg_scale/temperature/top_k/top_p; ``drafting``: coupling/init/tree/lantern/q_storage."""
    d = dict(coupling="none", init="uniform", tree=(1, 0), lantern=None, q_storage="auto", chunk_elements=None,
             accept_rule=None, draft_rule=None)
    d.update(drafting)
    _check(config, method, window, knobs["cfg_scale"], knobs["temperature"], knobs["top_k"], knobs["top_p"],
           cfg, d["coupling"], d["init"], d["tree"], d["lantern"], d["q_storage"], d["chunk_elements"],
           d["accept_rule"], d["draft_rule"])


def _takes_three(f) -> bool:
    """Whether the progress callback ``f`` accepts (done, iteration, row_iterations)."""
    import inspect

    try:
        inspect.signature(f).bind(0, 0, 0)
        return True
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): the documented two arguments
        return False


def _place(mesh, params, cond, prefix_mask, rows, knobs, neighbours):
    """Every input as a global array on ``mesh`` (rows over data, the rest replicated); keys travel
    as raw uint32 data (host arrays cannot hold key dtypes)."""
    import jax

    from .. import sharding as shd

    if jax.random.key_impl(rows) != jax.random.key_impl(jax.random.key(0)):
        raise ValueError("sharded generate needs keys of the default PRNG implementation")
    rows = np.asarray(jax.random.key_data(rows))
    rep = shd.replicated(mesh)
    cond, prefix_mask, rows = (shd.to_global(x, shd.batch_sharding(mesh, x.shape, what))
                               for x, what in ((cond, "cond"), (prefix_mask, "prefix mask"), (rows, "row keys")))
    knobs = {k: shd.to_global(v, rep) for k, v in knobs.items()}
    neighbours = None if neighbours is None else shd.to_global(neighbours, rep)
    return shd.place_params(params, mesh), cond, prefix_mask, rows, knobs, neighbours


def generate(params, config: GPTConfig, cond, key, *, method: str = "sjd", window: int = 16,
             cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             cfg: bool = True, example_ids=None, progress=None, coupling: str = "none",
             init: str = "uniform", tree: tuple[int, int] = (1, 0), lantern=None, mesh=None,
             q_storage: str = "auto", chunk_elements: int | None = None, accept_rule=None,
             draft_rule=None) -> GenerateOutput:
    """Sample image tokens ``[B, N]`` with ``method`` in {"ar", "jacobi", "sjd"}.

    Drafting options of jacobi/sjd (``sampling.loop`` explains each): ``coupling`` "none" (SJD),
    "gumbel" or "maximal" (= adaptive continuation); ``init`` "uniform", "horizon-repeat",
    "horizon-sample", "vertical-repeat" or "vertical-sample"; ``tree=(K, D)`` a draft tree with K
    candidates for the first draft and side branches D deep (``window`` counts every tree slot).
    All of these are lossless. ``lantern=(neighbours [V, k] int, delta)`` turns on LANTERN's relaxed
    acceptance, which is NOT lossless (see ``sampling.lantern.codebook_neighbours``).
    ``q_storage``: how the drafts' distributions are kept between iterations (``sampling.qstore``):
    "dense" ``[B, W, V]`` rows, "compact" (at most k entries per row; needs top-k or greedy) or
    "auto" (compact where that bound exists and saves memory). Tokens are the same either way.
    ``chunk_elements``: the largest ``[B, t, V]`` temporary of the target filters and the window's
    draws (default 2^28); below ``B * W * V`` they take the window in sequential passes of t slots
    (less memory, more latency; the same tokens).
    ``accept_rule(u, p_x, q_x) -> bool`` and ``draft_rule(DraftContext) -> (tokens [B, F], q [B, F, V])``
    are research hooks (``sampling.loop.SamplerSpec``): pure functions replacing the acceptance
    test ``u * q_x < p_x`` and the drafts of positions without a target (``init``). Each function
    object compiles once; ``exactness.check`` runs the exact-distribution test on them.

    cond: class ids ``[B]`` or (text models) caption features ``[B, C, caption_dim]`` or
    ``Caption(features, mask)``. key: int seed or PRNG key; row b uses ``fold_in(key, example_ids[b])``
    (default ``example_ids = arange(B)``), or pass ``[B]`` keys to give each row its own key.
    ``cfg=True`` computes the unconditional rows in the same forward, so every ``cfg_scale``
    (1.0 included) shares one compile; ``cfg=False`` skips them (then ``cfg_scale`` must be 1).
    temperature 0 is greedy; ``jacobi`` is always greedy; ``ar`` ignores ``window``.
    ``progress``: optional host callback ``f(committed_tokens_in_batch, iteration)`` called after
    every loop iteration (a separate compile; the call blocks until the result is ready). A callback
    taking a third argument also gets the row iterations so far (iterations summed over the rows
    still decoding in each), so ``(committed - B) / row_iterations`` is the mean accepted tokens per
    iteration of a row.

    ``mesh`` (``sharding.make_mesh``): run on a device mesh. Rows are split over ``data``, heads /
    MLP / vocabulary over ``model`` (``sharding.RULES``); params are moved to those shardings unless
    already there (``checkpoint.load(path, mesh=mesh)`` restores them there directly). Outputs are
    global arrays sharded over rows. Tokens do not depend on the mesh: keys are per example.
    """
    window = 1 if method == "ar" else window  # ar ignores it: one compile whatever is passed
    neighbours, delta, q_slots = _check(config, method, window, cfg_scale, temperature, top_k, top_p, cfg,
                                        coupling, init, tree, lantern, q_storage, chunk_elements,
                                        accept_rule, draft_rule)
    cond_arr, prefix_mask = split_cond(config, cond)
    B = cond_arr.shape[0]
    key = K.as_key(key)
    if key.ndim == 1:
        if key.shape[0] != B:
            raise ValueError(f"got {key.shape[0]} per-row keys for a cond batch of {B}")
        if example_ids is not None:
            raise ValueError("pass either per-row keys or example_ids, not both")
    elif key.ndim != 0:
        raise ValueError(f"key must be a single key or [B] keys, got shape {key.shape}")
    check_cond(config, cond_arr, prefix_mask, B, allow_null=False)
    if example_ids is not None:
        ids = np.asarray(example_ids)
        if ids.shape != (B,) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
            raise ValueError(f"example_ids must be {B} non-negative integers, got {ids!r}")
    rows = key if key.ndim == 1 else K.row_keys(
        key, jnp.asarray(np.arange(B) if example_ids is None else example_ids, jnp.uint32))
    knobs = make_knobs(cfg_scale, temperature, top_k, top_p, delta)
    spec = SamplerSpec(config=config, method=method, window=int(window), cfg=bool(cfg),
                       progress=progress is not None, coupling=coupling, init=init,
                       tree_width=int(tree[0]), tree_depth=int(tree[1]),
                       lantern_k=0 if neighbours is None else int(neighbours.shape[1]), mesh=mesh,
                       q_slots=q_slots, accept_rule=accept_rule, draft_rule=draft_rule,
                       chunk_elements=DEFAULT_CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements))
    require_sampler(spec, B, mesh)  # sizes before work: one line instead of an out-of-memory abort
    if mesh is not None:
        params, cond_arr, prefix_mask, rows, knobs, neighbours = _place(
            mesh, params, cond_arr, prefix_mask, rows, knobs, neighbours)
    if progress is None:
        return run(spec, params, cond_arr, prefix_mask, rows, knobs, neighbours)
    import jax

    from .loop import PROGRESS_HOOKS

    hook = progress if _takes_three(progress) else (lambda done, it, _rows: progress(done, it))
    PROGRESS_HOOKS.append(hook)
    try:
        return jax.block_until_ready(run(spec, params, cond_arr, prefix_mask, rows, knobs,
                                                   neighbours))
    finally:
        PROGRESS_HOOKS.remove(hook)

"""Sharding over a ``(data, model)`` device mesh: one logical-axis rules table for params, KV cache
and sampler state, resolved to ``NamedSharding``s with jax's own SPMD machinery.

Logical axes name what a dimension *is* (``batch``, ``heads``, ``vocab`` ...); ``RULES`` says which
mesh axis shards it. A mesh axis that does not divide a dimension is dropped for that array (the
dimension is replicated) with one warning, so every config runs on every mesh.
Activations inside jitted code are pinned with ``constrain`` while a mesh is ``active`` (set
during tracing by the sampler and ``teacher_forced_logits``; a no-op otherwise).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
import warnings

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")

# logical axis -> mesh axis (None: replicated). Data parallel over rows, tensor parallel over
# heads / MLP width / vocabulary (Megatron-style: column-split in, row-split out).
RULES: dict[str, str | None] = {
    "batch": "data",  # image rows (and their CFG twins), cache rows, sampler state rows
    "heads": "model",  # query heads: wqkv q-columns, wo rows, q-norm, attention activations
    "kv_heads": "model",  # K/V heads: cache and k-norm (GQA: fewer heads, may fall back to replicated)
    "qkv": "model",  # wqkv's fused output columns [q | k | v]
    "mlp": "model",  # SwiGLU hidden width
    "vocab": "model",  # token embedding rows, output columns, logits and draft q over the vocabulary
    "embed": None,  # model width: replicated (activations stay whole per device)
    "sequence": None,  # cache positions
    "head_dim": None,
}

# GPT parameter path (regex on "a/b/c") -> logical axes, first match wins.
PARAM_AXES: tuple[tuple[str, tuple], ...] = (
    (r"(tok|text)_embeddings/embedding$", ("vocab", "embed")),
    (r"cls_embedding/embedding$", (None, "embed")),
    (r"attention/wqkv/kernel$", ("embed", "qkv")),
    (r"attention/wo/kernel$", ("heads", "embed")),
    (r"attention/q_norm/(scale|bias)$", ("heads", "head_dim")),
    (r"attention/k_norm/(scale|bias)$", ("kv_heads", "head_dim")),
    (r"feed_forward/w[13]/kernel$", ("embed", "mlp")),
    (r"feed_forward/w2/kernel$", ("mlp", "embed")),
    (r"(norm|attention_norm|ffn_norm)/weight$", ("embed",)),
    (r"head_proj/kernel$", ("embed", "mlp")),
    (r"head_proj/bias$", ("mlp",)),
    (r"output/kernel$", ("embed", "vocab")),
    (r"output/bias$", ("vocab",)),
    (r"(cap_fc[12]/kernel|uncond_embedding)$", (None, None)),  # caption projection: small, replicated
)

KV_AXES = ("batch", "sequence", "kv_heads", "head_dim")  # KV cache [rows, positions, kv heads, head dim]

_WARNED: set = set()


def parse_mesh(text: str | None, n_devices: int) -> dict[str, int]:
    """``"data=D,model=M"`` -> ``{"data": D, "model": M}``; ``None``: all devices on data.

    One axis may be ``-1`` (or omitted): it takes the devices left. Explicit sizes may use fewer
    than ``n_devices`` (the mesh then takes the first ones), never more."""
    shape = {"data": -1, "model": 1}
    if text:
        seen = set()
        for part in text.split(","):
            name, sep, val = part.strip().partition("=")
            if not sep or name not in MESH_AXES or name in seen:
                raise ValueError(f"bad --mesh {text!r}: expected e.g. data=4,model=2 (axes: data, model)")
            seen.add(name)
            try:
                shape[name] = int(val)
            except ValueError:
                raise ValueError(f"bad --mesh {text!r}: {name} size {val!r} is not an integer") from None
            if shape[name] == 0 or shape[name] < -1:
                raise ValueError(f"bad --mesh {text!r}: axis sizes must be positive (or -1)")
        if "data" in seen and "model" not in seen:
            shape["model"] = -1 if shape["data"] != -1 else 1
    free = [k for k, v in shape.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"bad --mesh {text!r}: at most one axis may be -1")
    fixed = math.prod(v for v in shape.values() if v != -1)
    if free:
        if n_devices % fixed:
            raise ValueError(f"--mesh {text!r}: {n_devices} devices are not divisible by {fixed}")
        shape[free[0]] = n_devices // fixed
    if math.prod(shape.values()) > n_devices:
        raise ValueError(f"--mesh {text!r} needs {math.prod(shape.values())} devices, "
                         f"but {n_devices} are available")
    return shape


def make_mesh(shape: dict[str, int] | str | None = None, devices=None) -> jax.sharding.Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default all, every process's). Axes are Auto
    (compiler-propagated shardings, the logical-rules style); model-axis neighbours are adjacent
    devices (``jax.make_mesh`` orders them for the fastest interconnect on TPU)."""
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(shape, dict):
        shape = parse_mesh(shape, len(devices))
    sizes = tuple(shape[a] for a in MESH_AXES)
    if math.prod(sizes) < len(devices):
        if jax.process_count() > 1:
            raise ValueError(f"a multi-host mesh must use all {len(devices)} devices, got {shape}")
        devices = devices[:math.prod(sizes)]
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == jax.device_count() and devices == list(jax.devices()):
        return jax.make_mesh(sizes, MESH_AXES, axis_types=auto)
    return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=auto)


def mesh_shape(mesh) -> dict[str, int]:
    """Axis sizes of a ``Mesh``/``AbstractMesh`` or a plain ``{"data": D, "model": M}``."""
    if isinstance(mesh, dict):
        return {a: int(mesh.get(a, 1)) for a in MESH_AXES}
    return {a: int(mesh.shape[a]) for a in MESH_AXES}


def spec_for(shape, logical, mesh, what: str = "array") -> P:
    """PartitionSpec for an array of ``shape`` with ``logical`` axis names under ``RULES``.

    Mesh axes that do not divide their dimension, or that an earlier dimension already uses, are
    dropped (replicated) with a warning once per (what, dimension, axis)."""
    sizes = mesh_shape(mesh)
    logical = tuple(logical) + (None,) * (len(shape) - len(logical))
    out, used = [], set()
    for i, (dim, name) in enumerate(zip(shape, logical)):
        axis = RULES.get(name) if name else None
        if axis is None or sizes[axis] == 1 or axis in used:
            out.append(None)
            continue
        if dim % sizes[axis]:
            key = (what, i, name, axis, dim, sizes[axis])
            if dim > 1 and key not in _WARNED:  # (size-1 placeholders replicate silently)
                _WARNED.add(key)
                warnings.warn(f"sharding: {what} dim {i} ({name}, size {dim}) is not divisible by mesh "
                              f"axis {axis}={sizes[axis]}; replicating it", stacklevel=2)
            out.append(None)
            continue
        out.append(axis)
        used.add(axis)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_logical_axes(params) -> dict:
    """Logical axes of every leaf of a GPT or Janus params tree (same structure, tuples as leaves).

    VQ decoder leaves (Janus ``vq`` subtree) are replicated: the decoder is small and runs once per
    image. An unknown GPT leaf is an error, so a new parameter cannot silently go unsharded."""
    unknown = []

    def axes(path, x):
        s = _path_str(path)
        if s.startswith("vq/") or "/vq/" in s:
            return (None,) * len(x.shape)
        for pat, ax in PARAM_AXES:
            if re.search(pat, s):
                if len(ax) != len(x.shape):
                    raise ValueError(f"sharding rule {pat!r} has {len(ax)} axes for {s} of shape {x.shape}")
                return ax
        unknown.append(s)
        return (None,) * len(x.shape)

    out = jax.tree_util.tree_map_with_path(axes, params)
    if unknown:
        raise ValueError(f"no sharding rule for parameter(s) {unknown}; add them to sharding.PARAM_AXES")
    return out


def param_specs(params, mesh) -> dict:
    """PartitionSpecs of a (possibly abstract) params tree."""
    logical = param_logical_axes(params)
    return jax.tree.map(lambda x, ax: spec_for(x.shape, ax, mesh, "param"), params, logical,
                        is_leaf=lambda x: hasattr(x, "shape"))


def param_shardings(params, mesh) -> dict:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def shard_params(params, mesh):
    """Place in-memory params on ``mesh`` (checkpoints restore straight into shardings instead:
    ``checkpoint.load(path, mesh=mesh)``)."""
    return jax.device_put(params, param_shardings(params, mesh))


def named(mesh, shape, logical, what="array") -> NamedSharding:
    return NamedSharding(mesh, spec_for(shape, logical, mesh, what))


def batch_sharding(mesh, shape, what="batch") -> NamedSharding:
    """Rows over ``data``, everything else replicated."""
    return named(mesh, shape, ("batch",), what)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def to_global(x, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from a value every process holds in full (host numbers or a
    local array): each process supplies its own shards, so this is multi-host safe."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place_params(params, mesh):
    """``params`` on their ``RULES`` shardings (no-op for leaves already there, e.g. restored by
    ``checkpoint.load(path, mesh=mesh)``)."""
    want = param_shardings(params, mesh)

    def put(x, sh):
        return x if isinstance(x, jax.Array) and x.sharding == sh else jax.device_put(x, sh)

    return jax.tree.map(put, params, want)


def per_device_bytes(shape, dtype, spec: P, mesh) -> int:
    """Bytes one device holds of an array with this spec (pure shape arithmetic: works for
    meshes that are not attached, e.g. a planned (4, 4) pod slice)."""
    sizes = mesh_shape(mesh)
    n = 1
    for i, dim in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        axes = (axes,) if isinstance(axes, str) else (axes or ())
        n *= dim // math.prod(sizes[a] for a in axes)
    return n * np.dtype(dtype).itemsize


# ---- activation constraints while tracing under a mesh ----------------------------------------

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("sjd_jax_mesh", default=None)


@contextlib.contextmanager
def active(mesh):
    """Make ``constrain`` pin shardings on ``mesh`` (None: leave everything to propagation).

    Only set while tracing a function whose jit cache key includes the mesh (the sampler's
    ``SamplerSpec.mesh``, ``teacher_forced_logits``'s static mesh)."""
    token = _ACTIVE.set(mesh)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, logical, what="activation"):
    """``with_sharding_constraint`` by logical axes when a mesh is active; identity otherwise."""
    mesh = _ACTIVE.get()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named(mesh, x.shape, logical, what))


def constrain_tree(tree, logical_tree, what="state"):
    mesh = _ACTIVE.get()
    if mesh is None:
        return tree
    return jax.tree.map(lambda x, ax: constrain(x, ax, what), tree, logical_tree,
                        is_leaf=lambda a: isinstance(a, tuple) and all(isinstance(e, (str, type(None))) for e in a))

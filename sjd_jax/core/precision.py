"""The one place that decides the dtype the transformer's params are held in (``param_dtype``).

``"auto"`` picks bfloat16 for large transformers (at least ``LARGE_PARAMS`` parameters: the 7-8B
families Lumina-mGPT, Anole, Emu3-Gen and Janus-Pro-7B) on GPU/TPU backends, where decoding is
memory-bound and bf16 halves the bytes each step reads; float32 elsewhere: on CPU (no bf16 matrix
units, so bf16 is slower there) and for smaller models (LlamaGen up to 3B, Janus-Pro-1B), whose
params fit anyway. "Large" is decided by parameter count, not by family name, so a new family gets
the same rule without being listed. Explicit ``"float32"`` / ``"bfloat16"`` always win.

Only the transformer's floating-point params are cast; VQ decoders and the T5 text encoder stay
float32 (small, run once per image or prompt, and their parity is measured in float32). When the
params are bfloat16 the transformer computes in bfloat16 too (``with_param_dtype``).
"""

from __future__ import annotations

import dataclasses

PARAM_DTYPES = ("auto", "float32", "bfloat16")
STORED_DTYPES = ("float32", "bfloat16")  # what a checkpoint may hold; "auto" is resolved before
LARGE_PARAMS = 4_000_000_000  # LlamaGen-3B (3.1B) stays below, Janus-Pro-7B (6.9B) is above
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


def check_param_dtype(value, what: str = "param_dtype", choices=PARAM_DTYPES) -> str:
    """``value`` if it is one of ``choices``; one ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def resolve_param_dtype(requested: str, *, n_params: int, backend: str | None = None) -> str:
    """``"float32"`` or ``"bfloat16"`` for ``requested`` (one of ``PARAM_DTYPES``).

    ``n_params``: the transformer's parameter count (VQ / text encoder not included); ``backend``:
    ``"cpu"``, ``"gpu"``, ``"tpu"``... (default ``jax.default_backend()``). "auto" is bfloat16 iff
    the backend is an accelerator and ``n_params >= LARGE_PARAMS``."""
    check_param_dtype(requested)
    if requested != "auto":
        return requested
    if backend is None:
        import jax

        backend = jax.default_backend()
    large = int(n_params) >= LARGE_PARAMS
    return "bfloat16" if large and str(backend).lower() in ACCELERATORS else "float32"


def backend_of(sharding=None, mesh=None) -> str:
    """The platform params will live on: ``mesh``'s devices, ``sharding``'s, else the default backend."""
    import jax

    if mesh is not None:
        return mesh.devices.flat[0].platform
    if sharding is not None:
        return next(iter(sharding.device_set)).platform
    return jax.default_backend()


def is_float(dtype) -> bool:
    """Whether leaves of ``dtype`` are cast by ``param_dtype`` (floating point, any width)."""
    import jax.numpy as jnp

    return bool(jnp.issubdtype(dtype, jnp.floating))


def with_dtype(abstract, dtype: str):
    """``abstract`` (a tree of ``jax.ShapeDtypeStruct``) with every floating leaf in ``dtype``;
    shapes, shardings and non-float leaves unchanged."""
    import jax
    import jax.numpy as jnp

    def one(x):
        if not is_float(x.dtype):
            return x
        return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=getattr(x, "sharding", None))

    return jax.tree.map(one, abstract)


def dtype_of(params) -> str:
    """The one floating dtype of a params tree (``"float32"`` / ``"bfloat16"``); ``ValueError`` when
    its float leaves mix dtypes or hold another one (e.g. float16). A tree without float leaves:
    ``"float32"``."""
    import jax
    import numpy as np

    names = {np.dtype(x.dtype).name for x in jax.tree.leaves(params) if is_float(x.dtype)}
    if not names:
        return "float32"
    if len(names) > 1 or not names <= set(STORED_DTYPES):
        raise ValueError(f"params must be all float32 or all bfloat16, got {', '.join(sorted(names))}")
    return names.pop()


def with_param_dtype(config, param_dtype: str):
    """A transformer config (``GPTConfig``, or a family config with a ``gpt`` field) whose compute
    dtype follows bfloat16 params (bf16 weights with float32 compute would upcast every weight on
    every step and read no fewer bytes); float32 params leave it as it is."""
    check_param_dtype(param_dtype, choices=STORED_DTYPES)
    if param_dtype != "bfloat16":
        return config
    if hasattr(config, "gpt"):
        return dataclasses.replace(config, gpt=dataclasses.replace(config.gpt, dtype="bfloat16"))
    return dataclasses.replace(config, dtype="bfloat16")


__all__ = ["ACCELERATORS", "LARGE_PARAMS", "PARAM_DTYPES", "STORED_DTYPES", "backend_of", "check_param_dtype",
           "dtype_of", "is_float", "resolve_param_dtype", "with_dtype", "with_param_dtype"]

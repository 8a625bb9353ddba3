"""``sjd-jax shard-plan``: per-device memory of params, KV cache and sampler state on a planned mesh.

Pure shape arithmetic over the shardings ``sharding.RULES`` gives (``jax.eval_shape``: no weights,
no devices), so a TPU pod slice can be planned from a laptop. XLA's temporaries (activations of one
window forward, attention scores) come on top; ``sjd-jax bench`` reports those for real runs.

Params are planned in ``--param-dtype`` (default auto: bfloat16 for the 7-8B configs, float32 for
the smaller ones, as ``sjd_jax.core.precision`` picks on the GPU/TPU meshes these plans are for).

examples:
  sjd-jax shard-plan --model llamagen-xl --mesh data=4,model=4
  sjd-jax shard-plan --model lumina-mgpt-7b-768 --mesh data=4,model=4 --batch-per-device 2 --window 64
  sjd-jax shard-plan --model emu3-gen --mesh data=2,model=8 --batch-per-device 1 --param-dtype float32
"""

from __future__ import annotations

import json
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.parallel import sharding as shd
from sjd_jax.core import precision
from sjd_jax.core.config import GPTConfig

PLANNED_BACKEND = "tpu"  # plans are for accelerator meshes: "auto" resolves as on GPU/TPU


def _lumina_7b(px: int) -> GPTConfig:
    """Size-equivalent of Lumina-mGPT 7B (Chameleon-7B: dim 4096, 32 layers, 32 MHA heads, SwiGLU
    11008, vocabulary 65536, qk-norm). One image row = w codes + a newline token, so the grid is
    (h, w + 1); the condition is a 128-token prompt (text ids share the model's table in the real
    model; here a 4-entry text table stands in for it, 16k params)."""
    g = px // 16
    return GPTConfig(vocab_size=65536, grid_size=(g, g + 1), dim=4096, n_layer=32, n_head=32,
                     intermediate_size=11008, text_vocab_size=4, cls_token_num=128, rope_type="1d",
                     rope_interleaved=False, qk_norm=True, dtype="bfloat16")


def _emu3_gen(px: int = 720) -> GPTConfig:
    """Size-equivalent of Emu3-Gen (8.5B: dim 4096, 32 layers, 32 heads with 8 KV heads, SwiGLU
    14336, RoPE theta 1e6, vocabulary 184622 shared by text and image, untied head). One image row =
    w codes + an end-of-line token, so the grid is (h, w + 1) = (90, 91) at 720 px (8x downsampling);
    the condition is a 128-token prompt, with a 4-entry text table standing in for the shared one as
    in ``_lumina_7b`` (the real model's CFG runs a negative prompt of the same length: same rows)."""
    g = px // 8
    return GPTConfig(vocab_size=184622, grid_size=(g, g + 1), dim=4096, n_layer=32, n_head=32, n_kv_head=8,
                     intermediate_size=14336, text_vocab_size=4, cls_token_num=128, rope_type="1d",
                     rope_interleaved=False, rope_theta=1e6, dtype="bfloat16")


CONFIGS = {
    "llamagen-xl": lambda: GPTConfig.llamagen("XL", dtype="bfloat16"),  # c2i, 256 px: 16x16 tokens
    "llamagen-xl-384": lambda: GPTConfig.llamagen("XL", grid_size=24, dtype="bfloat16"),
    "llamagen-xl-t2i-512": lambda: GPTConfig.llamagen("XL", caption_dim=2048, grid_size=32, dtype="bfloat16"),
    "llamagen-3b": lambda: GPTConfig.llamagen("3B", dtype="bfloat16"),
    "lumina-mgpt-7b-512": lambda: _lumina_7b(512),
    "lumina-mgpt-7b-768": lambda: _lumina_7b(768),
    "lumina-mgpt-7b-1024": lambda: _lumina_7b(1024),
    "emu3-gen": _emu3_gen,
}


def _bytes(tree, specs, mesh) -> tuple[int, int]:
    """(total bytes, bytes on one device) of an abstract tree under ``specs``."""
    leaves = jax.tree.leaves(tree)
    sp = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    total = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)
    return total, sum(shd.per_device_bytes(x.shape, x.dtype, s, mesh) for x, s in zip(leaves, sp))


def plan(config: GPTConfig, mesh: dict, batch_per_device: int, window: int, method: str = "sjd",
         cfg: bool = True, param_dtype: str = "auto") -> dict:
    """Per-device bytes of params, KV cache and the rest of the sampler state on ``mesh``
    (``{"data": D, "model": M}``), global batch ``batch_per_device * D``. ``param_dtype``: one of
    ``precision.PARAM_DTYPES``, "auto" resolved for ``PLANNED_BACKEND``; float leaves take it (the
    model has no others); bfloat16 params make the compute dtype bfloat16 too."""
    from sjd_jax.core.model import abstract_params
    from sjd_jax.sampling import SamplerOptions, compile as compile_sampler, resolve

    mesh = shd.mesh_shape(mesh)
    B = batch_per_device * mesh["data"]
    abstract = abstract_params(config)
    param_dtype = precision.resolve_param_dtype(param_dtype, n_params=sum(x.size for x in jax.tree.leaves(abstract)),
                                                backend=PLANNED_BACKEND)
    config = precision.with_param_dtype(config, param_dtype)
    params = precision.with_dtype(abstract, param_dtype)
    spec = resolve(config, SamplerOptions(method=method, window=window, cfg=cfg),
                   dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0))
    cond = jax.ShapeDtypeStruct((B, config.cls_token_num) if config.cond_kind != "class" else (B,), jnp.int32)
    if config.cond_kind == "caption":
        cond = jax.ShapeDtypeStruct((B, config.cls_token_num, config.caption_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((B, config.cls_token_num if config.cond_kind != "class" else 1), bool)
    sampler = compile_sampler(spec, cond, mask, jax.ShapeDtypeStruct((B, 2), jnp.uint32))
    state, axes = sampler.abstract_state, sampler.state_axes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p_specs = shd.param_specs(params, mesh)
        s_specs = jax.tree.map(lambda x, ax: shd.spec_for(x.shape, ax, mesh, "sampler state"), state, axes,
                               is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    cache, cache_specs = state.cache, s_specs.cache
    rest = state.replace(cache=None)
    rest_specs = s_specs.replace(cache=None)
    p_tot, p_dev = _bytes(params, p_specs, mesh)
    c_tot, c_dev = _bytes((cache.k, cache.v), (cache_specs.k, cache_specs.v), mesh)
    r_tot, r_dev = _bytes(rest, rest_specs, mesh)
    gib = 2.0 ** 30
    return {
        "mesh": mesh, "devices": mesh["data"] * mesh["model"], "global_batch": B, "window": window,
        "method": method, "cfg_rows": 2 * B if cfg else B, "cache_positions": cache.k[0].shape[1],
        "param_dtype": param_dtype, "compute_dtype": config.dtype,
        "params_gib": {"total": p_tot / gib, "per_device": p_dev / gib},
        "kv_cache_gib": {"total": c_tot / gib, "per_device": c_dev / gib},
        "sampler_state_gib": {"total": r_tot / gib, "per_device": r_dev / gib},
        "per_device_gib": (p_dev + c_dev + r_dev) / gib,
        "replicated_fallbacks": sorted({str(w.message).removeprefix("sharding: ") for w in caught}),
        "param_specs": {jax.tree_util.keystr(k): str(v) for k, v in jax.tree_util.tree_leaves_with_path(
            p_specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) if "layers_0" in
            jax.tree_util.keystr(k) or "layers" not in jax.tree_util.keystr(k)},
    }


MAX_AXIS = 1 << 16  # devices along one mesh axis (the largest TPU pods have ~9000 chips)


def _parse_planned_mesh(text: str) -> dict:
    sizes = {}
    for part in text.split(","):
        name, _, val = part.partition("=")
        if name.strip() not in shd.MESH_AXES or not val.strip().isdigit() or not 1 <= int(val) <= MAX_AXIS:
            raise ValueError(f"bad --mesh {text!r}: expected data=D,model=M with sizes in 1..{MAX_AXIS}")
        sizes[name.strip()] = int(val)
    return {a: sizes.get(a, 1) for a in shd.MESH_AXES}


def parser():
    from sjd_jax.cli.util import Parser, add_output_flags

    ap = Parser("sjd-jax shard-plan", __doc__)
    ap.add_argument("--model", "--config", dest="config", metavar="MODEL", default="llamagen-xl",
                    help=f"model architecture to plan for: one of {', '.join(CONFIGS)} (default llamagen-xl)")
    ap.add_argument("--mesh", default="data=4,model=4", help="planned mesh data=D,model=M (default data=4,model=4)")
    ap.add_argument("--batch-per-device", type=int, default=8, help="rows per data shard (default 8)")
    ap.add_argument("--window", type=int, default=64, help="Jacobi window (default 64)")
    ap.add_argument("--method", default="sjd", choices=("ar", "sjd"), help="ar or sjd (default sjd)")
    ap.add_argument("--param-dtype", default="auto", choices=precision.PARAM_DTYPES,
                    help="dtype the params are held in (default auto: bfloat16 for models of >= 4e9 params, "
                         "float32 for smaller ones, as loads on GPU/TPU pick)")
    ap.add_argument("--no-cfg", action="store_true", help="no unconditional CFG rows")
    ap.add_argument("--out", default=None, help="also write the JSON plan here")
    add_output_flags(ap)
    return ap


def main(argv=None) -> int:
    from sjd_jax.cli.util import run

    return run(parser(), argv, _main)


def _main(args) -> int:
    """The plan is the result: printed as indented JSON (--json: the same object; --quiet: only --out)."""
    from sjd_jax.io import atomic
    from sjd_jax.cli.util import Output
    from sjd_jax.parallel.memory import MAX_ROWS
    from sjd_jax.core.validate import check_int

    if args.config not in CONFIGS:
        raise ValueError(f"unknown model {args.config!r} (--model); choose one of {', '.join(CONFIGS)}")
    check_int("--batch-per-device", args.batch_per_device, 1, MAX_ROWS)
    check_int("--window", args.window, 1)
    if args.out:
        atomic.check_file_target(args.out)
    config = CONFIGS[args.config]()
    if args.window > config.num_image_tokens:
        raise ValueError(f"--window must be <= {config.num_image_tokens} for {args.config}, got {args.window}")
    res = {"config": args.config, **plan(config, _parse_planned_mesh(args.mesh), args.batch_per_device,
                                         args.window, args.method, not args.no_cfg, args.param_dtype)}
    text = json.dumps(res, indent=1)
    if args.out:
        atomic.write_text(args.out, text)
    Output(args).result(res, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

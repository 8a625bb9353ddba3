"""Benchmark: AR vs Jacobi-family samplers on one model, in one process (JSON output).

Compile time is measured ahead of time (``lower().compile()``); wall time is the best of
``--repeat`` runs of the compiled loop, so ratios within one run share the machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from .config import GPTConfig
from .model import init_params, param_count, split_cond
from .sampling import keys as K
from .sampling.loop import SamplerSpec, _generate_jit, acceptance_stats, make_knobs
from .validate import check_sampling


def _config(name: str, grid: int) -> GPTConfig:
    if not name.startswith("random:"):
        raise ValueError(f"unknown model {name!r}: use random:<LlamaGen preset>, e.g. random:GPT-B")
    return GPTConfig.llamagen(name.split(":", 1)[1], grid_size=grid)


def run_one(params, config: GPTConfig, method: str, window: int, batch: int, knobs: dict,
            seed: int = 0, repeat: int = 1) -> dict:
    spec = SamplerSpec(config=config, method=method, window=window, cfg=True)
    cond, prefix_mask = split_cond(config, jnp.arange(batch, dtype=jnp.int32) % config.num_classes)
    rows = K.row_keys(K.as_key(seed), jnp.arange(batch, dtype=jnp.uint32))
    kn = make_knobs(**knobs)
    t0 = time.perf_counter()
    compiled = _generate_jit.lower(spec, params, cond, prefix_mask, rows, kn).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(params, cond, prefix_mask, rows, kn))
        times.append(time.perf_counter() - t0)
    return {
        "method": method, "window": spec.effective_window, "batch": batch,
        "nfe_per_row": np.asarray(out.nfe).tolist(), "forwards": int(out.iterations) + 1,
        **acceptance_stats(out.nfe, out.committed, config.num_image_tokens, spec.effective_window),
        "compile_s": compile_s, "wall_s": min(times), "wall_s_per_image": min(times) / batch,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sjd-jax bench", description=__doc__)
    ap.add_argument("--model", default="random:GPT-B", help="random:<LlamaGen preset> (random init)")
    ap.add_argument("--grid", type=int, default=16, help="image token grid side (16 = 256 px)")
    ap.add_argument("--methods", default="ar,sjd", help="comma-separated: ar, jacobi, sjd")
    ap.add_argument("--windows", default="16", help="comma-separated windows for the non-AR methods")
    ap.add_argument("--batch", default="1,2", help="comma-separated batch sizes")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per configuration (best kept)")
    ap.add_argument("--out", default="bench.json", help="JSON output path")
    args = ap.parse_args(argv)
    try:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        windows = [int(w) for w in args.windows.split(",")]
        batches = [int(b) for b in args.batch.split(",")]
        if min(batches) < 1 or args.repeat < 1:
            raise ValueError("batch sizes and --repeat must be >= 1")
        config = _config(args.model, args.grid)
        knobs = dict(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p)
        for m in methods:
            for w in ([1] if m == "ar" else windows):
                check_sampling(config, m, w, cfg=True, **knobs)
    except ValueError as e:
        print(f"sjd-jax bench: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    params = init_params(config, jax.random.key(0))
    init_s = time.perf_counter() - t0
    print(f"model {args.model}: {param_count(params) / 1e6:.1f}M params, {config.num_image_tokens} image "
          f"tokens, init {init_s:.1f}s; backend {jax.default_backend()}", file=sys.stderr)
    results = []
    for b in batches:
        for m in methods:
            for w in ([1] if m == "ar" else windows):
                r = run_one(params, config, m, w, b, knobs, args.seed, args.repeat)
                results.append(r)
                print(f"  {m:6s} W={r['window']:<3d} B={b}: NFE {r['nfe_mean']:.1f} "
                      f"(x{r['step_compression']:.2f}), {r['wall_s_per_image']:.2f} s/image, "
                      f"compile {r['compile_s']:.1f}s", file=sys.stderr)
    for r in results:  # latency ratio against AR at the same batch size
        ar = next((a for a in results if a["method"] == "ar" and a["batch"] == r["batch"]), None)
        r["latency_ratio_vs_ar"] = ar["wall_s"] / r["wall_s"] if ar else None
    report = {
        "model": args.model, "params": param_count(params), "image_tokens": config.num_image_tokens,
        "knobs": knobs, "seed": args.seed,
        "env": {"jax": jax.__version__, "backend": jax.default_backend(),
                "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(),
                "python": platform.python_version()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": results,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)  # never leave a half-written report
    print(json.dumps({k: report[k] for k in ("model", "image_tokens", "knobs")}))
    for r in results:
        print(json.dumps({k: r[k] for k in ("method", "window", "batch", "nfe_mean", "step_compression",
                                             "wall_s_per_image", "compile_s", "latency_ratio_vs_ar")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

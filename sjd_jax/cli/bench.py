"""Benchmark: AR vs the Jacobi-family samplers on one model, in one process (JSON + PNG plot).

For every method x window x draft init (and batch size) it reports NFE, step compression vs AR,
tokens committed per iteration (mean and histogram), side-branch hits, wall time per image and the
latency ratio vs AR at the same batch size, compile time and XLA's memory footprint of the compiled
loop. It also measures the cost of one W-token forward over a 1-token forward (same batch, same
cache), so each row can say how much of the step compression reaches wall time:
``efficiency = latency_ratio / (step_compression / forward_cost_ratio)`` (1 = no loop overhead).

Compile time is measured ahead of time (``lower().compile()``); wall time is the best of
``--repeat`` passes over the same images with the compiled loop, so ratios within one run share the
machine state. Image i always uses class ``i mod classes`` and example id i, so results do not
depend on the batch size.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.io import atomic
from sjd_jax.parallel import memory
from sjd_jax.core import model as gpt
from sjd_jax import sampling
from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import init_params, param_count, split_cond
from sjd_jax.sampling import keys as K
from sjd_jax.sampling.options import INITS, Knobs, check_chunk_elements, resolve
from sjd_jax.sampling.qstore import Q_STORAGE
from sjd_jax.sampling.recipes import LOSSLESS, RECIPES, options
from sjd_jax.core.validate import check_int, check_seed
from sjd_jax.tuning.costs import forward_seconds

DEFAULT_METHODS = "sjd,sjd-gumbel,sjd-ac,sjd-pac"


def _load(name: str, grid: int, vocab: int | None = None):
    """(config, params, lantern codebook or None, default cfg scale)."""
    if name.startswith("random:"):
        extra = {} if vocab is None else {"vocab_size": vocab}
        config = GPTConfig.llamagen(name.split(":", 1)[1], grid_size=grid, **extra)
        memory.require_tree(gpt.abstract_params(config), f"random weights of {name}")
        return config, None, None, 4.0
    if vocab is not None:
        raise ValueError("--vocab applies to random: models only")
    from sjd_jax.families import presets
    from sjd_jax.core.vq import codebook_vectors

    if name not in presets.PRESETS:
        raise ValueError(f"unknown model {name!r}: use a bundled model ({', '.join(presets.PRESETS)}) "
                         f"or random:<LlamaGen preset>, e.g. random:GPT-B")
    b = presets.load(name)
    return b.gpt_config, b.gpt_params, codebook_vectors(b.vq_params, b.vq_config), b.preset.cfg_scale


def bench_options(method: str, window: int, init: str = "uniform", q_storage: str = "auto",
                  chunk_elements: int | None = None):
    """The ``SamplerOptions`` of one configuration (``init`` applies to the drafting methods)."""
    opts = options(method, window, q_storage=q_storage, chunk_elements=chunk_elements)
    return opts if opts.method == "ar" else opts.replace(init=init)


def configuration(config: GPTConfig, method: str, window: int, knobs: dict, init: str = "uniform", lantern=None,
                  q_storage: str = "auto", chunk_elements: int | None = None):
    """One benchmark configuration, validated: (``SamplerSpec``, lantern neighbours or None, ``Knobs``).
    ``init`` applies to the drafting methods (ar drafts nothing); ``lantern``: (neighbours [V, k],
    delta), used by the lantern recipe only."""
    opts = bench_options(method, window, init, q_storage, chunk_elements)
    neighbours, delta = lantern if opts.lantern and lantern is not None else (None, 0.0)
    spec = resolve(config, opts, dict(knobs, lantern_delta=delta), neighbours=neighbours)
    return spec, None if neighbours is None else jnp.asarray(neighbours), Knobs.make(**knobs, lantern_delta=delta)


def _memory(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
        return {"xla_temp_mb": m.temp_size_in_bytes / 2**20, "xla_args_mb": m.argument_size_in_bytes / 2**20,
                "xla_output_mb": m.output_size_in_bytes / 2**20}
    except Exception:  # not every backend reports it
        return {}


def run_one(params, config: GPTConfig, method: str, window: int, batch: int, knobs: dict,
            seed: int = 0, repeat: int = 1, images: int | None = None, init: str = "uniform",
            lantern=None, q_storage: str = "auto", chunk_elements: int | None = None) -> dict:
    """One configuration over ``images`` images (default: one batch), in batches of ``batch``.
    ``lantern``: (neighbours [V, k], delta), used by the lantern recipe only."""
    images = batch if images is None else images
    spec, neighbours, kn = configuration(config, method, window, knobs, init, lantern, q_storage, chunk_elements)
    memory.require_sampler(spec, batch)
    ids = np.arange(images)
    chunks = [ids[i:i + batch] for i in range(0, images, batch)]
    chunks[-1] = np.resize(chunks[-1], batch)  # pad the last batch to the compiled shape

    def args(chunk):
        cond, prefix_mask = split_cond(config, jnp.asarray(chunk % config.num_classes, jnp.int32))
        return cond, prefix_mask, K.row_keys(K.as_key(seed), jnp.asarray(chunk, jnp.uint32))

    inputs = [args(ch) for ch in chunks]
    executables = sampling.compile(spec, *inputs[0], neighbours)
    t0 = time.perf_counter()
    compiled = executables.lower(params, *inputs[0], kn, neighbours).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, *inputs[0], kn, neighbours))  # warm-up: first-call costs
    times = []
    for _ in range(repeat):
        outs = []
        t0 = time.perf_counter()
        for a in inputs:
            outs.append(compiled(params, *a, kn, neighbours))
        jax.block_until_ready(outs)
        times.append(time.perf_counter() - t0)
    nfe = np.concatenate([np.asarray(o.nfe) for o in outs])[: images]  # drop the padding rows
    committed = np.concatenate([np.asarray(o.committed) for o in outs])[: images]
    hits = np.concatenate([np.asarray(o.branch_hits) for o in outs])[: images]
    iterations = sum(int(o.iterations) for o in outs)
    return {
        **_row(config, spec, method, init, batch, q_storage, images, nfe, committed, hits),
        "schedule": "static", "forwards": iterations + len(outs),
        "useful_fraction": float((nfe - 1).sum() / (batch * iterations)),
        "compile_s": compile_s, "wall_s": min(times), "wall_s_per_image": min(times) / images,
        "images_per_s": images / min(times), **_memory(compiled),
    }


def _row(config, spec, method, init, batch, q_storage, images, nfe, committed, hits) -> dict:
    return {"method": method, "lossless": method in LOSSLESS, "window": spec.window, "init": init,
            "tree": [spec.tree_width, spec.tree_depth] if spec.branches else None, "batch": batch,
            "q_storage": q_storage, "q_slots": spec.q_slots, "chunk_elements": spec.chunk_elements,
            "images": images, "nfe_per_row": nfe.tolist(),
            **sampling.acceptance_stats(nfe, committed, config.num_image_tokens, spec.window),
            "branch_hits_per_image": float(hits.mean())}


def run_continuous(params, config: GPTConfig, method: str, window: int, batch: int, knobs: dict, seed: int = 0,
                   repeat: int = 1, images: int | None = None, init: str = "uniform", lantern=None,
                   q_storage: str = "auto", chunk_elements: int | None = None, refill_rows: int | None = None) -> dict:
    """One configuration with continuous batching (``sampling.generate_stream``): the same images
    (class i mod classes, example id i) as ``run_one``; a first pass over B + R images compiles."""
    from sjd_jax.sampling.batching import default_refill_rows, generate_stream

    images = batch if images is None else images
    spec, neighbours, _ = configuration(config, method, window, knobs, init, lantern, q_storage, chunk_elements)
    opts = bench_options(method, window, init, q_storage, chunk_elements)
    extra = {"lantern": (neighbours, lantern[1])} if neighbours is not None else {}
    labels = list(np.arange(images) % config.num_classes)
    R = default_refill_rows(batch) if refill_rows is None else refill_rows

    def go(n):
        st = generate_stream(params, config, labels[:n], seed, opts, batch=batch, schedule="continuous", refill_rows=R,
                             **knobs, **extra)
        return sorted(st, key=lambda it: it.index), st.stats

    t0 = time.perf_counter()
    go(min(images, batch + R))  # compiles the start, segment and refill executables
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        items, stats = go(images)
        times.append(time.perf_counter() - t0)
    nfe = np.asarray([it.nfe for it in items])
    committed, hits = np.stack([it.committed for it in items]), np.asarray([it.branch_hits for it in items])
    st = stats.as_dict()
    return {**_row(config, spec, method, init, stats.batch, q_storage, images, nfe, committed, hits),
            "schedule": "continuous", "forwards": stats.iterations + stats.refills + 1,
            **{k: st[k] for k in ("useful_fraction", "steady_useful_fraction", "refill_rows", "drain", "segments",
                                  "refills", "host_ms_per_segment")},
            "first_pass_s": compile_s, "wall_s": min(times), "wall_s_per_image": min(times) / images,
            "images_per_s": images / min(times)}


def forward_cost(params, config: GPTConfig, batch: int, windows, reps: int = 512) -> dict:
    """Seconds per cached forward of W tokens (CFG-doubled batch), by W, the ratio to W = 1, and the
    seconds its loop took to compile (``tuning.costs.forward_seconds``: in one jitted loop at a
    mid-image cache length, timed differentially so per-call costs are not counted)."""
    # (at least 0.25 s of forwards per window: a few short loops are noise on a shared machine)
    out, compiles = forward_seconds(params, config, 2 * batch, windows, reps=reps, min_seconds=0.25)
    return {str(W): {"seconds": s, "ratio": s / out[1], "compile_s": compiles[W]} for W, s in out.items()}


def summarize(results: list[dict]) -> dict:
    """Best configuration per method (by step compression, and by latency ratio) and overall."""
    out = {}
    auto = [r for r in results if "auto" in r]
    results = [r for r in results if "auto" not in r]
    for m in sorted({r["method"] for r in results if r["method"] != "ar"}):
        rs = [r for r in results if r["method"] == m]
        by_c = max(rs, key=lambda r: r["step_compression"])
        by_l = max(rs, key=lambda r: r["latency_ratio_vs_ar"] or 0)
        out[m] = {"lossless": m in LOSSLESS,
                  "best_compression": {k: by_c[k] for k in ("window", "init", "batch", "step_compression",
                                                            "latency_ratio_vs_ar", "efficiency")},
                  "best_latency": {k: by_l[k] for k in ("window", "init", "batch", "step_compression",
                                                        "latency_ratio_vs_ar", "efficiency")}}
    lossless = [r for r in results if r["lossless"] and r["method"] != "ar"]
    if lossless:
        best = max(lossless, key=lambda r: r["step_compression"])
        out["best_lossless"] = {k: best[k] for k in ("method", "window", "init", "batch", "step_compression",
                                                     "latency_ratio_vs_ar", "efficiency", "accepted_histogram")}
    for a in auto:  # the automatic choice against the fastest grid cell at its batch
        grid = [r for r in results if r["batch"] == a["batch"] and r["schedule"] == "static"]
        fastest = min(grid, key=lambda r: r["wall_s"])
        out.setdefault("auto", []).append({
            "batch": a["batch"], "chosen": {k: a["auto"][k] for k in ("method", "window", "init")},
            "predicted_speedup": a["auto"]["speedup"], "latency_ratio_vs_ar": a["latency_ratio_vs_ar"],
            "tuning_s": a["auto"]["tuning_s"],
            "fastest_cell": {k: fastest[k] for k in ("method", "window", "init", "latency_ratio_vs_ar")},
            "vs_fastest_cell": fastest["wall_s"] / a["wall_s"]})
    return out


def schedule_summary(results: list[dict]) -> list[dict]:
    """Per configuration run with both schedules: images/s and useful fraction of each, and the
    continuous / static throughput ratio (one run, so the ratio shares the machine state)."""
    out = []
    results = [r for r in results if "auto" not in r]
    for c in (r for r in results if r["schedule"] == "continuous"):
        s = next((r for r in results if r["schedule"] == "static" and all(
            r[k] == c[k] for k in ("method", "window", "init", "batch", "q_storage"))), None)
        if s is None:
            continue
        out.append({k: c[k] for k in ("method", "window", "init", "batch", "images")} | {
            "static_images_per_s": s["images_per_s"], "continuous_images_per_s": c["images_per_s"],
            "speedup": c["images_per_s"] / s["images_per_s"], "static_useful_fraction": s["useful_fraction"],
            "continuous_useful_fraction": c["useful_fraction"],
            "continuous_steady_useful_fraction": c["steady_useful_fraction"],
            "refill_rows": c["refill_rows"], "host_ms_per_segment": c["host_ms_per_segment"]})
    return out


def plot_schedules(report: dict, path: str) -> None:
    """Images/s of static and continuous batching per configuration and batch, each bar labelled
    with its useful fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["schedules"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2))
    x = np.arange(len(rows))
    for off, key, label in ((-0.2, "static", "static batches"), (0.2, "continuous", "continuous batching")):
        vals = [r[f"{key}_images_per_s"] for r in rows]
        bars = ax.bar(x + off, vals, 0.4, label=label)
        for b, r in zip(bars, rows):
            ax.annotate(f"{r[f'{key}_useful_fraction']:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{r['method']} W={r['window']}\nB={r['batch']}" for r in rows], fontsize=7)
    ax.set_ylabel("images / s")
    ax.set_title("static vs continuous batching (bar labels: useful fraction of the batch's forwards)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{report['model']}, {report['images']} images per bar, {report['env']['device']}", fontsize=9)
    fig.tight_layout()
    atomic.write_file(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot(report: dict, path: str) -> None:
    """Step compression and latency ratio vs window: per method, the uniform init (solid) and the
    best init at each window (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if r["method"] != "ar" and r["schedule"] == "static" and "auto" not in r]
    batch = min(r["batch"] for r in results)
    results = [r for r in results if r["batch"] == batch]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, m in enumerate(sorted({r["method"] for r in results})):
        color = f"C{i}"
        rs = [r for r in results if r["method"] == m]
        windows = sorted({r["window"] for r in rs})
        uni = [next((r for r in rs if r["window"] == w and r["init"] == "uniform"), None) for w in windows]
        best = [max((r for r in rs if r["window"] == w), key=lambda r: r["step_compression"]) for w in windows]
        label = m + ("" if m in LOSSLESS else " (lossy)")
        for ax, key in zip(axes, ("step_compression", "latency_ratio_vs_ar")):
            if all(u is not None for u in uni):
                ax.plot(windows, [u[key] for u in uni], "o-", color=color, label=f"{label}, uniform init")
            ax.plot(windows, [b[key] for b in best], "s--", color=color, label=f"{label}, best init")
    cost = report["forward_cost"][str(batch)]
    ws = sorted(int(w) for w in cost if w != "1")
    axes[1].plot(ws, [1.0] * len(ws), ":", color="gray")
    for ax, title in zip(axes, ("step compression vs AR (NFE)", f"latency ratio AR / method (batch {batch})")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ws, [str(w) for w in ws])
        ax.set_xlabel("window (forward positions)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{report['model']} ({report['image_tokens']} tokens), {report['env']['device']}", fontsize=9)
    fig.tight_layout()
    atomic.write_file(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def markdown_table(report: dict) -> str:
    """README table: per method and window, the best init's compression and latency ratio."""
    results = [r for r in report["results"] if r["method"] != "ar" and r["schedule"] == "static" and "auto" not in r]
    windows = sorted({r["window"] for r in results})
    lines = ["| method | lossless | " + " | ".join(f"W={w}" for w in windows) + " |",
             "|---|---|" + "---|" * len(windows)]
    for m in sorted({r["method"] for r in results}, key=lambda m: list(RECIPES).index(m)):
        cells = []
        for w in windows:
            rs = [r for r in results if r["method"] == m and r["window"] == w]
            if not rs:
                cells.append("–")
                continue
            b = max(rs, key=lambda r: r["step_compression"])
            cells.append(f"{b['step_compression']:.2f}× / {b['latency_ratio_vs_ar']:.2f}× ({b['init']})")
        lines.append(f"| {m} | {'yes' if m in LOSSLESS else '**no**'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report(args, config, params, knobs, lantern, costs, results) -> dict:
    for r in results:  # latency ratio against AR at the same batch size
        ar = next(a for a in results if a["method"] == "ar" and a["batch"] == r["batch"] and a["schedule"] == "static"
                  and "auto" not in a)
        r["latency_ratio_vs_ar"] = ar["wall_s"] / r["wall_s"]
        ratio = costs[str(r["batch"])][str(r["window"])]["ratio"]
        r["forward_cost_ratio"] = ratio
        r["efficiency"] = r["latency_ratio_vs_ar"] / (r["step_compression"] / ratio)
    return {
        "model": args.model, "params": param_count(params), "image_tokens": config.num_image_tokens,
        "knobs": knobs, "seed": args.seed, "images": args.images,
        "lantern": {"k": args.lantern_k, "delta": args.lantern_delta} if lantern else None,
        "env": {"jax": jax.__version__, "backend": jax.default_backend(),
                "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(),
                "python": platform.python_version()},
        "forward_cost": costs,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "summary": summarize([r for r in results if r["schedule"] == "static"]),
        "schedules": schedule_summary(results),
        "results": results,
    }


def parser():
    from sjd_jax.cli.util import Parser, add_output_flags

    ap = Parser("sjd-jax bench", __doc__)
    ap.add_argument("--model", default="fashion-mnist",
                    help="a bundled model (fashion-mnist) or random:<LlamaGen preset> (random init)")
    ap.add_argument("--grid", type=int, default=16, help="random models: image token grid side")
    ap.add_argument("--vocab", type=int, default=None,
                    help="random models: vocabulary size (e.g. 184622, Emu3's, to measure q storage)")
    ap.add_argument("--methods", "--method", dest="methods", default=DEFAULT_METHODS,
                    help=f"comma-separated recipes ({', '.join(RECIPES)}); AR always runs as the baseline")
    ap.add_argument("--windows", "--window", dest="windows", default="8,16,32,64", help="comma-separated windows")
    ap.add_argument("--inits", "--init", dest="inits", default=",".join(INITS), help="comma-separated draft inits")
    ap.add_argument("--batch", "--batches", dest="batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--images", type=int, default=20, help="images per configuration")
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the model's (random: 4.0)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--lantern-k", type=int, default=8, help="lantern: latent neighbours per code")
    ap.add_argument("--lantern-delta", type=float, default=0.1, help="lantern: neighbour mass budget")
    ap.add_argument("--q-storage", default="auto",
                    help=f"comma-separated draft q storage modes ({', '.join(Q_STORAGE)}); each Jacobi run "
                         "is repeated per mode (XLA memory columns show the difference)")
    ap.add_argument("--chunk-elements", type=int, default=None,
                    help="largest [batch, slots, vocab] temporary of the target filters and draws (default 2^28)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per configuration (best kept)")
    ap.add_argument("--schedule", default="static",
                    help="comma-separated batch schedules (static, continuous): 'static,continuous' runs every "
                         "configuration both ways and compares images/s and useful fraction (and plots it)")
    ap.add_argument("--refill-rows", type=int, default=None,
                    help="continuous: rows refilled per prefill (default about batch/16)")
    ap.add_argument("--no-auto", action="store_true",
                    help="no auto row (by default each batch adds the automatic choice among the grid, run "
                         "like a cell: method/window=auto as sjd-jax generate picks)")
    ap.add_argument("--out", default="bench.json", help="JSON report path (default bench.json)")
    ap.add_argument("--plot", default=None, help="PNG plot path (default: the JSON path with .png)")
    ap.add_argument("--no-plot", action="store_true", help="no PNG plot (no matplotlib needed)")
    add_output_flags(ap)
    return ap


def main(argv=None) -> int:
    from sjd_jax.cli.util import run

    return run(parser(), argv, _main)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, e.g. 16,32; got {text!r}") from None


def _lists(args) -> dict:
    """The comma-separated flags as lists (each non-empty), sizes checked."""
    lists = {"methods": [m.strip() for m in args.methods.split(",") if m.strip()],
             "windows": _int_list(args.windows, "--windows"),
             "inits": [i.strip() for i in args.inits.split(",") if i.strip()],
             "batches": _int_list(args.batch, "--batch"),
             "storages": [q.strip() for q in args.q_storage.split(",") if q.strip()],
             "schedules": [x.strip() for x in args.schedule.split(",") if x.strip()]}
    for flag, key in (("--methods", "methods"), ("--inits", "inits"), ("--q-storage", "storages"),
                      ("--schedule", "schedules")):
        if not lists[key]:
            raise ValueError(f"{flag} is empty; give comma-separated names")
    for b in lists["batches"]:
        check_int("--batch sizes", b, 1, memory.MAX_ROWS)
    from sjd_jax.sampling.batching import SCHEDULES

    for x in lists["schedules"]:
        if x not in SCHEDULES:
            raise ValueError(f"--schedule takes {', '.join(SCHEDULES)} (comma-separated), got {x!r}")
    if args.refill_rows is not None:
        check_int("--refill-rows", args.refill_rows, 1, min(lists["batches"]))
    return lists


def _check_flags(args) -> tuple[dict, str | None]:
    """Flags before anything loads: (the lists, the plot path or None)."""
    lists = _lists(args)
    check_int("--images", args.images, 1, memory.MAX_ROWS)
    check_int("--repeat", args.repeat, 1, 1000)
    check_seed(args.seed, "--seed")
    if args.vocab is not None:
        check_int("--vocab", args.vocab, 2)
    check_chunk_elements(args.chunk_elements)
    for m in lists["methods"]:
        options(m)  # a known recipe
    plot_path = None if args.no_plot else (args.plot or os.path.splitext(args.out)[0] + ".png")
    for path in (args.out, plot_path):  # before the work, not after it
        if path:
            atomic.check_file_target(path)
    return lists, plot_path


def _check_runs(args, config, lists, knobs, lantern) -> None:
    """Every configuration is valid and fits at every batch size, before any of them runs."""
    configuration(config, "ar", 1, knobs)  # the AR baseline (the knobs' errors come first)
    for m, w, init, q in [(m, w, i, q) for m in lists["methods"] for w in lists["windows"] for i in lists["inits"]
                          for q in lists["storages"]]:
        spec = configuration(config, m, w, knobs, init, lantern, q, args.chunk_elements)[0]
        for b in lists["batches"]:  # sizes before work: every configuration must fit
            memory.require_sampler(spec, b)


def _setup(args):
    """Flags, model and sampler settings, all checked before the work: (lists, plot path, config,
    params or None, knobs, lantern or None)."""
    lists, plot_path = _check_flags(args)
    config, params, codebook, cfg_default = _load(args.model, args.grid, args.vocab)
    knobs = dict(cfg_scale=cfg_default if args.cfg_scale is None else args.cfg_scale,
                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    lantern = None
    if "lantern" in lists["methods"]:
        if codebook is None:
            raise ValueError("lantern needs a VQ codebook: use a bundled model, not random:")
        from sjd_jax.sampling.lantern import codebook_neighbours

        lantern = (codebook_neighbours(codebook, args.lantern_k), args.lantern_delta)
    _check_runs(args, config, lists, knobs, lantern)
    if plot_path:
        import matplotlib  # noqa: F401  (fail before hours of work, not after)
    return lists, plot_path, config, params, knobs, lantern


def _main(args) -> int:
    from sjd_jax.cli.util import Output, error

    report_to = Output(args)
    try:
        lists, plot_path, config, params, knobs, lantern = _setup(args)
    except ImportError:
        return error("sjd-jax bench", "the plot needs matplotlib: pip install 'sjd-jax[bench]' (or pass --no-plot)")
    t0 = time.perf_counter()
    if params is None:
        params = init_params(config, jax.random.key(0))
    init_s = time.perf_counter() - t0
    report_to.info(f"model {args.model}: {param_count(params) / 1e6:.1f}M params, {config.num_image_tokens} "
                   f"image tokens, load {init_s:.1f}s; backend {jax.default_backend()}")
    report = _run_all(args, config, params, knobs, lantern, lists, report_to)
    if plot_path:
        plot(report, plot_path)
        if report["schedules"]:
            plot_schedules(report, os.path.splitext(plot_path)[0] + "-schedule.png")
    report_to.result({"out": args.out, "plot": plot_path, "configurations": len(report["results"]),
                      "summary": report["summary"], "schedules": report["schedules"], "env": report["env"]},
                     markdown_table(report) + "\n" + json.dumps(report["summary"].get("best_lossless", {})))
    return 0


def _run_all(args, config, params, knobs, lantern, lists, report_to) -> dict:
    """Every configuration at every batch size; the report is rewritten after each one."""
    from tqdm import tqdm

    methods, windows, inits, storages = lists["methods"], lists["windows"], lists["inits"], lists["storages"]
    results, costs = [], {}
    runs = [("ar", 1, "uniform", "auto")] + [(m, w, i, q) for m in methods for w in windows
                                              for i in (["uniform"] if m == "jacobi" else inits) for q in storages]
    # One bar over all configurations (stderr): tokens/s and mean accepted tokens per iteration of
    # the last one. (No per-iteration callback: it would add host syncs to the timed loop.)
    per_batch = len(runs) * len(lists["schedules"]) + ("static" not in lists["schedules"])
    bar = tqdm(total=len(lists["batches"]) * per_batch, desc="bench", unit="run",
               file=sys.stderr,
               disable=not report_to.progress, dynamic_ncols=True)
    for b in lists["batches"]:
        costs[str(b)] = forward_cost(params, config, b, windows)
        report_to.info(f"  forward cost ratio W/1 at batch {b}: " + ", ".join(
            f"W={w}: {c['ratio']:.2f}" for w, c in costs[str(b)].items()))
        # AR runs static as every row's baseline, and with the other schedules too
        pairs = [(runs[0], "static")] + [(run, x) for run in runs for x in lists["schedules"]
                                         if (run, x) != (runs[0], "static")]
        for (m, w, init, q), sched in pairs:
            bar.set_description(f"bench {m} W={w} B={b} {sched}")
            if sched == "static":
                r = run_one(params, config, m, w, b, knobs, args.seed, args.repeat, args.images, init, lantern, q,
                            args.chunk_elements)
            else:
                r = run_continuous(params, config, m, w, b, knobs, args.seed, args.repeat, args.images, init,
                                   lantern, q, args.chunk_elements, args.refill_rows)
            jax.clear_caches()  # free each loop's code: hundreds of executables exhaust the mappings on CPU
            results.append(r)
            report = _report(args, config, params, knobs, lantern, costs, results)
            atomic.write_json(args.out, report)  # after every row: an interrupted run keeps what it measured
            bar.set_postfix(tok_s=f"{r['images'] * config.num_image_tokens / r['wall_s']:.0f}",
                            acc_per_iter=f"{r['mean_accepted_per_iteration']:.2f}", refresh=False)
            bar.update(1)
            report_to.info(f"  {m:15s} W={r['window']:<3d} {init:15s} B={b} {sched}: NFE {r['nfe_mean']:6.1f} "
                           f"(x{r['step_compression']:.2f}), {r['mean_accepted_per_iteration']:.2f} tok/it, "
                           f"{r['wall_s_per_image'] * 1e3:.0f} ms/image, useful {r['useful_fraction']:.2f}, "
                           f"q {q} (S={r['q_slots']}), XLA temp {r.get('xla_temp_mb', float('nan')):.0f} MiB")
        if not args.no_auto:
            r = auto_row(args, config, params, knobs, lists, b)
            if r is not None:
                results.append(r)
                report = _report(args, config, params, knobs, lantern, costs, results)
                atomic.write_json(args.out, report)
                a = r["auto"]
                report_to.info(f"  auto B={b}: {a['method']} W={a['window']} {a['init']} (predicted "
                               f"{a['speedup']:.2f}x vs AR, {a['tuning_s']:.1f}s to choose): measured "
                               f"{r['latency_ratio_vs_ar']:.2f}x, {r['wall_s_per_image'] * 1e3:.0f} ms/image")
    bar.close()
    return report


def auto_row(args, config, params, knobs, lists, batch: int) -> dict | None:
    """The automatic choice among this bench's grid (its methods, windows and inits) at ``batch``,
    chosen as ``sjd-jax generate`` chooses (fresh timings, no cache) and run like a grid cell: a
    row with its choice under ``"auto"``; None when no grid recipe is one auto can choose."""
    from sjd_jax.tuning import choose
    from sjd_jax.tuning.acceptance import choosable

    methods = [m for m in lists["methods"] if choosable(m)]
    if not methods:
        return None
    try:
        choice = choose(params, config, batch, knobs, methods=methods + ["ar"], windows=[1, *lists["windows"]],
                        inits=lists["inits"], use_cache=False)
    except ValueError:
        return None
    r = run_one(params, config, choice.method, choice.window, batch, knobs, args.seed, args.repeat, args.images,
                choice.init, None, "auto", args.chunk_elements)
    jax.clear_caches()
    return {**r, "auto": choice.as_dict()}


if __name__ == "__main__":
    sys.exit(main())

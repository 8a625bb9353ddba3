"""``sjd-jax bench-mesh``: batch-generation throughput on device meshes vs one device (JSON).

Every mesh generates the same items (item i: class ``i mod classes``, example id i) in batches of
``--batch-per-device`` rows per data shard (``--schedule``: continuous batching refills finished
rows, static runs chunks), after a warm-up pass that compiles. Each row reports
images/s, the speed-up over the first mesh, and whether its tokens equal the first mesh's (they
must: keys are per example). On a CPU, ``--cpu-devices`` splits the cores into fake devices: that
shows the shape of the scaling and the sharding overheads, not accelerator numbers.

example:
  sjd-jax bench-mesh --cpu-devices 8 --meshes "data=1;data=2;data=4;data=8;data=4,model=2;data=2,model=4"
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def run_mesh(bundle_name: str, shape: dict, options, images: int, bpd: int, seed: int, schedule: str = "auto",
             refill_rows: int | None = None) -> dict:
    """``images`` items on a ``shape`` mesh with the sampler ``options`` (``SamplerOptions``), in
    batches of ``bpd`` rows per data shard (``schedule``: ``sampling.batching``), after a warm-up
    pass over one batch (and one refill) that compiles."""
    import jax

    from sjd_jax.families import presets
    from sjd_jax.parallel import sharding
    from sjd_jax.sampling import acceptance_stats, generate_stream, resolve
    from sjd_jax.sampling.batching import default_refill_rows

    n = shape["data"] * shape["model"]
    mesh = sharding.make_mesh(shape, devices=jax.devices()[:n])
    bundle = presets.load(bundle_name, mesh=mesh)
    c = bundle.gpt_config
    knobs = bundle.preset.knobs()
    window = resolve(c, options, knobs).window  # the window that runs (checked before any compile)
    G = shape["data"] * min(bpd, -(-images // shape["data"]))  # padding clamped to the work
    R = default_refill_rows(G, shape["data"]) if refill_rows is None else min(refill_rows, G)
    labels = np.arange(images) % c.num_classes

    def go(k):
        st = generate_stream(bundle.gpt_params, c, labels[:k], seed, options, batch=G, schedule=schedule,
                             refill_rows=R, mesh=mesh, **knobs)
        return sorted(st, key=lambda it: it.index), st.stats

    t0 = time.perf_counter()
    go(min(images, G + R))  # compile + first-call costs
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    items, stats = go(images)
    wall = time.perf_counter() - t0
    tokens = np.stack([it.tokens for it in items])
    nfe = np.asarray([it.nfe for it in items])
    st = acceptance_stats(nfe, np.stack([it.committed for it in items]), c.num_image_tokens, window)
    sched = stats.as_dict()
    return {"mesh": shape, "devices": n, "global_batch": G, "schedule": sched["schedule"],
            "segments": sched["segments"], "useful_fraction": sched["useful_fraction"], "images": images,
            "warmup_s": round(warm, 3), "wall_s": round(wall, 3), "images_per_s": images / wall,
            "step_compression": st["step_compression"], "_tokens": tokens}


def parser():
    from sjd_jax.cli.util import Parser, add_output_flags, add_schedule_flags

    ap = Parser("sjd-jax bench-mesh", __doc__)
    ap.add_argument("--model", default="fashion-mnist", help="bundled model")
    ap.add_argument("--meshes", default="data=1;data=8",
                    help="semicolon-separated meshes data=D[,model=M]; the first is the baseline")
    ap.add_argument("--method", default="sjd", help="a lossless recipe (default sjd) or ar")
    ap.add_argument("--window", type=int, default=16, help="Jacobi window (default 16)")
    ap.add_argument("--images", type=int, default=64, help="images per mesh (default 64)")
    ap.add_argument("--batch-per-device", type=int, default=4, help="rows per data shard per chunk")
    ap.add_argument("--global-batch", type=int, default=None,
                    help="fix the chunk size instead (rows per data shard = this / data size)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--cpu-devices", type=int, default=None, help="split the CPU into this many devices")
    ap.add_argument("--out", default="bench-mesh.json", help="JSON report path (default bench-mesh.json)")
    add_schedule_flags(ap)
    add_output_flags(ap)
    return ap


def main(argv=None) -> int:
    from sjd_jax.cli.util import run

    return run(parser(), argv, _main)


def _meshes(text: str, global_batch: int | None) -> list[dict]:
    """``--meshes``: each ``data=D[,model=M]`` mesh, checked against the devices and ``--global-batch``."""
    import jax

    shapes = []
    for part_text in text.split(";"):
        sizes = {"data": 1, "model": 1}
        for part in part_text.split(","):
            name, _, val = part.partition("=")
            if name.strip() not in sizes or not val.strip().isdigit() or int(val) < 1:
                raise ValueError(f"bad mesh {part_text!r}: expected data=D[,model=M]")
            sizes[name.strip()] = int(val)
        if sizes["data"] * sizes["model"] > jax.device_count():
            raise ValueError(f"mesh {part_text!r} needs {sizes['data'] * sizes['model']} devices; "
                             f"{jax.device_count()} available (--cpu-devices N on a CPU)")
        if global_batch is not None and (global_batch < 1 or global_batch % sizes["data"]):
            raise ValueError(f"--global-batch {global_batch} is not a positive multiple of data={sizes['data']}")
        shapes.append(sizes)
    return shapes


def _check(args):
    """Flags before the work: (the sampler's ``SamplerOptions``, the meshes)."""
    from sjd_jax.io import atomic
    from sjd_jax.cli.util import check_refill_rows, set_cpu_devices
    from sjd_jax.families import presets
    from sjd_jax.parallel.memory import MAX_ROWS
    from sjd_jax.sampling import recipes
    from sjd_jax.core.validate import check_int, check_seed

    check_int("--images", args.images, 1, MAX_ROWS)
    check_int("--batch-per-device", args.batch_per_device, 1, MAX_ROWS)
    if args.global_batch is not None:
        check_int("--global-batch", args.global_batch, 1, MAX_ROWS)
    check_seed(args.seed, "--seed")
    set_cpu_devices(args.cpu_devices, exact=False)  # it takes the first N devices
    presets.get(args.model)
    if args.method not in recipes.LOSSLESS and args.method != "ar":
        raise ValueError(f"--method must be ar or a lossless recipe ({', '.join(recipes.LOSSLESS)})")
    options = recipes.options(args.method, args.window)
    atomic.check_file_target(args.out)  # before the work, not after it
    shapes = _meshes(args.meshes, args.global_batch)
    for shape in shapes:
        bpd = args.batch_per_device if args.global_batch is None else args.global_batch // shape["data"]
        G = shape["data"] * min(bpd, -(-args.images // shape["data"]))
        check_refill_rows(None if args.refill_rows is None else min(args.refill_rows, G), G, shape["data"])
    return options, shapes


def _main(args) -> int:
    import jax
    from tqdm import tqdm

    from sjd_jax.io import atomic
    from sjd_jax.parallel import sharding
    from sjd_jax.cli.util import Output

    report_to = Output(args)
    options, shapes = _check(args)
    rows = []
    base = None
    bar = tqdm(shapes, desc="bench-mesh", unit="mesh", file=sys.stderr, disable=not report_to.progress,
               dynamic_ncols=True)
    for shape in bar:
        bpd = args.batch_per_device if args.global_batch is None else args.global_batch // shape["data"]
        r = run_mesh(args.model, shape, options, args.images, bpd, args.seed, args.schedule, args.refill_rows)
        jax.clear_caches()
        tokens = r.pop("_tokens")
        if base is None:
            base = (tokens, r["images_per_s"])
        r["tokens_equal_baseline"] = bool(np.array_equal(tokens, base[0]))
        r["speedup_vs_baseline"] = r["images_per_s"] / base[1]
        rows.append(r)
        bar.set_postfix(images_s=f"{r['images_per_s']:.2f}", refresh=False)
        report_to.info(f"  mesh {shape}: {r['images_per_s']:.2f} images/s (x{r['speedup_vs_baseline']:.2f}), "
                       f"global batch {r['global_batch']} ({r['schedule']}, useful fraction "
                       f"{r['useful_fraction']:.2f}), tokens equal: {r['tokens_equal_baseline']}")
    report = {"model": args.model, "method": args.method, "window": args.window, "images": args.images,
              "schedule": args.schedule, "refill_rows": args.refill_rows,
              "batch_per_device": args.batch_per_device if args.global_batch is None else None,
              "global_batch": args.global_batch,
              "env": {"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
                      "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count()},
              "sharding_rules": sharding.RULES, "results": rows}
    atomic.write_json(args.out, report)
    report_to.result({"out": args.out, "results": rows, "env": report["env"]}, json.dumps(rows, indent=1))
    return 0 if all(r["tokens_equal_baseline"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

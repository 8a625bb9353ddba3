"""Anonymous-memory peak of saving a big params tree: disk-staged (``sjd_jax.convert.staging``) vs in RAM.

    python docs/scripts/bench_staging.py --gib 6 [--naive-gib 2] [--workdir DIR]

Builds a synthetic Llama-like float32 "gpt" params tree of about ``--gib`` GiB (embedding, output
head and ``n_layer`` 4096-wide layers), generated chunk-wise straight into ``Staging`` memmaps, saves
it with ``save_bounded`` and reports peak RssAnon (sampled at 100 Hz) during staging and saving.
The naive path (whole tree as in-RAM numpy arrays + ``checkpoint.save``) runs at ``--naive-gib``.
Each path runs in its own child process so peaks do not mix. Then the staged checkpoint is loaded
with ``checkpoint.load`` and a few leaves are compared bit for bit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB, GiB = 1 << 20, 1 << 30
CHUNK_ROWS = 512


def config_for(gib: float, dim: int = 4096, vocab: int = 32768):
    """A GPTConfig whose float32 params total about ``gib`` GiB (at least one layer)."""
    from sjd_jax import GPTConfig

    def make(n):
        return GPTConfig(vocab_size=vocab, dim=dim, n_layer=n, n_head=max(dim // 128, 1),
                         grid_size=(16, 16), num_classes=1000)

    one, two = param_bytes(make(1)), param_bytes(make(2))
    per_layer = two - one
    n = max(1, round((gib * GiB - (one - per_layer)) / per_layer))
    return make(n)


def param_bytes(config) -> int:
    import jax

    from sjd_jax import abstract_params

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_params(config)))


def leaf_chunks(seed: int, shape):
    """Deterministic pseudo-random float32 rows of a leaf, CHUNK_ROWS at a time (bounded memory)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if len(shape) == 1:
        yield 0, np.ones(shape, np.float32) + rng.standard_normal(shape, np.float32) * 0.01
        return
    for r in range(0, shape[0], CHUNK_ROWS):
        rows = min(CHUNK_ROWS, shape[0] - r)
        yield r, rng.standard_normal((rows, *shape[1:]), np.float32) * 0.02


def abstract_items(config):
    import jax

    from sjd_jax import abstract_params

    from sjd_jax.convert.tree import paths_of

    return list(paths_of(abstract_params(config)).items())


def run_staged(gib: float, work: Path) -> dict:
    from sjd_jax.io import checkpoint

    from sjd_jax.convert.staging import PeakAnon, Staging, save_bounded

    config = config_for(gib)
    out = work / "staged-ckpt"
    t0 = time.perf_counter()
    with Staging(out=out) as st:
        with PeakAnon() as p_stage:
            for i, (path, sds) in enumerate(abstract_items(config)):
                m = st.alloc(path, sds.shape)
                for r, chunk in leaf_chunks(i, sds.shape):
                    m[r:r + len(chunk)] = chunk
                del m
                st.seal(path)
            params = st.tree()
        t1 = time.perf_counter()
        with PeakAnon() as p_save:
            save_bounded(out, "gpt", config, params, force=True)
        t2 = time.perf_counter()
        # verify: load and compare a few leaves bit for bit against the staged files
        _, loaded = checkpoint.load(out)
        import jax
        import numpy as np

        flat_l = jax.tree_util.tree_flatten_with_path(loaded)[0]
        flat_s = dict(jax.tree_util.tree_flatten_with_path(params)[0])
        picks = [0, 1, len(flat_l) // 2, len(flat_l) - 1]
        same = all(np.array_equal(np.asarray(flat_l[k][1]), np.asarray(flat_s[flat_l[k][0]]))
                   for k in picks)
        del loaded, flat_l, flat_s, params
    staging_removed = not any(work.glob(".sjd-staging.tmp-*"))
    shutil.rmtree(out, ignore_errors=True)
    total = param_bytes(config)
    return {"path": "staged", "params_gib": round(total / GiB, 3), "n_layer": config.n_layer,
            "largest_leaf_mib": round(max(s.size * 4 for _, s in abstract_items(config)) / MiB, 1),
            "peak_anon_growth_mib_staging": round(p_stage.growth / MiB, 1),
            "peak_anon_growth_mib_save": round(p_save.growth / MiB, 1),
            "save_growth_over_params": round(p_save.growth / total, 3),
            "wall_s_staging": round(t1 - t0, 1), "wall_s_save": round(t2 - t1, 1),
            "load_bit_identical": bool(same), "staging_dir_removed": staging_removed}


def run_naive(gib: float, work: Path) -> dict:
    import numpy as np

    from sjd_jax.io import checkpoint

    from sjd_jax.convert.staging import PeakAnon
    from sjd_jax.convert.tree import nest

    config = config_for(gib)
    out = work / "naive-ckpt"
    t0 = time.perf_counter()
    with PeakAnon() as p_build:
        flat = {}
        for i, (path, sds) in enumerate(abstract_items(config)):
            a = np.empty(sds.shape, np.float32)
            for r, chunk in leaf_chunks(i, sds.shape):
                a[r:r + len(chunk)] = chunk
            flat[path] = a
        params = nest(flat)
        del flat
    t1 = time.perf_counter()
    with PeakAnon() as p_save:
        checkpoint.save(out, "gpt", config, params, force=True)
    t2 = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    total = param_bytes(config)
    return {"path": "naive", "params_gib": round(total / GiB, 3), "n_layer": config.n_layer,
            "peak_anon_growth_mib_build": round(p_build.growth / MiB, 1),
            "peak_anon_growth_mib_save": round(p_save.growth / MiB, 1),
            "peak_anon_total_mib": round(p_save.peak / MiB, 1),
            "wall_s_build": round(t1 - t0, 1), "wall_s_save": round(t2 - t1, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python docs/scripts/bench_staging.py", description=__doc__)
    ap.add_argument("--gib", type=float, default=6.0)
    ap.add_argument("--naive-gib", type=float, default=2.0, help="size for the in-RAM path (0: skip)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_child", choices=("staged", "naive"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        fn = run_staged if args._child == "staged" else run_naive
        print("RESULT " + json.dumps(fn(args.gib, Path(args.workdir))), flush=True)
        return 0
    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sjd-bench-staging-"))
    work.mkdir(parents=True, exist_ok=True)
    results, rc = [], 0
    try:
        runs = [("staged", args.gib)] + ([("naive", min(args.naive_gib, args.gib))] if args.naive_gib > 0 else [])
        for mode, gib in runs:
            proc = subprocess.run([sys.executable, __file__, "--_child", mode,
                                   "--gib", str(gib), "--workdir", str(work)],
                                  capture_output=True, text=True)
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                rc = 1
                results.append({"path": mode, "rc": proc.returncode, "stderr_tail": proc.stderr[-2000:]})
            else:
                results.append(json.loads(line[-1][7:]))
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())

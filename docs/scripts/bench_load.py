"""What verifying a checkpoint costs: load time with and without the per-leaf checksums and the
finite check, on a synthetic GPT of a LlamaGen size (default GPT-XL: 775M params, 3.1 GB float32).

    python docs/scripts/bench_load.py [--preset GPT-XL] [--repeat 3] [--workdir DIR] [--cold]

Writes the checkpoint once (``checkpoint.save``: its digest time is reported too), then loads it
``--repeat`` times each way in one process, alternating, and prints JSON: median seconds of
``load(verify=False)``, of ``load(verify=True)`` and of ``integrity.verify`` alone, and the ratio.
``--cold`` drops the page cache before every load (root, Linux): disk-bound loads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _drop_caches() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:  # noqa: the kernel's control file, not an output
            f.write("3\n")
        return True
    except OSError:
        return False


def main(argv=None) -> int:
    import jax
    import numpy as np

    from sjd_jax import GPTConfig
    from sjd_jax.io import checkpoint
    from sjd_jax.io import integrity
    from sjd_jax.core.model import abstract_params

    ap = argparse.ArgumentParser(prog="python docs/scripts/bench_load.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="GPT-XL")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every load")
    args = ap.parse_args(argv)
    config = GPTConfig.llamagen(args.preset)
    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sjd-bench-load-"))
    try:
        rng = np.random.default_rng(0)
        cpu = jax.devices("cpu")[0]
        params = jax.tree.map(lambda s: jax.device_put(rng.standard_normal(s.shape, np.float32) * 0.02, cpu),
                              abstract_params(config))
        nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
        t0 = time.perf_counter()
        integrity.record(params)
        digest_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        checkpoint.save(work / "ck", "gpt", config, params)
        save_s = time.perf_counter() - t0
        del params
        meta = checkpoint.read_meta(work / "ck")
        times = {"load_s": [], "load_verified_s": [], "verify_s": []}
        cold = args.cold and _drop_caches()
        for _ in range(args.repeat):
            for verify in (False, True):
                if cold:
                    _drop_caches()
                t0 = time.perf_counter()
                _, p = checkpoint.load(work / "ck", verify=verify)
                jax.block_until_ready(p)
                times["load_verified_s" if verify else "load_s"].append(time.perf_counter() - t0)
                if not verify:
                    t0 = time.perf_counter()
                    integrity.verify(p, meta["integrity"], work / "ck")
                    times["verify_s"].append(time.perf_counter() - t0)
                del p
        med = {k: statistics.median(v) for k, v in times.items()}
        print(json.dumps({
            "preset": args.preset, "params": int(nbytes // 4), "gib": round(nbytes / 2 ** 30, 2),
            "page_cache": "dropped before every load" if cold else "warm",
            "save_s": round(save_s, 2), "digest_at_save_s": round(digest_s, 2),
            **{k: round(v, 3) for k, v in med.items()},
            "verified_over_plain": round(med["load_verified_s"] / med["load_s"], 3),
            "verify_gb_per_s": round(nbytes / med["verify_s"] / 1e9, 2),
            "runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "jax": jax.__version__, "backend": jax.default_backend()}, indent=1))
        return 0
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

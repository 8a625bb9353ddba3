"""Peak resident memory of ``sjd-jax convert`` on a synthetic LlamaGen-format checkpoint.

    python docs/scripts/bench_memory.py --preset GPT-L [--format pt|safetensors] [--workdir DIR]

Writes a random fp32 state dict with the preset's exact key names and shapes, converts it in a
child process and reports the child's peak RSS against the checkpoint and largest-tensor sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def synthetic_state_dict(preset: str):
    import jax
    import numpy as np

    from sjd_jax import GPTConfig, abstract_params

    config = GPTConfig.llamagen(preset)
    p = abstract_params(config)["params"]
    rng = np.random.default_rng(0)

    def t(*shape):  # torch (out, in) layout
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    sd = {"tok_embeddings.weight": t(*p["tok_embeddings"]["embedding"].shape),
          "cls_embedding.embedding_table.weight": t(*p["cls_embedding"]["embedding"].shape),
          "norm.weight": np.ones(config.dim, np.float32),
          "output.weight": t(*p["output"]["kernel"].shape[::-1])}
    for i in range(config.n_layer):
        L = p[f"layers_{i}"]
        for name, sub in (("attention.wqkv", L["attention"]["wqkv"]), ("attention.wo", L["attention"]["wo"]),
                          ("feed_forward.w1", L["feed_forward"]["w1"]), ("feed_forward.w2", L["feed_forward"]["w2"]),
                          ("feed_forward.w3", L["feed_forward"]["w3"])):
            sd[f"layers.{i}.{name}.weight"] = t(*sub["kernel"].shape[::-1])
        sd[f"layers.{i}.attention_norm.weight"] = np.ones(config.dim, np.float32)
        sd[f"layers.{i}.ffn_norm.weight"] = np.ones(config.dim, np.float32)
    del jax
    return sd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python docs/scripts/bench_memory.py", description=__doc__)
    ap.add_argument("--preset", default="GPT-L")
    ap.add_argument("--format", choices=("pt", "safetensors"), default="pt")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sjd-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"c2i_{args.preset.upper().removeprefix('GPT-')}_256.{args.format}"
    sd = synthetic_state_dict(args.preset)
    total = sum(v.nbytes for v in sd.values())
    largest = max(v.nbytes for v in sd.values())
    if args.format == "pt":
        import torch

        torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, src)
    else:
        from safetensors.numpy import save_file

        save_file(sd, src)
    del sd
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sjd_jax.cli.main", "convert", "--family", "llamagen-c2i",
                             str(src), "--out", str(work / "out"), "--force", "--quiet"])
    peaks = {"RssAnon": 0, "RssFile": 0}  # anonymous memory vs reclaimable file-backed (mmap) pages
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                k, _, v = line.partition(":")
                if k in peaks:
                    peaks[k] = max(peaks[k], int(v.split()[0]) * 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    rc = proc.returncode
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    report = {"preset": args.preset, "format": args.format, "rc": rc, "checkpoint_bytes": total,
              "largest_tensor_bytes": largest, "peak_rss_bytes": peak, "peak_rss_anon_bytes": peaks["RssAnon"],
              "peak_rss_file_bytes": peaks["RssFile"], "wall_s": round(wall, 1),
              "peak_over_checkpoint": round(peak / total, 3),
              "peak_anon_over_checkpoint": round(peaks["RssAnon"] / total, 3),
              "budget_bytes(2*largest+output)": 2 * largest + total}
    print(json.dumps(report, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())

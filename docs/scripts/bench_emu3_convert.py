"""Peak anonymous memory of ``sjd-jax convert --family emu3`` on a synthetic Emu3-style snapshot.

    python docs/scripts/bench_emu3_convert.py --gib 4 [--workdir DIR]

Writes an HF-format snapshot like ``BAAI/Emu3-Gen-hf`` (``config.json`` with ``text_config``,
``vq_config`` and ``vocabulary_map``; float32 safetensors shards of about 512 MiB with their index,
as Emu3-Gen ships float32; ``tokenizer.json``): a 4096-wide Llama text model with 8 KV heads and
enough layers for ``--gib`` GiB, plus a tiny random vision tokenizer. Then runs the converter in a
child process and samples its RssAnon at 100 Hz. Prints JSON (params GiB, peak anonymous MiB, wall).
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

GiB, MiB = 1 << 30, 1 << 20
DIM, FFN, VOCAB = 4096, 14336, 65536


def write_snapshot(d: Path, gib: float) -> float:
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    per_layer = 4 * (2 * DIM * DIM + 2 * DIM * 1024 + 3 * DIM * FFN + 2 * DIM)
    fixed = 4 * (2 * VOCAB * DIM + DIM)
    layers = max(1, round((gib * GiB - fixed) / per_layer))
    vq_cfg = Emu3VQVAEConfig(codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32,
                             channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[1],
                             temporal_downsample_factor=4, hidden_size=64, num_attention_heads=1)
    special = ["<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<|extra_200|>", "<|extra_201|>",
               "<|image start|>", "<|image end|>", "<|image token|>"]
    vocab = {f"t{i}": i for i in range(VOCAB - 64 - len(special))}
    vocab.update({t: len(vocab) + i for i, t in enumerate(special)})
    vocab.update({f"<|visual token{i:06d}|>": VOCAB - 64 + i for i in range(64)})
    text = dict(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=FFN, num_hidden_layers=layers,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=9216,
                rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"text_config": text, "vq_config": vq_cfg.to_dict(),
                                               "vocabulary_map": vocab}))
    (d / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
        "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}}))
    rng = np.random.default_rng(0)
    rnd = lambda *s: rng.standard_normal(s, dtype=np.float32) * 0.02  # noqa: E731
    shards, cur, size, weight_map = [], {}, 0, {}

    def flush():
        nonlocal cur, size
        if cur:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(cur, str(d / name))
            weight_map.update({k: name for k in cur})
            shards.append(name)
            cur, size = {}, 0

    def add(k, a):
        nonlocal size
        cur[k] = a
        size += a.nbytes
        if size >= 512 * MiB:
            flush()

    add("text_model.model.embed_tokens.weight", rnd(VOCAB, DIM))
    for i in range(layers):
        p = f"text_model.model.layers.{i}."
        for n, s in (("self_attn.q_proj", (DIM, DIM)), ("self_attn.k_proj", (1024, DIM)),
                     ("self_attn.v_proj", (1024, DIM)), ("self_attn.o_proj", (DIM, DIM)),
                     ("mlp.gate_proj", (FFN, DIM)), ("mlp.up_proj", (FFN, DIM)), ("mlp.down_proj", (DIM, FFN))):
            add(p + n + ".weight", rnd(*s))
        add(p + "input_layernorm.weight", np.ones(DIM, np.float32))
        add(p + "post_attention_layernorm.weight", np.ones(DIM, np.float32))
    add("text_model.model.norm.weight", np.ones(DIM, np.float32))
    add("text_model.lm_head.weight", rnd(VOCAB, DIM))
    torch.manual_seed(0)
    for k, v in Emu3VQVAE(vq_cfg).state_dict().items():
        add("vqmodel." + k, v.numpy().astype(np.float32) if v.is_floating_point() else v.numpy())
    flush()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sum((d / s).stat().st_size for s in shards) / GiB


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python docs/scripts/bench_emu3_convert.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sjd-bench-emu3-", dir=args.workdir))
    try:
        snap_gib = write_snapshot(work / "Emu3-Gen-hf", args.gib)
        code = ("import sys; from sjd_jax.convert.staging import PeakAnon; from sjd_jax.convert.cli import main\n"
                "with PeakAnon() as pk:\n"
                f"    rc = main(['--family', 'emu3', {str(work / 'Emu3-Gen-hf')!r}, '--out', {str(work / 'out')!r},"
                " '--quiet'])\n"
                "print('PEAK', pk.growth, rc)")
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("PEAK")]
        if res.returncode or not line:
            print(res.stdout[-2000:], res.stderr[-2000:], file=sys.stderr)
            return 1
        _, peak, rc = line[0].split()
        print(json.dumps({"snapshot_gib": round(snap_gib, 2), "peak_anon_growth_mib": round(int(peak) / MiB),
                          "peak_over_snapshot": round(int(peak) / (snap_gib * GiB), 3), "convert_rc": int(rc),
                          "wall_s": round(wall, 1)}, indent=1))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

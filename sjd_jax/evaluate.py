"""``sjd-jax eval``: quality metrics of the bundled Fashion-MNIST model.

(a) VQ reconstruction PSNR on the test split; (b) AR validation NLL (bits per token) on the test
split's VQ tokens; (c) class accuracy of generated samples under the bundled CNN classifier, and the
Fréchet distance between its penultimate features of generated and real test images. Every method
is evaluated on the same number of samples with 95% confidence intervals (Wilson for accuracy,
bootstrap over generated samples for the Fréchet distance); lossless methods must agree with AR
within sampling noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return float(c - h), float(c + h)


def sample_images(bundle, labels: np.ndarray, method: str, window: int, knobs: dict, seed: int,
                  batch: int, quiet: bool = False, drafting: dict | None = None):
    """Generate one image per label (batched, keys by absolute example id) -> (uint8 [n, 28, 28], stats).

    ``method``: ar / jacobi / sjd; ``drafting``: generate's coupling/init/tree/lantern options."""
    import jax.numpy as jnp
    from tqdm import tqdm

    from .data import from_model_range
    from .sampling import generate
    from .vq import decode_tokens

    c = bundle.gpt_config
    imgs, nfe, committed = [], [], []
    for i in tqdm(range(0, len(labels), batch), desc=f"eval {method}", file=sys.stderr, disable=quiet):
        y = labels[i:i + batch]
        out = generate(bundle.gpt_params, c, jnp.asarray(y), seed, method=method,
                       window=window if method != "ar" else 1, example_ids=np.arange(i, i + len(y)), **knobs,
                       **(drafting or {}))
        x = decode_tokens(bundle.vq_params, bundle.vq_config, out.tokens, c.grid_size)
        imgs.append(from_model_range(np.asarray(x)))
        nfe.append(np.asarray(out.nfe))
        committed.append(np.asarray(out.committed))
    from .sampling.loop import acceptance_stats

    w = window if method != "ar" else 1
    return np.concatenate(imgs), acceptance_stats(np.concatenate(nfe), np.concatenate(committed),
                                                  c.num_image_tokens, w)


def agreement(a: dict, b: dict, real_feats: np.ndarray, n_perm: int = 200, seed: int = 0) -> dict:
    """Do two methods' samples agree within sampling noise? Two-sided p-values of (i) a two-proportion
    z-test on class accuracy and (ii) a permutation test on the Fréchet-distance difference (pool both
    feature sets, split at random, recompute FD_a - FD_b)."""
    from math import erfc, sqrt

    from .classifier import frechet_distance

    ka, kb, na, nb = a["_correct"], b["_correct"], a["n"], b["n"]
    p = (ka + kb) / (na + nb)
    se = sqrt(max(p * (1 - p) * (1 / na + 1 / nb), 1e-300))
    z = (ka / na - kb / nb) / se
    fa, fb = a["_feats"], b["_feats"]
    obs = frechet_distance(fa, real_feats) - frechet_distance(fb, real_feats)
    pool = np.concatenate([fa, fb])
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_perm):
        idx = rng.permutation(len(pool))
        null.append(frechet_distance(pool[idx[:len(fa)]], real_feats)
                    - frechet_distance(pool[idx[len(fa):]], real_feats))
    p_fd = (1 + np.sum(np.abs(null) >= abs(obs))) / (n_perm + 1)
    return {"accuracy_diff": ka / na - kb / nb, "accuracy_p_value": float(erfc(abs(z) / sqrt(2))),
            "fd_diff": float(obs), "fd_permutation_p_value": float(p_fd)}


def evaluate_samples(cls_params, images: np.ndarray, labels: np.ndarray, real_feats: np.ndarray,
                     n_boot: int = 200, seed: int = 0) -> dict:
    """Accuracy with a Wilson 95% interval; FD with a bootstrap 95% interval (resampling the
    generated set; the bootstrap FD is biased upward, so use ``agreement`` to compare methods)."""
    from . import classifier

    pred = classifier.predict(cls_params, images)
    k = int((pred == labels).sum())
    feats = classifier.embed(cls_params, images)
    fd = classifier.frechet_distance(feats, real_feats)
    rng = np.random.default_rng(seed)
    boots = [classifier.frechet_distance(feats[rng.integers(0, len(feats), len(feats))], real_feats)
             for _ in range(n_boot)]
    return {"n": len(labels), "class_accuracy": k / len(labels), "class_accuracy_ci95": wilson(k, len(labels)),
            "frechet_distance": fd, "frechet_distance_ci95": [float(np.percentile(boots, 2.5)),
                                                             float(np.percentile(boots, 97.5))],
            "_correct": k, "_feats": feats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sjd-jax eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--methods", default="ar,sjd", help="comma-separated recipes (see sjd-jax generate --help)")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--cfg-scale", type=float, default=None)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--skip-nll", action="store_true", help="skip (a) and (b) (slow on CPU)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path("eval.json"))
    ap.add_argument("--quiet", action="store_true")
    from .sampling import recipes

    recipes.add_arguments(ap)  # applied to every non-AR method
    args = ap.parse_args(argv)
    from . import classifier, data, presets
    from .sampling.generate import check_generate_options
    from .vq import codebook_vectors

    try:
        preset = presets.get(args.model)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        knobs = preset.knobs(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k)
        if args.n_per_class < 2 or args.batch < 1:
            raise ValueError("--n-per-class must be >= 2 and --batch >= 1")
        bundle = presets.load(args.model)
        drafting = {}
        for m in methods:
            kind = recipes.recipe(m, args.window)["method"]
            kw = {} if kind == "ar" else recipes.from_args(
                args, m, args.window, codebook_vectors(bundle.vq_params, bundle.vq_config))
            drafting[m] = (kind, kw)
            check_generate_options(bundle.gpt_config, kind, args.window if kind != "ar" else 1, knobs, kw)
        test_x, test_y = data.load("test", args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"sjd-jax eval: error: {e}", file=sys.stderr)
        return 2
    cls_params = classifier.load(preset.directory / "classifier")
    report = {"model": args.model, "knobs": knobs, "window": args.window, "seed": args.seed,
              "drafting": {m: recipes.describe(kw, args) for m, (_, kw) in drafting.items()},
              "classifier_test_accuracy": float((classifier.predict(cls_params, test_x) == test_y).mean())}
    if not args.skip_nll:
        from .train import encode_dataset, nll_bits_per_token, psnr

        x = data.to_model_range(test_x)
        report["vq_psnr_test_db"] = psnr(bundle.vq_params, bundle.vq_config, x)
        tokens = encode_dataset(bundle.vq_params, bundle.vq_config, x)
        report["ar_nll_bits_per_token_test"] = nll_bits_per_token(bundle.gpt_params, bundle.gpt_config,
                                                                  tokens, test_y)
    real = classifier.embed(cls_params, test_x)
    labels = np.repeat(np.arange(len(preset.class_names), dtype=np.int32), args.n_per_class)
    report["methods"] = {}
    for m in methods:
        t0 = time.perf_counter()
        kind, kw = drafting[m]
        imgs, st = sample_images(bundle, labels, kind, args.window, knobs, args.seed, args.batch, args.quiet, kw)
        r = {**st, **evaluate_samples(cls_params, imgs, labels, real), "wall_s": time.perf_counter() - t0}
        report["methods"][m] = r
        print(f"{m}: accuracy {r['class_accuracy']:.3f} {np.round(r['class_accuracy_ci95'], 3).tolist()}, "
              f"FD {r['frechet_distance']:.2f} {np.round(r['frechet_distance_ci95'], 2).tolist()}, "
              f"step compression {r['step_compression']:.2f}x", file=sys.stderr)
    base = report["methods"].get("ar")
    for m, r in report["methods"].items():
        if base is not None and m != "ar":
            r["agreement_with_ar"] = agreement(base, r, real)
            print(f"{m} vs ar: {r['agreement_with_ar']}", file=sys.stderr)
    for r in report["methods"].values():
        r.pop("_correct"), r.pop("_feats")
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, args.json)
    print(json.dumps({k: v for k, v in report.items() if k != "methods"}))
    return 0

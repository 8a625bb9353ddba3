"""``sjd-jax eval``: quality metrics of the bundled Fashion-MNIST model.

(a) VQ reconstruction PSNR on the test split; (b) AR validation NLL (bits per token) on the test
split's VQ tokens; (c) class accuracy of generated samples under the bundled CNN classifier, and the
Fréchet distance between its penultimate features of generated and real test images. Every method
is evaluated on the same number of samples with 95% confidence intervals (Wilson for accuracy,
bootstrap over generated samples for the Fréchet distance); lossless methods must agree with AR
within sampling noise.
"""

from __future__ import annotations

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


def sample_images(bundle, labels: np.ndarray, sampler, seed: int, batch: int, quiet: bool = False,
                  schedule: str = "auto", refill_rows: int | None = None):
    """Generate one image per label (batched, keys by absolute example id) -> (uint8 [n, 28, 28], stats).

    ``sampler``: a ``cliutil.SamplerChoice`` (recipe, options, knobs, lantern); ``schedule`` /
    ``refill_rows``: the batch schedule (``sampling.batching``; the images do not depend on it).
    Unless ``quiet``, a progress bar on stderr shows images/s and mean accepted tokens per iteration."""
    import jax.numpy as jnp
    from tqdm import tqdm

    from sjd_jax.fashion.data import from_model_range
    from sjd_jax.sampling import acceptance_stats, generate_stream
    from sjd_jax.core.vq import decode_tokens

    c = bundle.gpt_config
    N = c.num_image_tokens
    B = min(batch, len(labels))
    stream = generate_stream(bundle.gpt_params, c, np.asarray(labels), seed, batch=B, schedule=schedule,
                             refill_rows=None if refill_rows is None else min(refill_rows, B), ordered=True,
                             **sampler.keywords())
    imgs, items, pending, iters = [], [], [], 0
    with tqdm(total=len(labels), desc=f"eval {sampler.name}", unit="img", file=sys.stderr, disable=quiet,
              dynamic_ncols=True) as bar:
        for item in stream:
            items.append(item)
            pending.append(item.tokens)
            if len(pending) == batch or len(items) == len(labels):  # decode in batches, in order
                x = decode_tokens(bundle.vq_params, bundle.vq_config, jnp.asarray(np.stack(pending)), c.grid_size)
                imgs.append(from_model_range(np.asarray(x)))
                pending = []
            bar.update(1)
            iters += item.nfe - 1  # row iterations so far
            bar.set_postfix(acc_per_iter=f"{len(items) * (N - 1) / max(iters, 1):.2f}", refresh=False)
    nfe = np.asarray([it.nfe for it in items])
    st = acceptance_stats(nfe, np.stack([it.committed for it in items]), N, sampler.window)
    st["schedule"] = stream.stats.as_dict()
    return np.concatenate(imgs), st


def agreement(a: dict, b: dict, real_feats: np.ndarray, n_perm: int = 200, seed: int = 0) -> dict:
    """Do two methods' samples agree within sampling noise? Two-sided p-values of (i) a two-proportion
    z-test on class accuracy and (ii) a permutation test on the Fréchet-distance difference (pool both
    feature sets, split at random, recompute FD_a - FD_b)."""
    from math import erfc, sqrt

    from sjd_jax.fashion.classifier import frechet_distance

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
    from sjd_jax.fashion import classifier

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


def parser():
    from sjd_jax.cli.util import Parser, add_output_flags, add_schedule_flags
    from sjd_jax.sampling import recipes

    ap = Parser("sjd-jax eval", __doc__)
    ap.add_argument("--model", default="fashion-mnist", help="bundled model (default fashion-mnist)")
    ap.add_argument("--methods", "--method", dest="methods", default="ar,sjd",
                    help="comma-separated recipes (default ar,sjd; see sjd-jax generate --help)")
    ap.add_argument("--window", type=int, default=16, help="Jacobi window (default 16)")
    ap.add_argument("--n", "--n-per-class", dest="n_per_class", type=int, default=100,
                    help="samples per class and method (default 100, at least 2)")
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the model's")
    ap.add_argument("--temperature", type=float, default=None, help="default: the model's")
    ap.add_argument("--top-k", type=int, default=None, help="default: the model's")
    ap.add_argument("--top-p", type=float, default=None, help="default: the model's")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--batch", type=int, default=250, help="rows sampled at once (default 250)")
    ap.add_argument("--skip-nll", action="store_true", help="skip (a) and (b) (slow on CPU)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="Fashion-MNIST idx files (default: the Debian package's path)")
    ap.add_argument("--out", type=Path, default=Path("eval.json"), help="JSON report path (default eval.json)")
    add_output_flags(ap, json_legacy_dest="out")
    add_schedule_flags(ap)
    recipes.add_arguments(ap)  # applied to every non-AR method
    return ap


def main(argv=None) -> int:
    from sjd_jax.cli.util import run

    return run(parser(), argv, _main)


def _check(args, preset) -> list[str]:
    """Flags and sizes, before anything loads; returns the method names."""
    import jax

    from sjd_jax.cli.util import check_refill_rows
    from sjd_jax.io import atomic
    from sjd_jax.parallel import memory
    from sjd_jax.sampling import recipes
    from sjd_jax.core.validate import check_int, check_seed

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty; give comma-separated recipes, e.g. ar,sjd")
    check_int("--n (confidence intervals need 2 samples per class)", args.n_per_class, 2, memory.MAX_ROWS)
    check_int("--batch", args.batch, 1, memory.MAX_ROWS)
    check_refill_rows(args.refill_rows, args.batch)
    check_seed(args.seed, "--seed")
    n_total = args.n_per_class * len(preset.class_names)
    # host arrays kept per sample and method: the image, its classifier features, NFE and commits
    per_sample = 28 * 28 + 128 * 4 + 4 * (1 + 256)
    memory.require(n_total * per_sample * len(methods), f"eval of {n_total} samples x {len(methods)} methods",
                   jax.devices("cpu")[0], hint="use a smaller --n")  # host arrays: the host's RAM
    for m in methods:  # names before any loading
        recipes.options(m, args.window)
    atomic.check_file_target(args.out)
    return methods


def _samplers(args, bundle, methods, knobs) -> dict:
    """Each method's validated sampler; the drafting flags apply to every method but ar."""
    from sjd_jax.cli.util import sampler_choice
    from sjd_jax.sampling import recipes
    from sjd_jax.core.vq import codebook_vectors

    codebook = codebook_vectors(bundle.vq_params, bundle.vq_config)
    return {m: sampler_choice(args, m, args.window, bundle.gpt_config, knobs, codebook,
                              flags=recipes.options(m).method != "ar") for m in methods}


def _model_metrics(args, bundle, test_x, test_y) -> dict:
    """(a) VQ reconstruction PSNR and (b) the AR validation NLL on the test split."""
    from sjd_jax.fashion import data
    from sjd_jax.fashion.train import encode_dataset, nll_bits_per_token, psnr

    x = data.to_model_range(test_x)
    tokens = encode_dataset(bundle.vq_params, bundle.vq_config, x)
    return {"vq_psnr_test_db": psnr(bundle.vq_params, bundle.vq_config, x),
            "ar_nll_bits_per_token_test": nll_bits_per_token(bundle.gpt_params, bundle.gpt_config, tokens, test_y)}


def _main(args) -> int:
    from sjd_jax.io import atomic
    from sjd_jax.fashion import classifier
    from sjd_jax.fashion import data
    from sjd_jax.families import presets
    from sjd_jax.cli.util import Output

    report_to = Output(args)
    preset = presets.get(args.model)
    knobs = preset.knobs(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p)
    methods = _check(args, preset)
    args.batch = min(args.batch, args.n_per_class * len(preset.class_names))  # padding clamped to the work
    bundle = presets.load(args.model)
    samplers = _samplers(args, bundle, methods, knobs)
    test_x, test_y = data.load("test", args.data_dir)
    cls_params = classifier.load(preset.directory / "classifier")
    report = {"model": args.model, "knobs": knobs, "window": args.window, "seed": args.seed,
              "drafting": {m: s.drafting for m, s in samplers.items()},
              "classifier_test_accuracy": float((classifier.predict(cls_params, test_x) == test_y).mean())}
    if not args.skip_nll:
        report.update(_model_metrics(args, bundle, test_x, test_y))
    real = classifier.embed(cls_params, test_x)
    labels = np.repeat(np.arange(len(preset.class_names), dtype=np.int32), args.n_per_class)
    report["methods"] = {m: _evaluate_method(args, bundle, s, cls_params, labels, real, report_to)
                         for m, s in samplers.items()}
    base = report["methods"].get("ar")
    for m, r in report["methods"].items():
        if base is not None and m != "ar":
            r["agreement_with_ar"] = agreement(base, r, real)
            report_to.info(f"{m} vs ar: {r['agreement_with_ar']}")
    for r in report["methods"].values():
        r.pop("_correct"), r.pop("_feats")
    atomic.write_json(args.out, report)
    report_to.result({**report, "out": str(args.out)},
                     f"wrote {args.out}: " + "; ".join(
                         f"{m} accuracy {r['class_accuracy']:.3f}, FD {r['frechet_distance']:.2f}, "
                         f"step compression {r['step_compression']:.2f}x" for m, r in report["methods"].items()))
    return 0


def _evaluate_method(args, bundle, sampler, cls_params, labels, real, report_to) -> dict:
    """(c) One method's samples: acceptance statistics, class accuracy and Fréchet distance."""
    t0 = time.perf_counter()
    imgs, st = sample_images(bundle, labels, sampler, args.seed, args.batch, args.quiet, args.schedule,
                             args.refill_rows)
    r = {**st, **evaluate_samples(cls_params, imgs, labels, real), "wall_s": time.perf_counter() - t0}
    report_to.info(f"{sampler.name}: accuracy {r['class_accuracy']:.3f} "
                   f"{np.round(r['class_accuracy_ci95'], 3).tolist()}, FD {r['frechet_distance']:.2f} "
                   f"{np.round(r['frechet_distance_ci95'], 2).tolist()}, step compression "
                   f"{r['step_compression']:.2f}x, {r['mean_accepted_per_iteration']:.2f} tokens per iteration")
    return r

"""The bundled ``fashion-mnist`` model: its configs, training recipe, and the train CLIs.

Reproduce the shipped weights (2 CPU cores; see README for times):

    sjd-jax train-vq --out runs/fm-vq
    sjd-jax train-ar --vq runs/fm-vq/model --out runs/fm-ar
    sjd-jax train-classifier --out runs/fm-cls

then copy ``runs/fm-vq/model``, ``runs/fm-ar/model`` and ``runs/fm-cls/model`` to
``sjd_jax/assets/fashion_mnist/{vq,gpt,classifier}``.
"""

from __future__ import annotations

from pathlib import Path

from sjd_jax.core.config import GPTConfig
from sjd_jax.fashion.train import TrainConfig
from sjd_jax.core.vq import VQConfig

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist"  # sjd_jax/assets

# Grayscale VQ-16-family tokenizer, downsampling 2: 32x32 (28x28 zero-padded) -> 16x16 = 256 tokens.
VQ_CONFIG = VQConfig(codebook_size=256, codebook_embed_dim=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                     z_channels=32, in_channels=1, out_channels=1, norm_groups=32)
# LlamaGen-architecture class-conditional GPT (2D RoPE, SwiGLU, 1 class token + null class for CFG).
GPT_CONFIG = GPTConfig(vocab_size=256, grid_size=(16, 16), dim=192, n_layer=6, n_head=3, num_classes=10)
VQ_TRAIN = TrainConfig(steps=600, batch=64, lr=1e-3, warmup=100, ckpt_every=100)
AR_TRAIN = TrainConfig(steps=1500, batch=32, lr=1e-3, warmup=100, weight_decay=0.05, ckpt_every=100)


def _common(ap):
    from sjd_jax.cli.util import add_output_flags

    ap.add_argument("--out", type=Path, required=True, help="run directory (resumes if it holds a train state)")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    ap.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST idx files (default: Debian path)")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="run at most this many steps now, then checkpoint (rerun to resume)")
    ap.add_argument("--seed", type=int, default=0,
                    help="init and data-order seed (default 0, the shipped weights'; keep it when resuming)")
    add_output_flags(ap)


def _recipe(base: TrainConfig, steps, seed: int = 0):
    from sjd_jax.core.validate import check_int, check_seed

    if steps is not None:
        check_int("--steps", steps, 1, 10 ** 9)
    check_seed(seed, "--seed")
    kw = {**base.__dict__, "seed": seed}
    if steps is not None:
        kw["steps"] = steps
    return TrainConfig(**kw)


def _check_stop_after(stop_after):
    from sjd_jax.core.validate import check_int

    if stop_after is not None:
        check_int("--stop-after", stop_after, 1)


def main_train_vq(argv=None) -> int:
    from sjd_jax.cli.util import Parser, run

    ap = Parser("sjd-jax train-vq", "Train the Fashion-MNIST VQ tokenizer.\n\nexample:\n"
                                    "  sjd-jax train-vq --out runs/fm-vq")
    _common(ap)
    return run(ap, argv, _train_vq)


def _train_vq(args) -> int:
    from sjd_jax.fashion import data
    from sjd_jax.cli.util import Output
    from sjd_jax.fashion.train import check_run_dir, psnr, train_vq

    t = _recipe(VQ_TRAIN, args.steps, args.seed)
    _check_stop_after(args.stop_after)
    check_run_dir(args.out)  # before the work, not after it
    train, _ = data.load("train", args.data_dir)
    test, _ = data.load("test", args.data_dir)
    params, done = train_vq(args.out, VQ_CONFIG, t, data.to_model_range(train), quiet=args.quiet,
                            stop_after=args.stop_after)
    report = Output(args)
    res = {"command": "train-vq", "out": str(args.out), "model": str(args.out / "model"), "done": bool(done),
           "steps": t.steps}
    if not done:
        report.result(res, f"stopped before step {t.steps}; rerun the same command to resume")
        return 0
    res["vq_psnr_test_db"] = float(psnr(params, VQ_CONFIG, data.to_model_range(test)))
    report.result(res, f"VQ test PSNR {res['vq_psnr_test_db']:.2f} dB -> {args.out / 'model'}")
    return 0


def main_train_ar(argv=None) -> int:
    from sjd_jax.cli.util import Parser, run

    ap = Parser("sjd-jax train-ar", "Train the class-conditional GPT over the VQ's tokens.\n\nexample:\n"
                                    "  sjd-jax train-ar --vq runs/fm-vq/model --out runs/fm-ar")
    _common(ap)
    ap.add_argument("--vq", type=Path, required=True, help="trained VQ checkpoint (train-vq's out/model)")
    return run(ap, argv, _train_ar)


def _train_ar(args) -> int:
    import numpy as np

    from sjd_jax.io import atomic
    from sjd_jax.io import checkpoint
    from sjd_jax.fashion import data
    from sjd_jax.cli.util import Output
    from sjd_jax.fashion.train import check_run_dir, encode_dataset, nll_bits_per_token, train_gpt

    t = _recipe(AR_TRAIN, args.steps, args.seed)
    _check_stop_after(args.stop_after)
    check_run_dir(args.out)
    kind = checkpoint.kind_of(args.vq)
    if kind != "vq":
        raise ValueError(f"--vq {args.vq} {'is not an sjd-jax checkpoint' if kind is None else f'holds a {kind!r} checkpoint'}; "
                         f"give a VQ: train-vq's RUN/model")
    vq_config, vq_params = checkpoint.load(args.vq)
    if vq_config.in_channels != 1 or vq_config.codebook_size != GPT_CONFIG.vocab_size:
        raise ValueError(f"--vq {args.vq}: a {vq_config.in_channels}-channel VQ with {vq_config.codebook_size} codes; "
                         f"the Fashion-MNIST GPT needs a 1-channel VQ with {GPT_CONFIG.vocab_size} codes (train-vq's)")
    train, y_train = data.load("train", args.data_dir)
    test, y_test = data.load("test", args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "tokens.npz"
    try:
        with np.load(cache) as z:
            tok_train, tok_test = z["train"], z["test"]
        if tok_train.shape != (len(train), GPT_CONFIG.num_image_tokens):
            raise ValueError("stale token cache")
    except Exception:  # none yet, or damaged: tokenize once (deterministic), reused on resume
        tok_train = encode_dataset(vq_params, vq_config, data.to_model_range(train))
        tok_test = encode_dataset(vq_params, vq_config, data.to_model_range(test))
        atomic.write_file(cache, lambda f: np.savez(f, train=tok_train, test=tok_test))
    params, done = train_gpt(args.out, GPT_CONFIG, t, tok_train, y_train, quiet=args.quiet,
                             stop_after=args.stop_after)
    report = Output(args)
    res = {"command": "train-ar", "out": str(args.out), "model": str(args.out / "model"), "done": bool(done),
           "steps": t.steps}
    if not done:
        report.result(res, f"stopped before step {t.steps}; rerun the same command to resume")
        return 0
    res["ar_nll_bits_per_token_test"] = float(nll_bits_per_token(params, GPT_CONFIG, tok_test, y_test))
    report.result(res, f"AR validation NLL {res['ar_nll_bits_per_token_test']:.4f} bits/token -> {args.out / 'model'}")
    return 0


def main_train_classifier(argv=None) -> int:
    from sjd_jax.cli.util import Parser, add_output_flags, run

    ap = Parser("sjd-jax train-classifier", "Train the evaluation CNN on real Fashion-MNIST.\n\nexample:\n"
                                            "  sjd-jax train-classifier --out runs/fm-cls")
    ap.add_argument("--out", type=Path, required=True, help="run directory (the classifier goes to OUT/model)")
    ap.add_argument("--epochs", type=int, default=3, help="passes over the training set (default 3)")
    ap.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST idx files (default: Debian path)")
    ap.add_argument("--seed", type=int, default=0, help="init and data-order seed (default 0)")
    add_output_flags(ap)
    return run(ap, argv, _train_classifier)


def _train_classifier(args) -> int:
    from sjd_jax.io import atomic
    from sjd_jax.io import checkpoint
    from sjd_jax.fashion import classifier
    from sjd_jax.fashion import data
    from sjd_jax.cli.util import Output
    from sjd_jax.core.validate import check_int, check_seed

    check_int("--epochs", args.epochs, 1, 10 ** 4)
    check_seed(args.seed, "--seed")
    atomic.check_dir_target(args.out / "model", True, checkpoint.is_checkpoint, "sjd-jax checkpoint")
    x, y = data.load("train", args.data_dir)
    xt, yt = data.load("test", args.data_dir)
    params = classifier.train(x, y, epochs=args.epochs, seed=args.seed, quiet=args.quiet)
    acc = float((classifier.predict(params, xt) == yt).mean())
    classifier.save(args.out / "model", params)
    Output(args).result({"command": "train-classifier", "out": str(args.out), "model": str(args.out / "model"),
                         "epochs": args.epochs, "classifier_test_accuracy": acc},
                        f"classifier test accuracy {acc:.4f} -> {args.out / 'model'}")
    return 0

"""``sjd-jax generate``: sample a class grid from a bundled or converted model and write a PNG.

With no arguments: the bundled ``fashion-mnist`` model, all 10 classes, 4 samples each, SJD with
window 16, written to ``fashion-mnist.png``; prints NFE and the step compression against AR.

Batch mode (``--out-dir DIR``): the same items (n per class) streamed to ``DIR`` as one PNG each
plus ``tokens.npy``, over every device (``--mesh data=D,model=M``; default all on data), in chunks
of ``--batch-per-device`` rows per data shard; rerunning skips finished items. On a multi-host job
run the same command on every host (``jax.distributed`` starts when the environment says so); only
process 0 writes. Tokens do not depend on the device count or the chunking.

Text-to-image models (``--model`` one of sjd_jax.families.pipelines.TEXT_MODELS) take a converted checkpoint
(``--ckpt DIR``, see ``sjd-jax convert``) and ``--prompt``: one grid column per prompt, ``--n`` rows.

Output: a progress bar on stderr (tokens/s, mean accepted tokens per iteration) and one summary line
on stdout; ``--quiet`` prints neither, ``--json`` prints the stats object (what ``--stats-json``
writes) as the only stdout output. Errors are one line on stderr with exit status 2.

examples:
  sjd-jax generate --class 0 3 --n 8 --method sjd-pac --window 32
  sjd-jax generate --model llamagen-c2i --ckpt ckpt/c2i_B_256 --class 207 360 --n 2   # DIR/gpt + DIR/vq
  sjd-jax generate --model janus-pro-1b --prompt "a red fox"   # fetched from the hub, converted once
  sjd-jax generate --model lumina-mgpt-7b-768 --ckpt ckpt/lumina_768 --prompt "a red fox in the snow"
  sjd-jax generate --model llamagen-t2i-xl --ckpt ckpt/llamagen_t2i --prompt "a cat" "a dog" --n 2
  sjd-jax generate --n 1024 --batch-per-device 8 --out-dir samples/
  sjd-jax generate --n 1024 --out-dir samples/ --mesh data=4,model=2
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sjd_jax.io import atomic
from sjd_jax.cli import auto as cliauto
from sjd_jax.cli import util as cliutil
from sjd_jax.sampling import recipes


def parser():
    from sjd_jax import families
    from sjd_jax.core.precision import PARAM_DTYPES

    ap = cliutil.Parser("sjd-jax generate", __doc__)
    ap.add_argument("--model", default="fashion-mnist",
                    help=f"a bundled model ({', '.join(families.model_names('class', bundled=True))}), a "
                         f"converted class-conditional checkpoint (--ckpt: "
                         f"{', '.join(families.model_names('class', bundled=False))}) or a text-to-image model "
                         f"(--ckpt, --prompt: {', '.join(families.model_names('text'))}); default fashion-mnist. "
                         f"Without --ckpt, a hub name ({', '.join(families.pretrained_names())}) is fetched from "
                         f"the Hugging Face hub and converted once (pip install 'sjd-jax[hub]'; cached under "
                         f"$SJD_JAX_CACHE, default ~/.cache/sjd-jax; HF_HUB_OFFLINE=1: the local hub cache only)")
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="converted checkpoint dir (llamagen-c2i: DIR/gpt + DIR/vq; text-to-image models)")
    ap.add_argument("--prompt", nargs="+", default=None, help="text-to-image models: one or more prompts")
    ap.add_argument("--t5", type=Path, default=None,
                    help="llamagen-t2i: converted T5 encoder dir (default <ckpt>/t5)")
    ap.add_argument("--class", dest="classes", type=int, nargs="+", default=None,
                    help="class ids (default: all); one grid column per class")
    ap.add_argument("--n", "--n-per-class", dest="n", type=int, default=4,
                    help="samples per class (text-to-image: per prompt; default 4)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--method", default=None,
                    help=f"auto | {' | '.join(recipes.RECIPES)} (default auto: the lossless recipe, window and "
                         f"init predicted fastest here, see sjd_jax.tuning); lantern is lossy")
    ap.add_argument("--window", default=None,
                    help="Jacobi window, or auto (default: auto; 16 for recipes auto has no statistics for)")
    ap.add_argument("--param-dtype", default="auto", choices=PARAM_DTYPES,
                    help="transformer weights' dtype (default auto: bfloat16 on GPU/TPU for 7-8B models, "
                         "else float32)")
    recipes.add_arguments(ap)
    ap.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale")
    ap.add_argument("--top-k", type=int, default=None, help="top-k filter (default: the model's)")
    ap.add_argument("--top-p", type=float, default=None, help="top-p filter (default: the model's)")
    ap.add_argument("--temperature", type=float, default=None, help="default: the model's")
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default <model>.png)")
    ap.add_argument("--stats-json", type=Path, default=None,
                    help="also write NFE/acceptance stats here (--json prints the same object on stdout)")
    cliutil.add_output_flags(ap)
    b = ap.add_argument_group("batch mode and devices")
    b.add_argument("--out-dir", type=Path, default=None,
                   help="batch mode: write one PNG per item + tokens.npy here (resumable)")
    b.add_argument("--batch-per-device", type=int, default=None,
                   help="batch mode: rows per data shard in each chunk (default 8)")
    b.add_argument("--no-png", action="store_true", help="batch mode: tokens only, no PNG files")
    cliutil.add_schedule_flags(b)
    b.add_argument("--mesh", default=None,
                   help="device mesh data=D,model=M (default: all devices on data in batch mode, one "
                        "device otherwise)")
    b.add_argument("--distributed", default="auto", choices=("auto", "on", "off"),
                   help="jax.distributed.initialize: auto = when the environment shows a multi-process "
                        "job (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, multi-host TPU)")
    b.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into this many JAX devices (to try meshes without accelerators)")
    return ap


def stats_of(out, N: int, window: int) -> dict:
    from sjd_jax.sampling import acceptance_stats

    return {"images": int(out.nfe.shape[0]), "image_tokens": N, "nfe_per_image": np.asarray(out.nfe).tolist(),
            "ar_nfe": N, "loop_iterations": int(out.iterations),
            **acceptance_stats(out.nfe, out.committed, N, window)}


def _devices(args):
    """Device setup before anything touches the backend: fake CPU devices, multi-host init, mesh."""
    import jax

    from sjd_jax.parallel import distributed
    from sjd_jax.parallel import sharding

    cliutil.set_cpu_devices(args.cpu_devices)
    distributed.maybe_initialize(args.distributed)
    if args.mesh is None and jax.process_count() == 1 and (
            jax.device_count() == 1 or (jax.default_backend() == "cpu" and args.cpu_devices is None)):
        # one device: no mesh for the grid, a 1-device mesh for batch mode. (Fake CPU devices share
        # the cores one device already uses: 8 of them gained 1.12x at a fixed batch; opt in with
        # --mesh or --cpu-devices.)
        return None if args.out_dir is None else sharding.make_mesh({"data": 1, "model": 1})
    return sharding.make_mesh(sharding.parse_mesh(args.mesh, jax.device_count()))


def main(argv=None) -> int:
    return cliutil.run(parser(), argv, _main)


def _check_sizes(args) -> None:
    """Numeric flags of every model kind, before anything loads."""
    from sjd_jax.parallel.memory import MAX_ROWS
    from sjd_jax.core.validate import check_int, check_seed

    check_int("--n", args.n, 1, MAX_ROWS)
    check_seed(args.seed, "--seed")
    if args.batch_per_device is not None:
        check_int("--batch-per-device", args.batch_per_device, 1, MAX_ROWS)


def _check_outputs(args, out_path: Path, grid: bool) -> None:
    """The files this run writes can be written (process 0 only: it is the one that writes)."""
    from sjd_jax.parallel.distributed import is_writer

    if not is_writer():
        return
    if grid:
        atomic.check_file_target(out_path)
    if args.stats_json is not None:
        atomic.check_file_target(args.stats_json)


def _main(args) -> int:
    from sjd_jax.families import pipelines
    from sjd_jax.families import presets
    from sjd_jax.families.loader import cli_model

    _check_sizes(args)
    # a hub name without --ckpt (janus-pro-1b, llamagen-c2i-b-256): fetched and converted the first time
    args.model, args.ckpt = cli_model(args.model, args.ckpt, quiet=args.quiet)
    if args.model in pipelines.TEXT_MODELS:
        return _text(args)
    ckpt_model = _check_class_flags(args)
    preset = None if ckpt_model else presets.get(args.model)
    mesh = _devices(args)
    bundle = presets.from_checkpoint(args.model, args.ckpt, mesh=mesh, param_dtype=args.param_dtype) \
        if ckpt_model else None
    if bundle is not None:  # its classes and defaults come with the checkpoint
        preset = bundle.preset
    n_cls = len(preset.class_names)
    classes = list(range(n_cls)) if args.classes is None else args.classes
    bad = [c for c in classes if not 0 <= c < n_cls]
    if bad:
        raise ValueError(f"class {bad[0]} out of range: {args.model} has classes 0..{n_cls - 1}")
    out_path = args.out or Path(f"{args.model}.png")
    _check_outputs(args, out_path, grid=args.out_dir is None)
    if bundle is None:
        bundle = presets.load(args.model, mesh=mesh, param_dtype=args.param_dtype)
    from sjd_jax.core.vq import codebook_vectors

    knobs = preset.knobs(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p)
    batch, schedule = _batch_shape(args, len(classes), mesh)
    labels = np.repeat(np.asarray(classes, np.int32)[None], min(args.n, batch), axis=0).reshape(-1)[:batch]
    name, window, choice = cliauto.pick(args, bundle.gpt_params, bundle.gpt_config, knobs,
                                        default_window=preset.window, batch=batch, schedule=schedule,
                                        cond=labels, images=args.n * len(classes), mesh=mesh)
    sampler = cliutil.sampler_choice(args, name, window, bundle.gpt_config, knobs,
                                     codebook_vectors(bundle.vq_params, bundle.vq_config))
    if args.out_dir is not None:
        return _batch(args, bundle, sampler, classes, mesh, choice)
    return _grid(args, bundle, sampler, classes, mesh, out_path, choice)


def _batch_shape(args, n_classes: int, mesh) -> tuple[int, str]:
    """The rows one sampler call runs and how batches are scheduled: the grid is one static batch;
    batch mode runs ``--batch-per-device`` rows per data shard, continuously refilled unless
    ``--schedule static``."""
    from sjd_jax.parallel.sharding import mesh_shape

    if args.out_dir is None:
        return args.n * n_classes, "static"
    bpd = 8 if args.batch_per_device is None else args.batch_per_device
    data = mesh_shape(mesh)["data"]
    work = -(-args.n * n_classes // data) * data  # (padding shrinks to the work, as streaming does)
    return min(bpd * data, work), "static" if args.schedule == "static" else "continuous"


def _check_class_flags(args) -> bool:
    """Flags of a class-conditional model, before anything loads (a ValueError is one line in
    ``cliutil.run``); returns whether the model comes from a converted checkpoint (``--ckpt``)."""
    from sjd_jax.families import pipelines
    from sjd_jax.families import presets

    ckpt_model = args.model in presets.CKPT_MODELS
    if args.prompt is not None or args.t5 is not None:
        raise ValueError(f"--prompt/--t5 are for text-to-image models "
                         f"({', '.join(pipelines.TEXT_MODELS)}); {args.model} is class-conditional")
    if args.ckpt is not None and not ckpt_model:
        raise ValueError(f"--ckpt is for converted checkpoints ({', '.join(presets.CKPT_MODELS)}, "
                         f"{', '.join(pipelines.TEXT_MODELS)}); {args.model} is bundled")
    if ckpt_model and args.ckpt is None:
        raise ValueError(f"--model {args.model} needs --ckpt DIR with DIR/gpt (sjd-jax convert --family llamagen-c2i "
                         f"c2i_B_256.pt --out DIR/gpt) and DIR/vq (sjd-jax convert --family llamagen-vq "
                         f"vq_ds16_c2i.pt --out DIR/vq), or a hub name instead: {_hub_names(args.model)}")
    if ckpt_model and args.classes is None:
        raise ValueError(f"--model {args.model} needs --class ID [ID ...] (ImageNet class ids, e.g. 207)")
    if args.out_dir is None and (args.batch_per_device is not None or args.no_png or args.schedule != "auto"
                                 or args.refill_rows is not None):
        raise ValueError("--batch-per-device, --no-png, --schedule and --refill-rows need --out-dir (batch mode)")
    if args.out_dir is not None and args.out is not None:
        raise ValueError("--out writes the grid PNG; batch mode (--out-dir) writes one PNG per item")
    if not ckpt_model and args.model not in presets.PRESETS:
        raise ValueError(f"unknown model {args.model!r}; choose a bundled model ({', '.join(presets.PRESETS)}), "
                         f"a converted class-conditional one ({', '.join(presets.CKPT_MODELS)}) or a "
                         f"text-to-image one ({', '.join(pipelines.TEXT_MODELS)})")
    cliauto.check(args)
    return ckpt_model


def _grid(args, bundle, sampler, classes, mesh, out_path: Path, choice=None) -> int:
    """One grid PNG: a column per class, ``--n`` rows."""
    import jax.numpy as jnp

    from sjd_jax.parallel import distributed
    from sjd_jax.io.imaging import grid, save_png
    from sjd_jax.sampling import generate
    from sjd_jax.core.vq import decode_tokens, to_uint8

    c = bundle.gpt_config
    N = c.num_image_tokens
    labels = np.repeat(np.asarray(classes, np.int32)[None], args.n, axis=0).reshape(-1)  # row-major grid
    B = labels.size
    report = cliutil.Output(args)
    t0 = time.perf_counter()
    with cliutil.TokenProgress(B * N, f"{sampler.name} decoding", report.progress) as bar:
        out = generate(bundle.gpt_params, c, jnp.asarray(labels), args.seed, progress=bar.begin(B), mesh=mesh,
                       **sampler.keywords())
        # global arrays -> host arrays on every process (multi-host safe); only process 0 writes
        out = distributed.gather_output(out)
    if not distributed.is_writer():
        return 0
    images = to_uint8(decode_tokens(bundle.vq_params, bundle.vq_config, jnp.asarray(out.tokens), c.grid_size))
    wall = time.perf_counter() - t0
    images = bundle.preset.cropped(images)
    save_png(grid(images, ncols=len(classes), scale=2 if images.shape[1] < 128 else 1), out_path)
    cliauto.observe(args, choice, sampler.name, sampler.window, bundle.gpt_params, c, sampler.knobs, out.nfe)
    st = stats_of(out, N, sampler.window)
    st.update(branch_hits_per_image=float(np.asarray(out.branch_hits).mean()))
    if choice is not None:
        st.update(auto=choice.as_dict())
    st.update(model=args.model, method=sampler.name, lossless=sampler.lossless, window=sampler.window,
              drafting=sampler.drafting, seed=args.seed, classes=classes, n_per_class=args.n, wall_s=round(wall, 2),
              **sampler.knobs, png=str(out_path))
    if args.stats_json is not None:
        atomic.write_json(args.stats_json, st)
    report.result(st, f"wrote {out_path}: {B} images ({args.n} per class x {len(classes)} classes), {sampler.name} "
                      f"W={st['window']}: mean NFE {st['nfe_mean']:.1f} per image vs {N} AR steps "
                      f"-> step compression {st['step_compression']:.2f}x, {st['mean_accepted_per_iteration']:.2f} "
                      f"tokens per iteration; {wall:.1f}s")
    return 0


def _batch(args, bundle, sampler, classes, mesh, choice=None) -> int:
    from sjd_jax.parallel import distributed
    from sjd_jax.parallel.sharding import mesh_shape
    from sjd_jax.io import streaming

    bpd = 8 if args.batch_per_device is None else args.batch_per_device
    data = mesh_shape(mesh)["data"]
    cliutil.check_refill_rows(args.refill_rows, bpd * data, data)
    st = streaming.run(bundle, args.out_dir, sampler, classes=classes, n_per_class=args.n, seed=args.seed,
                       batch_per_device=bpd, mesh=mesh, settings_extra={"model": args.model}, png=not args.no_png,
                       quiet=args.quiet, schedule=args.schedule, refill_rows=args.refill_rows)
    if choice is not None:
        st.update(auto=choice.as_dict())
    if distributed.is_writer():
        if args.stats_json is not None:
            atomic.write_json(args.stats_json, st)
        cliutil.Output(args).result(
            {**st, "out_dir": str(args.out_dir)},
            f"wrote {args.out_dir}: {st['items']} items ({st['generated_this_run']} generated now, "
            f"{st['skipped_done']} already done) on {st['devices']} devices, mesh {st['mesh']}, global batch "
            f"{st['global_batch']} ({st['schedule']['schedule']}, useful fraction "
            f"{st['schedule']['useful_fraction']:.2f}); {sampler.name} W={sampler.window}: step compression "
            f"{st['step_compression']:.2f}x; {st['wall_s']:.1f}s")
    return 0


def _hub_names(model: str) -> str:
    """The hub names that load as ``model`` (``generate --model NAME`` without ``--ckpt``)."""
    from sjd_jax import families

    return ", ".join(p.name for f in families.entries() for p in f.pretrained if p.model == model) or "none"


def _check_text_flags(args) -> Path:
    """Flags of a text-to-image model, before anything loads; returns the PNG path."""
    from sjd_jax.families import pipelines

    if args.ckpt is None:
        fam = pipelines.TEXT_MODELS[args.model]["family"]
        raise ValueError(f"--model {args.model} needs --ckpt DIR, a converted checkpoint "
                         f"(sjd-jax convert --family {fam} ... --out DIR), or a hub name instead: "
                         f"{_hub_names(args.model)}")
    if not args.prompt:
        raise ValueError(f"--model {args.model} needs --prompt TEXT [TEXT ...]")
    if args.classes is not None:
        raise ValueError("--class is for class-conditional models; text-to-image models take --prompt")
    if (args.out_dir is not None or args.batch_per_device is not None or args.no_png or args.schedule != "auto"
            or args.refill_rows is not None):
        raise ValueError("batch mode (--out-dir, --batch-per-device, --no-png, --schedule, --refill-rows) is for "
                         "class-conditional models; text-to-image models write one grid (--out)")
    bad = [p for p in args.prompt if not p.strip()]
    if bad:
        raise ValueError("empty --prompt")
    out_path = args.out or Path(f"{args.model}.png")
    _check_outputs(args, out_path, grid=True)
    cliauto.check(args)
    return out_path


def _text(args) -> int:
    """A text-to-image model: prompts -> one grid column per prompt, ``--n`` samples each."""
    from sjd_jax.families import pipelines

    out_path = _check_text_flags(args)  # ValueError -> one line, exit 2, in cliutil.run
    mesh = _devices(args)
    tm = pipelines.load(args.model, args.ckpt, t5=args.t5, mesh=mesh, param_dtype=args.param_dtype)
    knobs = dict(tm.defaults)
    knobs.update({k: v for k, v in dict(cfg_scale=args.cfg_scale, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p).items() if v is not None})
    # (the choice times the transformer at its default prompt length; no calibration run: prompts
    # are encoded per call, and the model learns from this run's rows instead)
    name, window, choice = cliauto.pick(args, tm.gpt_params, tm.gpt_config, knobs, default_window=16,
                                        batch=len(args.prompt) * args.n)
    sampler = cliutil.sampler_choice(args, name, window, tm.gpt_config, knobs, tm.codebook)
    return _text_grid(args, tm, sampler, out_path, choice)


def _text_grid(args, tm, sampler, out_path: Path, choice=None) -> int:
    from sjd_jax.parallel import distributed
    from sjd_jax.io.imaging import grid, save_png

    P = len(args.prompt)
    texts = [args.prompt[j] for _ in range(args.n) for j in range(P)]  # row-major grid, one column per prompt
    B, N = len(texts), tm.gpt_config.num_image_tokens
    report = cliutil.Output(args)
    t0 = time.perf_counter()
    # (a ValueError here, e.g. a prompt too long for the model's context, is one line in cliutil.run;
    # the window is passed on its own too: llamagen-t2i's pipeline fills in one it is not given)
    with cliutil.TokenProgress(B * N, f"{sampler.name} decoding", report.progress) as bar:
        images, out = tm.generate(texts, args.seed, progress=bar.begin(B), window=sampler.options.window,
                                  **sampler.keywords())
    wall = time.perf_counter() - t0
    if not distributed.is_writer():
        return 0
    save_png(grid(images, ncols=P, scale=1), out_path)
    cliauto.observe(args, choice, sampler.name, sampler.window, tm.gpt_params, tm.gpt_config, sampler.knobs,
                    out.nfe)
    st = stats_of(out, N, sampler.window)
    if choice is not None:
        st.update(auto=choice.as_dict())
    st.update(model=args.model, ckpt=str(args.ckpt), prompts=list(args.prompt), n_per_prompt=args.n,
              method=sampler.name, lossless=sampler.lossless, window=sampler.window, drafting=sampler.drafting,
              seed=args.seed, image_size=list(tm.image_size), wall_s=round(wall, 2), **sampler.knobs,
              png=str(out_path))
    if args.stats_json is not None:
        atomic.write_json(args.stats_json, st)
    report.result(st, f"wrote {out_path}: {B} images ({args.n} per prompt x {P} prompts, "
                      f"{tm.image_size[0]}x{tm.image_size[1]}), {sampler.name} W={sampler.window}: mean NFE "
                      f"{st['nfe_mean']:.1f} per image vs {N} AR steps -> step compression "
                      f"{st['step_compression']:.2f}x, {st['mean_accepted_per_iteration']:.2f} tokens per iteration; "
                      f"{wall:.1f}s")
    return 0

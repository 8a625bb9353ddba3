"""``--method auto`` / ``--window auto`` in the CLIs: flags -> the recipe and window that run.

With neither flag the choice is automatic (``sjd_jax.tuning``); an explicit ``--method`` keeps its
recipe and chooses the window (and init) for it, an explicit ``--window`` keeps its window; both
explicit, or a recipe without acceptance statistics (jacobi, lantern), choose nothing. The choice
is one ``auto: ...`` line on stderr (``--quiet`` hides it) and the ``auto`` object of ``--json``.
"""

from __future__ import annotations

import logging

log = logging.getLogger("sjd_jax")


def parse_window(text):
    """``--window``: None (not given), "auto" or a positive int."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--window must be a positive integer or auto, got {text!r}") from None


def check(args) -> None:
    """Flag checks before anything loads."""
    from sjd_jax.core.validate import check_int
    from sjd_jax.sampling import recipes

    args.window = parse_window(args.window)
    if isinstance(args.window, int):
        check_int("--window", args.window, 1, 1 << 16)
    if args.method not in (None, "auto"):
        recipes.options(args.method)  # a known recipe (ValueError otherwise), before any weights are read
    from sjd_jax.sampling.options import DRAFT_INITS

    if args.init is not None and args.init not in DRAFT_INITS:
        raise ValueError(f"unknown init {args.init!r}; choose one of {', '.join(DRAFT_INITS)}")
    if (args.method in (None, "auto")) and (args.coupling is not None or args.tree is not None):
        raise ValueError("--coupling/--tree change a recipe's drafting: give --method with them "
                         "(auto chooses among the recipes as they are)")


def resumed(args) -> bool:
    """Batch mode resuming a run with nothing pinned: take the run's recipe, window and init from its
    ``run.json`` (a fresh choice could differ, and a run with other settings is refused)."""
    import json

    run = None if getattr(args, "out_dir", None) is None else args.out_dir / "run.json"
    if run is None or args.method not in (None, "auto") or args.window not in (None, "auto") or not run.is_file():
        return False
    try:
        old = json.loads(run.read_text())
        method, window, init = old["method"], int(old["window"]), old.get("drafting", {}).get("init")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # (streaming reports a damaged run.json)
    args.method, args.window = method, window
    if args.init is None and init is not None and method != "ar":
        args.init = init
    log.info(f"auto: resuming {args.out_dir}'s run: {method} W={window}" + (f" init {init}" if init else ""))
    return True


def pick(args, params, config, knobs: dict, *, default_window: int, batch: int, schedule: str = "static",
         cond=None, images: int | None = None, mesh=None):
    """-> (recipe name, window, ``tuning.Choice`` or None); sets ``args.init`` to the chosen init."""
    from sjd_jax.tuning import acceptance, choose

    if resumed(args):
        return args.method, args.window, None
    method = args.method or "auto"
    window = args.window
    known = {c.method for c in acceptance.load_prior()["cells"]} | {"ar"}
    if method == "ar":
        return method, 1 if window in (None, "auto") else window, None
    if window is None:
        window = "auto" if method == "auto" or method in known else default_window
    if method != "auto" and window != "auto":
        return method, window, None
    if method != "auto" and method not in known:
        log.info(f"note: no acceptance statistics for {method}: window {default_window}")
        return method, default_window, None
    calibrate = None
    if cond is not None:
        from sjd_jax.sampling import generate
        from sjd_jax.tuning.auto import calibration_run

        calibrate = calibration_run(generate, params, config, cond, knobs, float(knobs.get("cfg_scale", 1)) != 1)
    choice = choose(params, config, batch, knobs, methods=None if method == "auto" else [method],
                    windows=None if window == "auto" else [window],
                    inits=None if args.init is None else [args.init], schedule=schedule, calibrate=calibrate,
                    images=images, mesh=mesh)
    log.info(choice.line())
    if choice.method != "ar" and args.init is None:
        args.init = choice.init
    return choice.method, choice.window, choice


def observe(args, choice, name: str, window: int, params, config, knobs: dict, nfe) -> None:
    """After a run: its rows' NFE into the model's acceptance statistics (recipes as they are only)."""
    from sjd_jax import tuning

    if args.coupling is None and args.tree is None and name != "ar":
        tuning.observe(params, config, knobs, name, window, args.init or "uniform", nfe)

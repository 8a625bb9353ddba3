"""``method="auto"`` / ``window="auto"``: the lossless recipe, window and draft init with the least
predicted time per image, for this model, device, batch and dtype.

Predicted seconds per image of a cell = its expected loop iterations for the batch
(``acceptance.Table.iterations``) x the seconds of one iteration / batch, where an iteration is a
W-token forward timed on this device (``costs``) plus the loop's own work (the prior's overhead
fraction of the forward for that recipe, window and number of rows). When the number of images a
command makes is known (the CLI), the sampler's compile time is spread over them: the one-token
forward loop's compile, timed here, x the recipe's compile ratio from the prior; a one-image
command does not pay seconds of compile to save milliseconds. AR is always a candidate, so the
choice is never predicted slower than AR. Forward costs are cached per (device, model fingerprint,
rows, dtype); acceptance statistics per (model, sampling knobs); both in ``cache.directory()``.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from sjd_jax.tuning import acceptance, cache, costs
from sjd_jax.tuning.acceptance import Cell

log = logging.getLogger("sjd_jax")
CALIBRATION_SHARE = 0.10  # a converted model's calibration run is made when predicted under this share of the run
CALIBRATION_CELL = Cell("sjd", 16, "uniform")
CALIBRATION_ROWS = 4
ANCHORS = (16,)  # windows timed besides 1 and the largest candidate (others are interpolated)


@dataclasses.dataclass(frozen=True)
class Choice:
    method: str  # a recipe name
    window: int
    init: str
    seconds_per_image: float  # predicted
    ar_seconds_per_image: float  # predicted, same batch
    acceptance: str  # where the acceptance statistics came from (acceptance.Table.source)
    costs: str  # "measured" (timed now) or "cached"
    tuning_s: float  # seconds this choice took (timing forwards, calibration)
    batch: int
    ranking: tuple = ()  # ((cell name, predicted s/image), ...) best first, a few
    compile_s: float | None = None  # predicted seconds to compile the chosen sampler (None: not modelled)
    images: int | None = None  # the images its compile was spread over (None: steady state only)

    @property
    def speedup(self) -> float:
        return self.ar_seconds_per_image / self.seconds_per_image

    @property
    def cell(self) -> Cell:
        return Cell(self.method, self.window, self.init)

    def keywords(self) -> dict:
        """``generate`` keywords of the choice (recipe fields, window, init)."""
        from sjd_jax.sampling import recipes

        kw = recipes.recipe(self.method, self.window)
        kw.pop("lantern", None)
        return dict(kw, window=self.window, init=self.init) if self.method != "ar" else dict(kw, window=1)

    def line(self) -> str:
        what = "ar" if self.method == "ar" else f"{self.method} W={self.window} init {self.init}"
        return (f"auto: {what} (predicted {self.speedup:.2f}x vs AR at batch {self.batch}, "
                f"{self.seconds_per_image * 1e3:.1f} ms/image" + (
                    f" + {self.compile_s:.1f}s compile over {self.images} image{'s' * (self.images != 1)}"
                    if self.images and self.compile_s is not None else "")
                + f"; acceptance {self.acceptance}, forward costs {self.costs}; {self.tuning_s:.1f}s to choose)")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(speedup=round(self.speedup, 3), ranking=[list(r) for r in self.ranking])
        return d


def _candidates(table, N: int, methods, windows, inits) -> list[Cell]:
    """AR (unless a drafting window or init was asked for) and the table's cells the restrictions
    allow; an asked-for window without statistics borrows the nearest window's (``Table``)."""
    ar_ok = (methods is None or "ar" in methods) and (windows is None or 1 in windows) and inits is None
    out = [Cell("ar", 1, "uniform")] if ar_ok else []
    cells = table.cells()
    if windows is not None:
        kinds = sorted({(c.method, c.init) for c in cells})
        cells = [Cell(m, w, i) for w in windows if w > 1 for m, i in kinds]
    for c in cells:
        if c.method == "ar" or c.window > N:
            continue
        if (methods is None or c.method in methods) and (inits is None or c.init in inits):
            out.append(c)
    return out


def choose(params, config, batch: int, knobs: dict, *, methods=None, windows=None, inits=None,
           schedule: str = "static", cfg: bool | None = None, use_cache: bool = True, calibrate=None,
           images: int | None = None, mesh=None) -> Choice:
    """The fastest predicted cell for ``batch`` rows of ``config``'s model.

    ``methods`` / ``windows`` / ``inits``: restrict the candidates (an explicit ``--method``,
    ``--window`` or ``--init``). ``schedule``: "static" (a batch runs until its slowest row) or
    "continuous" (rows are refilled).
    ``calibrate(keywords) -> nfe [rows]``: runs ``generate`` with those sampler keywords on a few
    (up to ``CALIBRATION_ROWS``) of the caller's conditions (``calibration_run`` makes one); a
    model's calibration run is made only when no statistics were observed for it yet and it is
    predicted (its compile included) to cost under ``CALIBRATION_SHARE`` of ``images`` images.
    ``images``: how many images the command makes (its sampler's compile is spread over them; None:
    steady state, the compile not counted). ``mesh``: the rows are split over its ``data`` axis.
    Raises ValueError when no candidate is left, or when even AR's ``batch`` rows cannot fit."""
    from sjd_jax.sampling import recipes

    t0 = time.perf_counter()
    N = config.num_image_tokens
    cfg = float(knobs.get("cfg_scale", 1.0)) != 1.0 if cfg is None else cfg
    _require_fits(config, batch, knobs, cfg, mesh)
    data = 1 if mesh is None else mesh.shape.get("data", 1)
    rows = -(-batch // data) * (2 if cfg else 1)  # one data shard's rows, CFG's doubled
    fp = cache.fingerprint(params, config)
    table = acceptance.Table.for_model(fp, knobs)
    cands = _candidates(table, N, methods, windows, inits)
    if not cands:
        raise ValueError(f"no automatic choice: no acceptance statistics for method {methods}, window {windows}, "
                         f"init {inits}")
    model = _Model(table, N, batch, schedule, images)
    timing = _forward_costs(params, config, rows, fp, model, cands, use_cache)
    if calibrate is not None and not table.observed and not table.bundled:
        ranked = model.rank(cands, timing)
        run_s = ranked[0][1] * (images or batch)
        c = CALIBRATION_CELL
        cal = _Model(table, N, CALIBRATION_ROWS, "static", CALIBRATION_ROWS)
        if cal.score(c, timing) * CALIBRATION_ROWS <= CALIBRATION_SHARE * run_s and c.window <= N:
            nfe = calibrate(dict(recipes.recipe(c.method, c.window), window=c.window, init=c.init))
            acceptance.observe(fp, knobs, c, np.asarray(nfe), N)
            model = _Model(acceptance.Table.for_model(fp, knobs, table.prior), N, batch, schedule, images)
    ranked = model.rank(cands, timing)
    best = ranked[0][0]
    return Choice(best.method, best.window, best.init, model.per_image(best, timing),
                  model.per_image(Cell("ar", 1, "uniform"), timing), model.table.source, timing.how,
                  time.perf_counter() - t0, batch, tuple((c.name(), round(v, 6)) for c, v in ranked[:5]),
                  model.compile_s(best, timing), images)


def _require_fits(config, batch: int, knobs: dict, cfg: bool, mesh) -> None:
    """Sizes before work: the smallest sampler (AR) must fit before anything is timed."""
    from sjd_jax.parallel.memory import require_sampler
    from sjd_jax.sampling.options import SamplerOptions, resolve

    full = dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, lantern_delta=0.0)
    full.update({k: v for k, v in knobs.items() if k in full})
    require_sampler(resolve(config, SamplerOptions(method="ar", window=1, cfg=cfg), full), batch, mesh)


@dataclasses.dataclass(frozen=True)
class _Timing:
    seconds: dict  # {W: seconds per forward of rows x W tokens}
    compile_s: float | None  # the one-token forward loop's compile (None: not timed)
    rows: int
    how: str  # "measured" or "cached"


@dataclasses.dataclass(frozen=True)
class _Model:
    """The cost model for ``batch`` rows (of ``images`` in all, when known)."""
    table: acceptance.Table
    N: int
    batch: int
    schedule: str
    images: int | None

    def per_image(self, cell: Cell, t: _Timing, forward: float | None = None) -> float:
        """Steady-state seconds per image (``forward``: a W-token forward's seconds, else timed)."""
        if forward is None and cell.window not in t.seconds and cell.window > max(t.seconds):
            return float("inf")  # not timed: a smaller window already wins (see _forward_costs)
        forward = costs.interpolate(t.seconds, cell.window) if forward is None else forward
        it = forward * (1.0 + self.table.overhead(cell, t.rows))
        return self.table.iterations(cell, self.N, self.batch, self.schedule) * it / self.batch

    def compile_s(self, cell: Cell, t: _Timing) -> float | None:
        ratio = self.table.compile_ratio(cell.method)
        return None if ratio is None or t.compile_s is None else ratio * t.compile_s

    def score(self, cell: Cell, t: _Timing, per_image: float | None = None) -> float:
        """Seconds per image, the compile spread over the images when their number is known."""
        s = self.per_image(cell, t) if per_image is None else per_image
        c = self.compile_s(cell, t) if self.images else None
        return s + (c / self.images if c is not None else 0.0)

    def rank(self, cands, t: _Timing) -> list[tuple[Cell, float]]:
        scored = [(c, self.score(c, t)) for c in cands]
        return sorted(scored, key=lambda cv: (cv[1], cv[0].window, cv[0]))


def _forward_costs(params, config, rows: int, fp: str, model: _Model, cands, use_cache) -> _Timing:
    """Seconds per forward by window: cached, or timed now (windows in ascending order, stopping
    once no larger window can beat the best cell so far even at the smaller window's cost)."""
    from sjd_jax.core import precision

    import jax

    # (not keyed by the prompt length: text prompts vary per call, and the forward's cost barely does)
    key = {"device": cache.device_kind(), "model": fp, "rows": rows, "dtype": precision.dtype_of(params),
           "jax": jax.__version__, "v": 2}
    top = max(c.window for c in cands)
    want = sorted({1, *(w for w in ANCHORS if w < top), top})  # timed; the windows between are interpolated
    hit = cache.load("costs", key) if use_cache else None
    if hit is not None:
        seconds = {int(w): float(v) for w, v in hit.get("seconds", {}).items()}
        if seconds and all(w in seconds or w > max(seconds) for w in want):
            unit = hit.get("compile_s")
            return _Timing(seconds, float(unit) if isinstance(unit, (int, float)) else None, rows, "cached")

    def stop(W, seconds, compiles):
        done = [c for c in cands if c.window <= W]
        later = [c for c in cands if c.window > W]
        if not done or not later:
            return False
        t = _Timing(seconds, compiles.get(1), rows, "measured")
        best = min(model.score(c, t) for c in done)
        # a larger window's best case: its forward grows from this one's at no less than the slope
        # measured below (forwards are near linear in W on CPUs, flat then steeper on accelerators:
        # convex, so the slope below is a lower bound for the slope above)
        lower = [w for w in seconds if w < W]
        slope = max(0.0, (seconds[W] - seconds[max(lower)]) / (W - max(lower))) if lower else 0.0
        bound = min(model.score(c, t, model.per_image(c, t, seconds[W] + slope * (c.window - W))) for c in later)
        return bound >= best

    seconds, compiles = costs.forward_seconds(params, config, rows, want, reps=16, repeats=3, min_seconds=0.02,
                                              stop=stop)
    timing = _Timing(seconds, compiles.get(1), rows, "measured")
    if use_cache:
        cache.store("costs", key, {"seconds": {str(w): s for w, s in seconds.items()}, "compile_s": timing.compile_s})
    return timing


def calibration_run(generate, params, config, cond, knobs: dict, cfg: bool = True):
    """``choose``'s ``calibrate`` for ``generate(params, config, cond, key, **keywords)``: the first
    ``CALIBRATION_ROWS`` rows of ``cond`` (any pytree of ``[B, ...]`` arrays), a fixed seed."""
    import jax

    part = jax.tree.map(lambda x: x[:CALIBRATION_ROWS], cond)
    kw = _knobs(knobs)

    def run(keywords: dict):
        return np.asarray(generate(params, config, part, 2**31 - 1, cfg=cfg, **kw, **keywords).nfe)
    return run


def observe(params, config, knobs: dict, method: str, window: int, init: str, nfe) -> None:
    """Record a real run's per-row NFE for ``(method, window, init)`` (what the next automatic
    choice for this model and knobs learns from)."""
    acceptance.observe(cache.fingerprint(params, config), knobs, Cell(method, window, init), nfe,
                       config.num_image_tokens)


RECIPE_FIELDS = ("method", "coupling", "tree")
KNOBS = ("cfg_scale", "temperature", "top_k", "top_p")  # the sampling knobs acceptance statistics are kept per


def _knobs(keywords: dict) -> dict:
    return {k: keywords[k] for k in KNOBS if k in keywords}


def matching_recipes(given: dict) -> list[str] | None:
    """The recipes consistent with the recipe fields a caller set (``method`` other than "auto",
    ``coupling``, ``tree``); None when none was set (every recipe)."""
    from sjd_jax.sampling import recipes

    fixed = {k: given[k] for k in RECIPE_FIELDS if k in given and given[k] != "auto"}
    if not fixed:
        return None
    fixed = {k: None if k == "tree" and v in ((1, 0), None) else v for k, v in fixed.items()}
    out = []
    for name, fields in recipes.RECIPES.items():
        if fields.get("lantern"):
            continue
        own = {"method": fields["method"], "coupling": fields.get("coupling", "none"), "tree": fields.get("tree")}
        if all(own[k] == v or (k == "tree" and own[k] is not None and v is not None) for k, v in fixed.items()):
            out.append(name)
    return out


def resolve_keywords(params, config, cond, keywords: dict, batch: int, mesh=None, generate=None,
                     schedule: str = "static", images: int | None = None) -> tuple[dict, Choice]:
    """``generate``'s keywords with ``method="auto"`` and/or ``window="auto"`` replaced by the
    choice for ``batch`` rows of ``cond`` (other keywords kept; an explicit init, coupling or tree
    restricts the candidates). ``generate``: the sampler, for a calibration run (None: none)."""
    kw = dict(keywords)
    auto_method = kw.pop("method", "sjd") == "auto"
    auto_window = kw.get("window", None) == "auto"
    kw.pop("window", None)
    given = {k: kw[k] for k in ("coupling", "tree") if k in kw}
    if not auto_method:  # a named method keeps SamplerOptions' defaults for what it leaves out
        given = {"method": keywords.get("method", "sjd"), "coupling": kw.get("coupling", "none"),
                 "tree": kw.get("tree")}
    methods = matching_recipes(given)
    windows = None if auto_window else [int(keywords.get("window", 16))]
    inits = [kw["init"]] if "init" in kw else None
    knobs = _knobs(kw)
    cfg = kw.get("cfg", True) and knobs.get("cfg_scale", 1.0) != 1.0
    choice = choose(params, config, batch, knobs, methods=methods, windows=windows, inits=inits, cfg=cfg,
                    calibrate=None if generate is None else calibration_run(generate, params, config, cond, knobs, cfg),
                    mesh=mesh, schedule=schedule, images=images)
    explicit = {k: kw.pop(k) for k in ("coupling", "tree", "init") if k in kw}
    return {**kw, **choice.keywords(), **(explicit if choice.method != "ar" else {})}, choice


def generate(params, config, cond, key, options=None, **keywords):
    """``sampling.generate`` that also takes ``method="auto"`` and/or ``window="auto"`` (this is
    ``sjd_jax.generate``): those are replaced by the choice for ``cond``'s rows (``choose``; one
    ``auto: ...`` line on the ``sjd_jax`` logger), and the run's per-row NFE are recorded for the
    next choice (which waits for the output). Anything else goes to ``sampling.generate`` as is."""
    from sjd_jax.core.model import split_cond
    from sjd_jax.sampling.generate import generate as run

    if keywords.get("method") != "auto" and keywords.get("window") != "auto":
        return run(params, config, cond, key, options, **keywords)
    rows = split_cond(config, cond)[0].shape[0]
    keywords, choice = resolve_keywords(params, config, cond, keywords, rows, keywords.get("mesh"), run)
    log.info(choice.line())
    out = run(params, config, cond, key, options, **keywords)
    if out.nfe.is_fully_addressable:
        observe(params, config, _knobs(keywords), choice.method, choice.window, choice.init, np.asarray(out.nfe))
    return out


def generate_stream(params, config, conds, key, options=None, *, batch: int, schedule: str = "auto", **keywords):
    """``sampling.generate_stream`` that also takes ``method="auto"`` and/or ``window="auto"`` (this
    is ``sjd_jax.generate_stream``): chosen for ``batch`` rows under the schedule the stream runs
    (a drafting recipe's "auto" schedule is continuous), spread over ``len(conds)`` images when it has
    a length; the items' NFE are recorded for the next choice once the stream is exhausted."""
    from sjd_jax.sampling.batching import Stream, generate_stream as run

    if keywords.get("method") != "auto" and keywords.get("window") != "auto":
        return run(params, config, conds, key, options, batch=batch, schedule=schedule, **keywords)
    images = len(conds) if hasattr(conds, "__len__") else None
    as_run = "static" if schedule == "static" else "continuous"
    keywords, choice = resolve_keywords(params, config, None, keywords, batch, keywords.get("mesh"), None,
                                        as_run, images)
    log.info(choice.line())
    stream = run(params, config, conds, key, options, batch=batch, schedule=schedule, **keywords)
    knobs = _knobs(keywords)

    def items():
        nfe = []
        for item in stream:
            nfe.append(item.nfe)
            yield item
        observe(params, config, knobs, choice.method, choice.window, choice.init, np.asarray(nfe))
    return Stream(items(), stream.stats)

"""Expected forwards per image of each (recipe, window, init): the acceptance statistics of a model.

Three sources, best first:
* **observed**: step compressions (N / NFE) of real rows of this model with these sampling knobs,
  recorded after every automatic or CLI run (``observe``), per cell;
* **calibrated**: the shipped prior scaled to this model by ``k`` from whatever was observed
  (a short calibration run or real runs): ``s = 1 + (s_prior - 1) * k``, where ``k`` pools the
  observed cells' ratios with the prior as 8 pseudo-rows at ``k = 1``;
* **prior**: the bundled model's own benchmark (``assets/fashion_mnist/acceptance.json``: 20 rows
  per cell of ``sjd-jax bench``'s grid at CFG 2.0), used as is for the bundled model.

A static batch runs until its slowest row: its iterations are the expected maximum of ``batch``
rows' NFE (order statistics of the cell's samples); a continuous batch keeps rows busy, so its
iterations per image are the mean NFE over the measured useful fraction.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from sjd_jax.tuning import cache

PRIOR = Path(__file__).resolve().parent.parent / "assets" / "fashion_mnist" / "acceptance.json"
PSEUDO_ROWS = 8  # the prior's weight in k, in rows
OWN_CELL_ROWS = 16  # a cell with this many observed rows uses them instead of the scaled prior
KEEP_ROWS = 256  # observed rows kept per cell (the most recent)
CONTINUOUS_USEFUL = 0.95  # useful fraction of continuous batching (issue 20's bench: 0.95-0.99)


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    method: str  # a recipe name (sampling.recipes.RECIPES)
    window: int
    init: str

    def name(self) -> str:
        return self.method if self.method == "ar" else f"{self.method} W={self.window} {self.init}"


def _cell_key(c: Cell) -> str:
    return f"{c.method}|{c.window}|{c.init}"


def load_prior(path: Path = PRIOR) -> dict:
    """The shipped prior: ``{"cells": {Cell: step compressions [rows]}, "overhead": {rows: {method:
    {W: fraction}}}, "compile": {method: ratio}, "model", "knobs", "fingerprint"}`` (the model and
    knobs it was measured with; ``overhead``: per forward rows, ``compile``: a sampler's compile time
    over the one-token forward loop's)."""
    raw = json.loads(Path(path).read_text())
    N = raw["image_tokens"]
    cells = {Cell(c["method"], c["window"], c["init"]): N / np.asarray(c["nfe_per_row"], np.float64)
             for c in raw["cells"]}
    over = {int(r): {m: {int(w): float(v) for w, v in by_w.items()} for m, by_w in by_m.items()}
            for r, by_m in raw["overhead"].items()}
    return {"cells": cells, "overhead": over, "compile": {m: float(v) for m, v in raw.get("compile", {}).items()},
            "model": raw["model"], "knobs": raw["knobs"], "fingerprint": raw.get("fingerprint")}


def prior_from_bench(reports: list[dict], fingerprint: str) -> dict:
    """The prior file's content from ``sjd-jax bench`` JSON reports of one model: every cell's
    per-row NFE at batch 1 (a later report's cell replaces an earlier one); the loop's overhead per
    iteration as a fraction of the forward, per (forward rows, recipe, window), median over inits,
    from every static batch a report timed forwards for (the first report that has one; each
    against its own report's forward timings); and each recipe's compile time over the one-token
    forward loop's (median over its cells, from the first report that timed that compile)."""
    cells, over, comp, N, model, knobs = {}, {}, {}, None, None, None
    for rep in reports:
        N, model, knobs = rep["image_tokens"], rep["model"], rep["knobs"]
        own_over, own_comp = {}, {}
        for b, by_w in rep["forward_cost"].items():
            fwd = {int(w): v["seconds"] for w, v in by_w.items()}
            unit = by_w.get("1", {}).get("compile_s")
            for r in rep["results"]:
                if r["batch"] != int(b) or r.get("schedule", "static") != "static" or "auto" in r:
                    continue
                if r["window"] in fwd and r.get("forwards"):
                    per_iteration = r["wall_s"] / r["forwards"]
                    own_over.setdefault(2 * int(b), {}).setdefault(r["method"], {}).setdefault(
                        r["window"], []).append(per_iteration / fwd[r["window"]] - 1)
                if unit and r.get("compile_s"):
                    own_comp.setdefault(r["method"], []).append(r["compile_s"] / unit)
        for r in rep["results"]:
            if r["batch"] == 1 and r.get("schedule", "static") == "static" and "auto" not in r:
                cells[(r["method"], r["window"], r["init"])] = r["nfe_per_row"]
        for rows, by_m in own_over.items():
            for m, by_w in by_m.items():
                for w, v in by_w.items():
                    over.setdefault(str(rows), {}).setdefault(m, {}).setdefault(str(w), round(float(np.median(v)), 3))
        for m, v in own_comp.items():
            comp.setdefault(m, round(float(np.median(v)), 3))
    return {"model": model, "fingerprint": fingerprint, "image_tokens": N, "knobs": knobs, "overhead": over,
            "compile": comp, "cells": [{"method": m, "window": w, "init": i, "nfe_per_row": nfe}
                                       for (m, w, i), nfe in sorted(cells.items())]}


def knobs_key(knobs: dict) -> dict:
    return {k: round(float(knobs.get(k, d)), 4) for k, d in
            (("cfg_scale", 1.0), ("temperature", 1.0), ("top_k", 0), ("top_p", 1.0))}


def _entry_key(fingerprint: str, knobs: dict) -> dict:
    return {"model": fingerprint, "knobs": knobs_key(knobs)}


class Table:
    """The acceptance statistics of one model at one set of sampling knobs."""

    def __init__(self, prior: dict, observed: dict[Cell, np.ndarray] | None = None, bundled: bool = False):
        self.prior = prior
        self.observed = observed or {}
        self.bundled = bundled  # the prior was measured on this very model (and knobs)
        self.k = self._fit_k()

    @classmethod
    def for_model(cls, fingerprint: str, knobs: dict, prior: dict | None = None) -> "Table":
        """The table of the model with ``fingerprint`` (``cache.fingerprint``) at ``knobs``: the
        prior as measured when it is the prior's own model and knobs, else scaled by observations."""
        prior = load_prior() if prior is None else prior
        bundled = fingerprint == prior["fingerprint"] and knobs_key(knobs) == knobs_key(prior["knobs"])
        entry = cache.load("acceptance", _entry_key(fingerprint, knobs)) or {}
        observed = {}
        for key, rows in entry.get("cells", {}).items():
            try:
                m, w, i = key.split("|")
                observed[Cell(m, int(w), i)] = np.asarray(rows, np.float64)
            except (ValueError, TypeError):
                continue  # a damaged entry's cell: ignored
        return cls(prior, observed, bundled)

    def _fit_k(self) -> float:
        if self.bundled:
            return 1.0
        num, den = float(PSEUDO_ROWS), float(PSEUDO_ROWS)
        for cell, s in self.observed.items():
            p = self.prior["cells"].get(cell)
            if p is None or cell.method == "ar" or float(p.mean()) <= 1.0 + 1e-6:
                continue
            num += len(s) * (float(s.mean()) - 1.0) / (float(p.mean()) - 1.0)
            den += len(s)
        return max(num / den, 0.0)

    @property
    def source(self) -> str:
        if self.bundled and not self.observed:
            return "shipped"
        if not self.observed:
            return "prior (uncalibrated)"
        return "observed" if self.bundled else f"calibrated (k={self.k:.2f}, {sum(map(len, self.observed.values()))} rows)"

    def cells(self) -> list[Cell]:
        return sorted(c for c in set(self.prior["cells"]) | set(self.observed) if choosable(c.method))

    def compressions(self, cell: Cell) -> np.ndarray:
        """Step-compression samples (N / NFE per row) of ``cell``."""
        own = self.observed.get(cell)
        if own is not None and (len(own) >= OWN_CELL_ROWS or cell not in self.prior["cells"]):
            return own
        s = self.prior["cells"].get(cell)
        if s is None:  # a window without statistics: the nearest window's, same recipe and init
            same = [c for c in self.prior["cells"] if (c.method, c.init) == (cell.method, cell.init)]
            if not same:
                raise KeyError(cell)
            near = min(same, key=lambda c: (abs(np.log(c.window) - np.log(cell.window)), c.window))
            s = self.prior["cells"][near]
        return s if self.bundled else 1.0 + (s - 1.0) * self.k

    def iterations(self, cell: Cell, N: int, batch: int, schedule: str = "static") -> float:
        """Expected loop iterations per batch of ``batch`` rows (static: the slowest row's NFE;
        continuous: the mean NFE per row over the useful fraction, times the batch's share)."""
        if cell.method == "ar":
            return float(N)
        nfe = np.sort(N / self.compressions(cell))
        if schedule == "continuous":
            return float(nfe.mean()) / CONTINUOUS_USEFUL
        n = len(nfe)
        q = np.arange(n + 1) / n
        weights = q[1:] ** batch - q[:-1] ** batch  # P(max of `batch` draws is the i-th smallest)
        return float((weights * nfe).sum())

    def overhead(self, cell: Cell, rows: int) -> float:
        """The loop's work per iteration beyond the forward, as a fraction of the forward, for a
        forward of ``rows`` rows: the recipe's median over the windows the prior measured (else the
        drafting recipes' median; one bench cell's timing is too noisy to tell windows apart), not
        below 0, interpolated in log rows between the row counts the prior measured and clamped
        beyond them (the sampling work grows with the rows faster than the forward's does)."""
        by_rows = {r: v for r in self.prior["overhead"] if (v := self._overhead_at(r, cell.method)) is not None}
        if not by_rows:
            return 0.0
        known = sorted(by_rows)
        if rows <= known[0] or rows >= known[-1]:
            return by_rows[known[0] if rows <= known[0] else known[-1]]
        lo = max(r for r in known if r <= rows)
        hi = min(r for r in known if r >= rows)
        if lo == hi:
            return by_rows[lo]
        t = (np.log(rows) - np.log(lo)) / (np.log(hi) - np.log(lo))
        return float(by_rows[lo] + t * (by_rows[hi] - by_rows[lo]))

    def _overhead_at(self, rows: int, method: str) -> float | None:
        by_m = self.prior["overhead"][rows]
        if method in by_m:
            values = list(by_m[method].values())
        elif method != "ar":  # a recipe the prior lacks at these rows
            values = [float(np.median(list(v.values()))) for m, v in by_m.items() if m != "ar" and v]
        else:
            values = []
        return max(float(np.median(values)), 0.0) if values else None

    def compile_ratio(self, method: str) -> float | None:
        """A sampler's compile time over the one-token forward loop's (None: the prior has none)."""
        comp = self.prior.get("compile") or {}
        if method in comp:
            return comp[method]
        drafting = [v for m, v in comp.items() if m != "ar"]
        return float(np.median(drafting)) if drafting and method != "ar" else None


def choosable(method: str) -> bool:
    """Recipes the automatic choice may pick: the lossless sampling ones (not greedy jacobi)."""
    from sjd_jax.sampling.recipes import LOSSLESS

    return method in LOSSLESS and method != "jacobi"


def observe(fingerprint: str, knobs: dict, cell: Cell, nfe, N: int) -> None:
    """Record real rows' NFE of ``cell`` (rows that ran it from start to end) in the cache."""
    nfe = np.asarray(nfe, np.float64).reshape(-1)
    nfe = nfe[nfe > 0]
    if not nfe.size or cell.method == "ar" or not choosable(cell.method):
        return
    key = _entry_key(fingerprint, knobs)
    entry = cache.load("acceptance", key) or {"cells": {}}
    cells = entry.get("cells") if isinstance(entry.get("cells"), dict) else {}
    rows = [float(x) for x in cells.get(_cell_key(cell), []) if isinstance(x, (int, float))]
    rows = (rows + [round(float(N / x), 4) for x in nfe])[-KEEP_ROWS:]
    cells[_cell_key(cell)] = rows
    cache.store("acceptance", key, {"cells": cells})

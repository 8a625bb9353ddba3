"""One demo request: validate it (``validate``), run AR and the chosen sampler on the same seed
(``compare``), or do so in a worker thread while yielding progress lines (``stream``). No gradio
here: the UI only turns a ``ValueError`` into an in-page message and a ``Comparison`` into outputs.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from typing import Callable, Iterator

import numpy as np

from sjd_jax.demo.session import Session

MAX_WINDOW = 64
# lossless recipes offered besides "auto": "ar" is the reference shown next to it, "jacobi" is greedy
# (its reference is greedy AR, not the sampled AR beside it), lantern is lossy
METHODS = ("auto", "sjd", "sjd-gumbel", "sjd-ac", "sjd-pac", "sjd-gumbel-tree")


@dataclasses.dataclass(frozen=True)
class Request:
    """A validated request: ``cond`` a class id or a prompt; ``window`` an int or "auto"."""

    cond: int | str
    method: str = "sjd"
    window: int | str = 16
    seed: int = 0
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch: int = 1

    @property
    def knobs(self) -> dict:
        return dict(cfg_scale=self.cfg_scale, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


@dataclasses.dataclass(frozen=True)
class MethodRun:
    """One sampler's result: ``images`` uint8 [B, H, W, 3], ``tokens`` [B, N], ``nfe`` [B]
    forwards per image (prefill included), ``committed`` [B, N] tokens committed by forward k (k = 0
    the prefill), ``total_forwards`` of the batch, ``wall_s`` seconds (decode included)."""

    label: str
    images: np.ndarray
    tokens: np.ndarray
    nfe: np.ndarray
    committed: np.ndarray
    total_forwards: int
    wall_s: float
    auto: str | None = None  # the automatic choice's line, when "auto" chose

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def mean_nfe(self) -> float:
        return float(np.mean(self.nfe))

    @property
    def compression(self) -> float:
        """Step compression: N image tokens / mean NFE per image (AR: 1)."""
        return self.num_tokens / self.mean_nfe

    def summary(self) -> str:
        """One line, stable to parse: "NFE 52.0 per image · 256 tokens in 52.0 forwards → 4.92× · ..."."""
        B = self.nfe.shape[0]
        return (f"**{self.label}** · NFE {self.mean_nfe:.1f} per image · {self.num_tokens} tokens in "
                f"{self.mean_nfe:.1f} forwards → {self.compression:.2f}× · {B} image{'s' * (B != 1)}, "
                f"{self.total_forwards} forwards in all · {self.wall_s:.2f} s")


@dataclasses.dataclass(frozen=True)
class Comparison:
    request: Request
    ar: MethodRun
    chosen: MethodRun


def _number(name: str, value, integer: bool = False) -> float | int:
    """A finite number (an int when ``integer``; 3.0 counts as 3); ValueError naming ``name``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or (integer and x != int(x)):
        raise ValueError(f"{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    return int(x) if integer else x


def _window(value) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    w = _number("window", value.strip() if isinstance(value, str) else value, integer=True)
    if not 1 <= w <= MAX_WINDOW:
        raise ValueError(f"window must be 1..{MAX_WINDOW} or auto, got {w}")
    return w


def _cond(session: Session, cond) -> int | str:
    if session.kind == "text":
        if not isinstance(cond, str) or not cond.strip():
            raise ValueError("prompt must not be empty")
        return cond.strip()
    n = len(session.class_names)
    if isinstance(cond, str) and cond in session.class_names:  # a class name is fine too
        return session.class_names.index(cond)
    c = _number("class", cond, integer=True)
    if not 0 <= c < n:
        raise ValueError(f"class must be 0..{n - 1}, got {c}")
    return c


def validate(session: Session, *, cond, method="sjd", window=16, seed=0, cfg_scale=None, temperature=None,
             top_k=None, top_p=None, batch=1, max_batch: int = 8) -> Request:
    """The one place inputs are checked: -> a ``Request``, or ValueError with a message naming the
    field. None for a knob means the model's default."""
    from sjd_jax.core.validate import check_seed

    d = session.defaults
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    cfg = _number("cfg scale", d["cfg_scale"] if cfg_scale is None else cfg_scale)
    temp = _number("temperature", d["temperature"] if temperature is None else temperature)
    k = _number("top-k", d["top_k"] if top_k is None else top_k, integer=True)
    p = _number("top-p", d["top_p"] if top_p is None else top_p)
    b = _number("batch", batch, integer=True)
    if cfg < 0:
        raise ValueError(f"cfg scale must be >= 0, got {cfg}")
    if temp <= 0:
        raise ValueError(f"temperature must be > 0, got {temp}")
    if not 0 <= k <= session.vocab:
        raise ValueError(f"top-k must be 0 (off) .. {session.vocab}, got {k}")
    if not 0 < p <= 1:
        raise ValueError(f"top-p must be in (0, 1], got {p}")
    if not 1 <= b <= max_batch:
        raise ValueError(f"batch must be 1..{max_batch}, got {b}")
    s = check_seed(_number("seed", seed, integer=True), "seed")
    return Request(_cond(session, cond), method, _window(window), s, cfg, temp, k, p, b)


def run_one(session: Session, req: Request, recipe: str, progress=None) -> MethodRun:
    """``recipe`` on ``req``'s batch (the same condition in every row; row b's key is
    ``fold_in(seed, b)``, so AR and the chosen sampler see the same keys)."""
    t0 = time.perf_counter()
    s = session.sample([req.cond] * req.batch, req.seed, recipe, req.window, req.knobs, progress)
    wall = time.perf_counter() - t0
    out = s.out
    label = "AR" if s.recipe == "ar" else f"{s.recipe} W={s.window}"
    if recipe == "auto" or (req.window == "auto" and recipe != "ar"):
        label = f"auto → {label}"
    return MethodRun(label, np.asarray(s.images), np.asarray(out.tokens), np.asarray(out.nfe),
                     np.asarray(out.committed), int(out.iterations) + 1, wall, s.auto)


def compare(session: Session, req: Request, progress: Callable | None = None) -> Comparison:
    """AR then ``req.method``; ``progress(phase, done_tokens, total_tokens, iteration)``."""
    total = req.batch * session.num_tokens

    def phase(name: str):
        return None if progress is None else (lambda done, it, _rows: progress(name, done, total, it))

    ar = run_one(session, req, "ar", phase("AR"))
    chosen = run_one(session, req, req.method, phase(req.method if req.method != "auto" else "auto"))
    return Comparison(req, ar, chosen)


def stream(session: Session, req: Request, poll_s: float = 0.25) -> Iterator[str | Comparison]:
    """``compare`` in a worker thread: yields a progress line (at most every ``poll_s`` seconds,
    only when it changed) while decoding, then the ``Comparison``; re-raises the worker's error."""
    lines: queue.Queue = queue.Queue()
    result: dict = {}

    def report(name: str, done: int, total: int, it: int):
        lines.put(f"{name}: {done}/{total} tokens after {it} forward{'s' * (it != 1)}…")

    def work():
        try:
            lines.put("AR: compiling / starting…")
            result["value"] = compare(session, req, report)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    worker = threading.Thread(target=work, name="sjd-demo-request", daemon=True)
    worker.start()
    last = None
    while worker.is_alive() or not lines.empty():
        line = None
        try:
            line = lines.get(timeout=poll_s)
            while not lines.empty():  # only the newest line matters
                line = lines.get_nowait()
        except queue.Empty:
            pass
        if line is not None and line != last:
            last = line
            yield line
    worker.join()
    if "error" in result:
        raise result["error"]
    yield result["value"]

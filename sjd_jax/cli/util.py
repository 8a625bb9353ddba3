"""Shared plumbing of the ``sjd-jax`` subcommands: one parser class, one error path, one output policy.

* ``Parser``: ``--help`` prints the help on stdout and ends in ``SystemExit(0)``; a usage error (bad
  flag value, unknown flag, missing argument) prints ONE line
  ``sjd-jax CMD: error: <message>; see 'sjd-jax CMD --help'`` on stderr and ends in ``SystemExit(2)``.
* ``run(parser, argv, body)``: parses (both exits above become the return code, so every
  subcommand's ``main`` returns 0 for ``--help`` and 2 for a usage error) and runs ``body(args)``,
  turning the expected user errors (``ValueError``: bad values, unknown names, checkpoint problems;
  ``OSError``: missing / unreadable / unwritable files) into one ``sjd-jax CMD: error: ...`` line and
  exit status 2, never a traceback (an out-of-memory error too). ``SJD_JAX_TRACEBACK=1`` re-raises
  them (for debugging). Notes of the ``sjd_jax`` logger print as one ``sjd-jax CMD: note: ...``
  line; ``--quiet`` silences them and absl / orbax / jax warnings.
* ``add_output_flags``: ``--quiet`` (no progress bars, no informational output; errors still go to
  stderr) and ``--json`` (exactly one JSON object, the command's result, on stdout and nothing else;
  progress and information go to stderr). ``Output`` applies that policy.
* ``TokenProgress``: the decoding progress bar (stderr): tokens/s and mean accepted tokens per
  iteration, fed by ``generate(progress=...)``.
* ``sampler_choice``: the one way a subcommand turns its sampler flags into a ``SamplerChoice``
  (recipe, ``SamplerOptions``, knobs, lantern table), validated by ``sampling.resolve``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

USER_ERRORS = (ValueError, OSError)


def one_line(text: str) -> str:
    """``text`` on one line (a multi-line message is joined with '; ')."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error(prog: str, message) -> int:
    """Print ``prog: error: message`` as one line on stderr; returns the usage exit status 2."""
    print(one_line(f"{prog}: error: {message}"), file=sys.stderr, flush=True)
    return 2


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the ``sjd-jax`` conventions (raw description formatting,
    one-line usage errors that say where to look)."""

    def __init__(self, prog: str, description: str | None = None, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=prog, description=description, **kw)

    def error(self, message):  # argparse calls this for every usage error
        error(self.prog, f"{message}; see '{self.prog} --help'")
        raise SystemExit(2)


class _JsonFlag(argparse.Action):
    """``--json`` with an optional value: bare = JSON mode; ``--json PATH`` (an older spelling kept
    working) = JSON mode and PATH as the report file (``legacy_dest``)."""

    def __init__(self, option_strings, dest, legacy_dest=None, **kw):
        self.legacy_dest = legacy_dest
        super().__init__(option_strings, dest, nargs="?" if legacy_dest else 0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        if values:
            setattr(namespace, self.legacy_dest, Path(values))


def add_output_flags(ap: argparse.ArgumentParser, json_legacy_dest: str | None = None) -> None:
    """``--quiet`` and ``--json``, the same on every subcommand."""
    g = ap.add_argument_group("output")
    g.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars and no informational output (errors still go to stderr)")
    g.add_argument("--json", action=_JsonFlag, default=False, legacy_dest=json_legacy_dest,
                   metavar="PATH" if json_legacy_dest else None,
                   help="print exactly one JSON object, the command's result, on stdout and nothing else "
                        "(progress goes to stderr)" + (f"; --json PATH is the older spelling of "
                                                        f"--{json_legacy_dest.replace('_', '-')} PATH + --json"
                                                        if json_legacy_dest else ""))


def add_schedule_flags(ap) -> None:
    """``--schedule`` and ``--refill-rows`` (``sampling.batching``) for the commands that run batches."""
    ap.add_argument("--schedule", default="auto", choices=("auto", "static", "continuous"),
                    help="batch schedule: continuous batching refills finished rows with waiting items; static runs "
                         "each batch until its slowest row is done (auto: continuous for drafting samplers, static "
                         "for ar). Tokens are the same either way")
    ap.add_argument("--refill-rows", type=int, default=None,
                    help="continuous: rows prefilled per refill (default about batch/16, a multiple of the data axis)")


def check_refill_rows(value, batch: int, data: int = 1) -> None:
    """``--refill-rows``: 1..batch and a multiple of the mesh's data axis (before any work)."""
    if value is None:
        return
    from sjd_jax.core.validate import check_int

    check_int("--refill-rows", value, 1, batch)
    if value % data:
        raise ValueError(f"--refill-rows must be a multiple of the mesh's data axis ({data}), got {value}")


def jsonable(x):
    """``json.dumps`` default: dataclasses, paths, numpy values and tuples-in-objects."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # numpy / jax arrays and scalars
        return x.tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)


class Output:
    """Where a subcommand's output goes, from its ``--quiet`` / ``--json`` flags.

    ``progress``: whether to show progress bars (always on stderr). ``info(msg)``: informational
    line on stderr unless quiet. ``result(obj, text)``: the command's result: with ``--json`` the
    object as one JSON document on stdout, else ``text`` on stdout unless quiet."""

    def __init__(self, args):
        self.quiet = bool(getattr(args, "quiet", False))
        self.json = bool(getattr(args, "json", False))

    @property
    def progress(self) -> bool:
        return not self.quiet

    def info(self, msg: str) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)  # above any live bar
            sys.stderr.flush()

    def result(self, obj, text: str | None = None) -> None:
        if self.json:
            print(json.dumps(obj, default=jsonable), flush=True)
        elif text is not None and not self.quiet:
            print(text, flush=True)


class TokenProgress:
    """A decoding progress bar on stderr over committed image tokens: tqdm's rate is tokens/s, the
    postfix the mean accepted tokens per iteration (per row; the first token of a row comes from the
    prefill). Call ``begin(rows)`` before each ``generate`` call of a run and pass the object as its
    ``progress`` callback; several calls add up."""

    def __init__(self, total_tokens: int, desc: str, enabled: bool = True):
        from tqdm import tqdm

        self.enabled = enabled
        self.bar = tqdm(total=total_tokens, desc=desc, unit="tok", file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True)
        self._base = self._acc = self._rows_iters = 0  # tokens / accepted / row-iterations of past calls
        self._rows = 1
        self._last = (0, 0, 0)

    def begin(self, rows: int) -> TokenProgress | None:
        """Start a generate call over ``rows`` rows; returns the callback (None when disabled)."""
        done, _, row_iters = self._last
        self._base += done
        self._acc += max(done - self._rows, 0) if row_iters else 0
        self._rows_iters += row_iters
        self._rows, self._last = rows, (0, 0, 0)
        return self if self.enabled else None

    def mean_accepted(self) -> float:
        """Tokens committed by loop iterations per row iteration (iterations of rows still decoding)."""
        done, _, row_iters = self._last
        acc = self._acc + (max(done - self._rows, 0) if row_iters else 0)
        return acc / max(self._rows_iters + row_iters, 1)

    def __call__(self, done: int, it: int, row_iters: int) -> None:
        self._last = (done, it, row_iters)
        self.bar.update(self._base + done - self.bar.n)
        self.bar.set_postfix(acc_per_iter=f"{self.mean_accepted():.2f}", refresh=False)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclasses.dataclass(frozen=True)
class SamplerChoice:
    """A subcommand's sampler, from its flags, validated once (``sampler_choice``).

    ``name``: the recipe (what reports call "method"); ``options``: its ``SamplerOptions``;
    ``knobs``: cfg_scale / temperature / top_k / top_p; ``lantern``: the lossy lantern recipe's
    ``(neighbours [V, k], delta)``, else None; ``spec``: the resolved ``SamplerSpec`` (its window is
    the one that runs: 1 for ar); ``drafting``: the drafting options as reports write them."""

    name: str
    options: object
    knobs: dict
    lantern: tuple | None
    spec: object
    drafting: dict

    @property
    def window(self) -> int:
        return self.spec.window

    @property
    def lossless(self) -> bool:
        from sjd_jax.sampling.recipes import LOSSLESS

        return self.name in LOSSLESS

    def keywords(self) -> dict:
        """``generate``'s sampler arguments: ``options``, ``lantern`` and the knobs."""
        return dict(options=self.options, lantern=self.lantern, **self.knobs)


def sampler_choice(args, name: str, window: int, config, knobs: dict, codebook=None,
                   flags: bool = True) -> SamplerChoice:
    """Recipe ``name`` at ``window`` with the drafting flags (``recipes.add_arguments``; ``flags=False``:
    the recipe alone), checked against ``config`` and ``knobs`` as ``generate`` will (a ValueError,
    before anything is loaded or written). ``codebook``: the VQ's code vectors (lantern only)."""
    from sjd_jax.sampling import recipes, resolve

    if flags:
        options, lantern = recipes.from_args(args, name, window, codebook)
        drafting = recipes.describe(name, options, args)
    else:
        options, lantern, drafting = recipes.options(name, window), None, {}
    neighbours, delta = lantern if lantern is not None else (None, 0.0)
    spec = resolve(config, options, dict(knobs, lantern_delta=delta), neighbours=neighbours)
    return SamplerChoice(name, options, dict(knobs), lantern, spec, drafting)


class _Logs:
    """While a subcommand runs: notes of the ``sjd_jax`` logger as one ``PROG: note: ...`` line on
    stderr (none with ``--quiet``); with ``--quiet`` also no warnings from absl / orbax / jax."""

    CHATTY = ("absl", "orbax", "jax", "jax._src")

    def __init__(self, prog: str, quiet: bool):
        self.prog, self.quiet = prog, quiet

    def __enter__(self):
        self.log = logging.getLogger("sjd_jax")
        self.saved = (self.log.level, self.log.propagate,
                      {n: logging.getLogger(n).level for n in self.CHATTY})
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter(f"{self.prog}: %(message)s"))
        self.log.addHandler(self.handler)
        self.log.propagate = False
        self.log.setLevel(logging.ERROR if self.quiet else logging.INFO)
        if self.quiet:
            for n in self.CHATTY:
                logging.getLogger(n).setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self.log.removeHandler(self.handler)
        level, propagate, chatty = self.saved
        self.log.setLevel(level)
        self.log.propagate = propagate
        for n, lv in chatty.items():
            logging.getLogger(n).setLevel(lv)


def _quiet_after_error() -> None:
    """A failed orbax operation leaves coroutines that Python reports at exit (never awaited, or
    failing in interpreter shutdown): noise after the one error line."""
    import atexit
    import warnings

    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    atexit.register(setattr, sys, "unraisablehook", lambda unraisable: None)  # at interpreter exit only


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e).split("\n", 1)[0]


def run(parser: argparse.ArgumentParser, argv, body, errors: tuple = USER_ERRORS) -> int:
    """Parse ``argv`` and run ``body(args) -> exit status``; see the module docstring."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        with _Logs(parser.prog, bool(getattr(args, "quiet", False))):
            return body(args)
    except errors as e:
        if os.environ.get("SJD_JAX_TRACEBACK"):
            raise
        _quiet_after_error()
        msg = str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename is not None and e.strerror:
            msg = f"{e.filename}: {e.strerror}"
        if isinstance(e, KeyError):
            msg = f"missing entry {msg}"
        return error(parser.prog, msg)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # an out-of-memory the size checks did not foresee: still one line
        if not _out_of_memory(e) or os.environ.get("SJD_JAX_TRACEBACK"):
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return error(parser.prog, f"out of memory ({first}); use a smaller batch, window or model")


def set_cpu_devices(n: int | None, exact: bool = True) -> None:
    """``--cpu-devices N``: split the CPU into N JAX devices (before the backend starts; in-process
    callers with the backend up must already have N, or at least N unless ``exact``). At most
    ``memory.MAX_CPU_DEVICES``."""
    if n is None:
        return
    import jax

    from sjd_jax.core.validate import check_int
    from sjd_jax.parallel.memory import MAX_CPU_DEVICES

    check_int("--cpu-devices", n, 1, MAX_CPU_DEVICES)
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backend already up (called in-process): fine if it has that many
        if jax.device_count() < n or (exact and jax.device_count() != n):
            raise ValueError(f"--cpu-devices {n}: JAX already started with {jax.device_count()} devices "
                             f"in this process") from None

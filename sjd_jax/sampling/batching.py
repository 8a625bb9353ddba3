"""Sampling a stream of conditions in batches: static chunks, or continuous batching.

``generate_stream(params, config, conds, key, options, batch=B)`` takes any iterable of per-item
conditions and yields each finished ``Item`` (its index in the stream, tokens, NFE, commits).

* ``schedule="static"``: chunks of B items, each run until its slowest row is done (the last
  chunk padded to B so one compile serves the run).
* ``schedule="continuous"`` (what ``"auto"``, the default, picks for every drafting sampler): B
  row slots; the loop runs in segments (``continuous``) that stop once ``refill_rows`` slots have
  finished; their items are emitted and the slots get the next pending items, prefilled into their
  cache rows. Rows never wait for a batch's slowest. Once no item waits, the rows left move to
  smaller batches on CPUs (``drain``).

Item i always uses the key ``fold_in(key, example_ids[i])`` (default i), so its tokens are those of
``generate`` with that example id, whatever the schedule, batch size or mesh.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import split_cond
from sjd_jax.core.validate import check_cond
from sjd_jax.parallel import distributed as dist
from sjd_jax.parallel import sharding as shd
from sjd_jax.parallel.memory import require_sampler
from sjd_jax.sampling import compiled, continuous
from sjd_jax.sampling import keys as K
from sjd_jax.sampling.generate import options_from_keywords
from sjd_jax.sampling.options import Knobs, SamplerOptions, resolve

SCHEDULES = ("static", "continuous")


def pick_schedule(schedule: str, spec) -> str:
    """``"auto"``: continuous batching for the drafting samplers (their rows finish at different
    iterations), static batches for AR (every row takes N - 1 iterations: nothing to refill)."""
    if schedule == "auto":
        return "static" if spec.window == 1 else "continuous"
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of auto, {', '.join(SCHEDULES)}, got {schedule!r}")
    return schedule


@dataclasses.dataclass(frozen=True)
class Item:
    index: int  # position in the input stream
    example_id: int  # the item's key is fold_in(key, example_id)
    tokens: np.ndarray  # [N] int32 image tokens
    nfe: int  # model forwards for this item (its prefill included)
    committed: np.ndarray  # [N] tokens committed by each of its forwards (0 = the prefill)
    branch_hits: int  # iterations in which a draft-tree side branch was accepted


@dataclasses.dataclass
class ScheduleStats:
    """How busy the batch was: ``useful_fraction`` = row iterations that advanced an item / slot
    iterations run (rows x loop iterations). The prefills are not counted on either side."""

    schedule: str
    batch: int
    refill_rows: int
    drain: str | None  # continuous: "shrink" or "keep"
    items: int = 0
    iterations: int = 0  # loop iterations run (each one forward over all slots of the batch then)
    slot_iterations: int = 0  # slots x iterations (the drain may run fewer slots than ``batch``)
    row_iterations: int = 0  # of those slot-iterations, the ones that advanced an item
    segments: int = 0  # device calls of the loop (static: chunks)
    refills: int = 0  # refill prefills (R rows each)
    host_s: float = 0.0  # host time between a segment's results and the next segment's dispatch
    # continuous: the part of the run while items were still waiting (before the final drain)
    steady_iterations: int = 0
    steady_row_iterations: int = 0

    def add(self, ran: int, slots: int, row_iterations: int, items: int, steady_row_iterations: int | None) -> None:
        """A segment (or static chunk) that ran ``ran`` iterations over ``slots`` rows and finished
        ``items`` items of ``row_iterations``; ``steady_row_iterations``: while items were waiting."""
        self.iterations += ran
        self.slot_iterations += ran * slots
        self.row_iterations += row_iterations
        self.items += items
        if steady_row_iterations is not None:
            self.steady_iterations += ran
            self.steady_row_iterations += steady_row_iterations

    @property
    def useful_fraction(self) -> float:
        return self.row_iterations / max(1, self.slot_iterations)

    @property
    def steady_useful_fraction(self) -> float | None:
        """While items were waiting: what a long run approaches (the last B items' drain aside)."""
        return self.steady_row_iterations / (self.batch * self.steady_iterations) if self.steady_iterations else None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        steady = self.steady_useful_fraction
        d.update(useful_fraction=round(self.useful_fraction, 4), host_s=round(self.host_s, 4),
                 steady_useful_fraction=None if steady is None else round(steady, 4),
                 host_ms_per_segment=round(1e3 * self.host_s / max(1, self.segments), 3))
        return d


DRAINS = ("shrink", "keep")


def pick_drain(drain: str, mesh=None) -> str:
    """``"auto"``: shrink the batch in the drain on CPUs (a forward there costs about its rows, so
    half the rows is about half the time, for one more compile per size); keep it on accelerators,
    where a small batch's forward costs about as much as a full one's."""
    if drain == "auto":
        devices = jax.devices() if mesh is None else list(mesh.devices.flat)
        return "shrink" if devices[0].platform == "cpu" else "keep"
    if drain not in DRAINS:
        raise ValueError(f"drain must be one of auto, {', '.join(DRAINS)}, got {drain!r}")
    return drain


def default_refill_rows(batch: int, data: int = 1) -> int:
    """Rows refilled per prefill: about B/16 (a slot waits for R - 1 others: ~R/2B of the batch idle,
    ~3%), at least one per data shard and a multiple of the data-axis size."""
    r = max(1, batch // 16)
    return min(batch, -(-r // data) * data)


class Stream:
    """Iterate it for the finished ``Item``s; ``stats`` (``ScheduleStats``) fills as it runs."""

    def __init__(self, items: Iterator[Item], stats: ScheduleStats):
        self._items, self.stats = items, stats

    def __iter__(self) -> Iterator[Item]:
        return self._items


def _one(config: GPTConfig, cond):
    """One item's condition -> (cond row, mask row) as host arrays (``split_cond`` on a batch of 1)."""
    if isinstance(cond, dict):
        one = {k: np.asarray(v)[None] for k, v in cond.items()}
    elif isinstance(cond, tuple):
        one = type(cond)(*(np.asarray(v)[None] for v in cond))
    else:
        one = np.asarray(cond)[None]
    x, mask = split_cond(config, one)
    return np.asarray(x)[0], np.asarray(mask)[0]


class _Source:
    """The input stream as validated rows: (indices, example ids, cond [k, ...], mask [k, C])."""

    def __init__(self, config: GPTConfig, conds: Iterable, example_ids: Iterable | None):
        self.config, self.first = config, None
        self._it = enumerate(conds)
        self._ids = None if example_ids is None else iter(example_ids)

    def take(self, k: int):
        got = list(itertools.islice(self._it, k))
        if not got:
            return None
        idx = np.asarray([i for i, _ in got], np.int64)
        rows = [_one(self.config, c) for _, c in got]
        if self.first is None:
            self.first = (rows[0][0].shape, rows[0][1].shape)
        for i, (x, m) in zip(idx, rows):
            if (x.shape, m.shape) != self.first:
                raise ValueError(f"item {i}: condition shape {x.shape} (mask {m.shape}) differs from the first "
                                 f"item's {self.first[0]} (mask {self.first[1]}); pad every prompt to one length")
        x, mask = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
        check_cond(self.config, x, mask, len(rows), allow_null=False)
        if self._ids is None:
            ids = idx
        else:
            ids = np.asarray(list(itertools.islice(self._ids, len(rows))))
            if ids.shape != idx.shape or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
                raise ValueError("example_ids must give one non-negative integer per condition")
        return idx, ids, x, mask


def generate_stream(params, config: GPTConfig, conds: Iterable, key, options: SamplerOptions | None = None, *,
                    batch: int, schedule: str = "auto", refill_rows: int | None = None, drain: str = "auto",
                    example_ids=None, mesh=None, ordered: bool = False, **keywords) -> Stream:
    """Sample every condition of ``conds`` (class ids, or one caption / prompt per item in any form
    ``generate`` takes for a row) in batches of ``batch`` rows; yields ``Item``s as they finish
    (``ordered=True``: in input order). ``options`` and keywords as in ``generate``; ``key`` is one
    key or int seed. ``schedule``: "auto" (``pick_schedule``), "static" or "continuous";
    ``refill_rows``: rows prefilled per refill (default ``default_refill_rows``); ``drain``: once no
    item waits, "shrink" the batch as its rows finish or "keep" it ("auto": ``pick_drain``).
    Returns a ``Stream`` (iterable; ``.stats`` says how busy the batch was)."""
    options, knob_values, neighbours, delta = options_from_keywords(options, keywords)
    spec = resolve(config, options, dict(knob_values, lantern_delta=delta), neighbours=neighbours, mesh=mesh)
    schedule, drain = pick_schedule(schedule, spec), pick_drain(drain, mesh)
    key = K.as_key(key)
    if key.ndim != 0:
        raise ValueError("generate_stream takes one key (item i uses fold_in(key, example_ids[i]))")
    data = 1 if mesh is None else shd.mesh_shape(mesh)["data"]
    if not isinstance(batch, (int, np.integer)) or batch < 1 or batch % data:
        raise ValueError(f"batch must be a positive multiple of the mesh's data axis ({data}), got {batch!r}")
    R = default_refill_rows(batch, data) if refill_rows is None else refill_rows
    if schedule == "continuous" and (not isinstance(R, (int, np.integer)) or not 1 <= R <= batch or R % data):
        raise ValueError(f"refill_rows must be 1..{batch} and a multiple of the data axis ({data}), got {R!r}")
    require_sampler(spec, batch, mesh)
    knobs = Knobs.make(**knob_values, lantern_delta=delta)
    neighbours = None if neighbours is None else jnp.asarray(neighbours, jnp.int32)
    run = _Run(spec, params, key, knobs, neighbours, mesh, data)
    stats = ScheduleStats(schedule, batch, R if schedule == "continuous" else batch,
                          drain if schedule == "continuous" else None)
    source = _Source(config, conds, example_ids)
    if schedule == "static":
        items = run.static(source, batch, stats)
    else:
        items = run.continuous(source, batch, R, drain == "shrink", stats)
    return Stream(_in_order(items) if ordered else items, stats)


def _in_order(items: Iterator[Item]) -> Iterator[Item]:
    waiting, nxt = {}, 0
    for item in items:
        waiting[item.index] = item
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1
    yield from (waiting[i] for i in sorted(waiting))


class _Slots:
    """Host view of the B row slots: the input index and example id of each slot's item (-1: empty)
    and each slot's NFE at the last segment's end (to count the row iterations of a segment)."""

    def __init__(self, B: int, idx, ids):
        self.idx = np.full((B,), -1, np.int64)
        self.ids = np.zeros((B,), np.int64)
        self.idx[:idx.size], self.ids[:idx.size] = idx, ids
        self.seen = np.ones((B,), np.int64)

    def free(self) -> int:
        return int((self.idx < 0).sum())

    def busy(self) -> int:
        return int((self.idx >= 0).sum())

    def advanced(self, nfe) -> int:
        """Row iterations since the last call, over the slots holding an item."""
        step = int((nfe - self.seen)[self.idx >= 0].sum())
        self.seen = np.asarray(nfe, np.int64).copy()
        return step

    def fill(self, idx, ids) -> np.ndarray:
        """New items into the first free slots; returns those slots."""
        where = np.flatnonzero(self.idx < 0)[:idx.size]
        self.idx[where], self.ids[where], self.seen[where] = idx, ids, 1
        return where

    def keep(self, slots) -> None:
        self.idx, self.ids, self.seen = self.idx[slots], self.ids[slots], self.seen[slots]


class _Run:
    """One stream's sampler: spec, weights, keys and placement on the mesh."""

    def __init__(self, spec, params, key, knobs, neighbours, mesh, data: int):
        self.spec, self.key, self.mesh, self.data = spec, key, mesh, data
        self.N = spec.config.num_image_tokens
        if mesh is not None:
            rep = shd.replicated(mesh)
            params = shd.place_params(params, mesh)
            knobs = jax.tree.map(lambda v: shd.to_global(v, rep), knobs)
            neighbours = None if neighbours is None else shd.to_global(neighbours, rep)
        self.params, self.knobs, self.neighbours = params, knobs, neighbours

    def rows(self, ids) -> np.ndarray:
        """Raw ``[k, 2]`` uint32 row keys ``fold_in(key, id)``."""
        return np.asarray(jax.random.key_data(K.row_keys(self.key, jnp.asarray(ids, jnp.uint32))))

    def put(self, x, what="rows", rows=True):
        """Host rows (sharded over data) or a replicated value, as the executables take them."""
        if self.mesh is None:
            return jnp.asarray(x)
        sh = shd.batch_sharding(self.mesh, np.shape(x), what) if rows else shd.replicated(self.mesh)
        return shd.to_global(np.asarray(x), sh)

    def emit(self, out, slots, idx, ids) -> list[Item]:
        """The finished rows ``slots`` of an output (fetched to every process) as items."""
        tokens, nfe, committed, hits = (dist.gather(x) for x in (out.tokens, out.nfe, out.committed, out.branch_hits))
        return [Item(int(idx[s]), int(ids[s]), tokens[s], int(nfe[s]), committed[s], int(hits[s])) for s in slots]

    def static(self, source: _Source, B: int, stats: ScheduleStats) -> Iterator[Item]:
        """Chunks of B items (the last padded with copies), each dispatched before the last one's
        items are handed out."""
        pending = None
        while True:
            got = source.take(B)
            launched = None
            if got is not None:
                idx, ids, x, mask = got
                k = idx.size
                pad = np.resize(np.arange(k), B)  # same shape every chunk; copies are dropped
                cond, prefix_mask, rows = (self.put(x[pad], "cond"), self.put(mask[pad], "prefix mask"),
                                           self.put(self.rows(ids[pad]), "row keys"))
                exe = compiled.compile(self.spec, cond, prefix_mask, rows, self.neighbours)
                out = exe.run(self.params, cond, prefix_mask, rows, self.knobs, self.neighbours)
                launched = (out, idx, ids, k)
                stats.segments += 1
            if pending is not None:
                out, idx, ids, k = pending
                items = self.emit(out, range(k), idx, ids)
                stats.add(int(dist.gather(out.iterations)), B, sum(it.nfe - 1 for it in items), k, None)
                yield from items
            if launched is None:
                return
            pending = launched

    def continuous(self, source: _Source, B: int, R: int, shrink: bool, stats: ScheduleStats) -> Iterator[Item]:
        """B slots in segments; between them finished items leave and pending ones are refilled.
        Once no item waits, ``shrink`` moves the unfinished rows to batches of B/2, B/4, B/8 (the
        drain: on a CPU a forward costs about its rows)."""
        first = source.take(B)
        if first is None:
            return
        idx0, ids0, x0, mask0 = first
        B = min(B, -(-idx0.size // self.data) * self.data)  # fewer items than the batch: shrink it
        R = min(R, B)
        stats.batch, stats.refill_rows = B, R
        pad = np.resize(np.arange(idx0.size), B)
        shapes = [jnp.asarray(a) for a in (x0[pad], mask0[pad], x0[pad[:R]], mask0[pad[:R]])]
        seg = continuous.build(self.spec, *shapes, self.neighbours)
        slots = _Slots(B, idx0, ids0)
        rows = self.put(self.rows(ids0[pad]), "row keys")
        state = seg.start(self.params, self.put(x0[pad], "cond"), self.put(mask0[pad], "prefix mask"), rows,
                          self.knobs, self.neighbours)
        if idx0.size < B:
            state = seg.retire(state, self.put(slots.idx < 0, "empty slots"))
        more, it_before, ready = idx0.size == B, 0, []
        floor = max(1, self.data, B // 8)  # the drain's smallest batch: at most three more compiles
        while (slots.idx >= 0).any():
            half = seg.B // 2 if shrink and not more and seg.B // 2 >= floor and (seg.B // 2) % self.data == 0 else 0
            target = slots.free() + R if more else seg.B - half  # drain: until it fits half the batch
            state, out, done = seg.run(self.params, state, rows, self.knobs, self.neighbours,
                                       self.put(np.int32(target), rows=False))
            stats.segments += 1
            yield from ready  # the consumer works while the device runs the segment
            done, nfe = dist.gather(done), dist.gather(out.nfe)
            t0 = time.perf_counter()
            finished = np.flatnonzero(done & (slots.idx >= 0))
            ready = self.emit(out, finished, slots.idx, slots.ids)
            it_now = int(dist.gather(out.iterations))
            ran, it_before = it_now - it_before, it_now
            stats.add(ran, seg.B, sum(it.nfe - 1 for it in ready), len(ready),
                      slots.advanced(nfe) if more else None)
            slots.idx[finished] = -1
            while more and slots.free():
                got = source.take(min(R, slots.free()))
                if got is None:
                    more = False
                    break
                state, rows = self._refill(seg, state, rows, got, slots, R)
                stats.refills += 1
            if not more and half and 0 < slots.busy() <= half:
                seg, state, rows = self._shrink(seg, state, rows, slots, shapes, half)
            stats.host_s += time.perf_counter() - t0
        yield from ready

    def _shrink(self, seg, state, rows, slots: "_Slots", shapes, size: int):
        """The unfinished rows (and finished ones to fill up) into a ``size``-row sampler (the loop
        counter ``it`` moves with the state unchanged)."""
        small = continuous.build(self.spec, shapes[0][:size], shapes[1][:size], *shapes[2:], self.neighbours)
        keep = np.concatenate([np.flatnonzero(slots.idx >= 0), np.flatnonzero(slots.idx < 0)])[:size]
        state, rows = small.take(state, rows, self.put(keep.astype(np.int32), rows=False))
        slots.keep(keep)
        return small, state, rows

    def _refill(self, seg, state, rows, got, slots: "_Slots", R: int):
        """``got``'s items into the first free slots (an R-row prefill; unused rows write nowhere)."""
        idx, ids, x, mask = got
        k = idx.size
        pad = np.resize(np.arange(k), R)
        where = np.full((R,), seg.B, np.int32)
        where[:k] = slots.fill(idx, ids)
        return seg.refill(self.params, state, rows, self.put(x[pad], "refill cond"),
                          self.put(mask[pad], "refill prefix mask"), self.put(self.rows(ids[pad]), "refill keys"),
                          self.put(where, rows=False), self.knobs, self.neighbours)

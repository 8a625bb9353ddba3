"""Sampling a stream of conditions in batches: static chunks, or continuous batching.

``generate_stream(params, config, conds, key, options, batch=B)`` takes any iterable of per-item
conditions and yields each finished ``Item`` (its index in the stream, tokens, NFE, commits).

* ``schedule="static"``: chunks of B items, each run until its slowest row is done (the last
  chunk padded to B so one compile serves the run).
* ``schedule="continuous"`` (``"auto"``, the default, for every drafting sampler): B row slots; the loop runs in segments (``continuous``)
  that stop once ``refill_rows`` slots have finished; their items are emitted and the slots get
  the next pending items, prefilled into their cache rows. Rows never wait for a batch's slowest.

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
    """How busy the batch was: ``useful_fraction`` = row iterations that advanced an item / (B x
    loop iterations run). The prefills are not counted on either side."""

    schedule: str
    batch: int
    refill_rows: int
    items: int = 0
    iterations: int = 0  # loop iterations run (each one forward over all B slots)
    row_iterations: int = 0  # of those slot-iterations, the ones that advanced an item
    segments: int = 0  # device calls of the loop (static: chunks)
    refills: int = 0  # refill prefills (R rows each)
    host_s: float = 0.0  # host time between a segment's results and the next segment's dispatch
    # continuous: the part of the run while items were still waiting (before the final drain)
    steady_iterations: int = 0
    steady_row_iterations: int = 0

    @property
    def useful_fraction(self) -> float:
        return self.row_iterations / max(1, self.batch * self.iterations)

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
                    batch: int, schedule: str = "auto", refill_rows: int | None = None, example_ids=None,
                    mesh=None, ordered: bool = False, **keywords) -> Stream:
    """Sample every condition of ``conds`` (class ids, or one caption / prompt per item in any form
    ``generate`` takes for a row) in batches of ``batch`` rows; yields ``Item``s as they finish
    (``ordered=True``: in input order). ``options`` and keywords as in ``generate``; ``key`` is one
    key or int seed. ``schedule``: "auto" (``pick_schedule``), "static" or "continuous";
    ``refill_rows``: rows prefilled per refill (default ``default_refill_rows``). Returns a ``Stream`` (iterable; ``.stats`` says how busy the batch was)."""
    options, knob_values, neighbours, delta = options_from_keywords(options, keywords)
    spec = resolve(config, options, dict(knob_values, lantern_delta=delta), neighbours=neighbours, mesh=mesh)
    schedule = pick_schedule(schedule, spec)
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
    stats = ScheduleStats(schedule, batch, R if schedule == "continuous" else batch)
    source = _Source(config, conds, example_ids)
    items = run.static(source, batch, stats) if schedule == "static" else run.continuous(source, batch, R, stats)
    return Stream(_in_order(items) if ordered else items, stats)


def _in_order(items: Iterator[Item]) -> Iterator[Item]:
    waiting, nxt = {}, 0
    for item in items:
        waiting[item.index] = item
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1
    yield from (waiting[i] for i in sorted(waiting))


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
                exe = compiled.compile(self.spec, jnp.asarray(x[pad]), jnp.asarray(mask[pad]),
                                       jax.ShapeDtypeStruct((B, 2), jnp.uint32), self.neighbours)
                out = exe.run(self.params, self.put(x[pad], "cond"), self.put(mask[pad], "prefix mask"),
                              self.put(self.rows(ids[pad]), "row keys"), self.knobs, self.neighbours)
                launched = (out, idx, ids, k)
                stats.segments += 1
            if pending is not None:
                out, idx, ids, k = pending
                items = self.emit(out, range(k), idx, ids)
                stats.iterations += int(dist.gather(out.iterations))
                stats.items += k
                stats.row_iterations += sum(it.nfe - 1 for it in items)
                yield from items
            if launched is None:
                return
            pending = launched

    def continuous(self, source: _Source, B: int, R: int, stats: ScheduleStats) -> Iterator[Item]:
        """B slots in segments; between them finished items leave and pending ones are refilled."""
        first = source.take(B)
        if first is None:
            return
        idx0, ids0, x0, mask0 = first
        B = min(B, -(-idx0.size // self.data) * self.data)  # fewer items than the batch: shrink it
        R = min(R, B)
        stats.batch, stats.refill_rows = B, R
        pad = np.resize(np.arange(idx0.size), B)
        seg = continuous.build(self.spec, jnp.asarray(x0[pad]), jnp.asarray(mask0[pad]), jnp.asarray(x0[pad[:R]]),
                               jnp.asarray(mask0[pad[:R]]), self.neighbours)
        slot_idx = np.full((B,), -1, np.int64)  # input index of the item in each slot (-1: empty)
        slot_ids = np.zeros((B,), np.int64)
        slot_idx[:idx0.size], slot_ids[:idx0.size] = idx0, ids0
        rows = self.put(self.rows(ids0[pad]), "row keys")
        state = seg.start(self.params, self.put(x0[pad], "cond"), self.put(mask0[pad], "prefix mask"), rows,
                          self.knobs, self.neighbours)
        if idx0.size < B:
            state = seg.retire(state, self.put(slot_idx < 0, "empty slots"))
        more, it_before, ready = idx0.size == B, 0, []
        seen = np.ones((B,), np.int64)  # each slot's NFE at the last segment's end (1: just prefilled)
        while (slot_idx >= 0).any():
            target = int((slot_idx < 0).sum()) + R if more else B
            state, out, done = seg.run(self.params, state, rows, self.knobs, self.neighbours,
                                       self.put(np.int32(target), rows=False))
            stats.segments += 1
            yield from ready  # the consumer works while the device runs the segment
            done, nfe = dist.gather(done), dist.gather(out.nfe)
            t0 = time.perf_counter()
            finished = np.flatnonzero(done & (slot_idx >= 0))
            ready = self.emit(out, finished, slot_idx, slot_ids)
            it_now = int(dist.gather(out.iterations))
            stats.iterations, it_before, ran = stats.iterations + it_now - it_before, it_now, it_now - it_before
            stats.items += len(ready)
            stats.row_iterations += sum(it.nfe - 1 for it in ready)
            if more:
                stats.steady_iterations += ran
                stats.steady_row_iterations += int((nfe - seen)[slot_idx >= 0].sum())
            seen = nfe.astype(np.int64)
            slot_idx[finished] = -1
            while more and (slot_idx < 0).any():
                got = source.take(min(R, int((slot_idx < 0).sum())))
                if got is None:
                    more = False
                    break
                seen[np.flatnonzero(slot_idx < 0)[:got[0].size]] = 1
                state, rows = self._refill(seg, state, rows, got, slot_idx, slot_ids, R, B)
                stats.refills += 1
            stats.host_s += time.perf_counter() - t0
        yield from ready

    def _refill(self, seg, state, rows, got, slot_idx, slot_ids, R: int, B: int):
        """``got``'s items into the first free slots (an R-row prefill; unused rows write nowhere)."""
        idx, ids, x, mask = got
        k = idx.size
        slots = np.flatnonzero(slot_idx < 0)[:k]
        slot_idx[slots], slot_ids[slots] = idx, ids
        pad = np.resize(np.arange(k), R)
        where = np.full((R,), B, np.int32)
        where[:k] = slots
        return seg.refill(self.params, state, rows, self.put(x[pad], "refill cond"),
                          self.put(mask[pad], "refill prefix mask"), self.put(self.rows(ids[pad]), "refill keys"),
                          self.put(where, rows=False), self.knobs, self.neighbours)

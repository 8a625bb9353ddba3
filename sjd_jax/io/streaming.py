"""Batch generation over a device mesh, streamed to disk and resumable.

``DIR`` layout (only process 0 writes; every file goes through ``atomic.write_file``):

* ``run.json`` — the settings; a rerun with other settings is refused instead of mixing runs.
* ``images/NNNNNN.png`` — one image per item (item i: class ``classes[i % len(classes)]``, seed
  ``fold_in(seed, i)``; the same items, in the same order, as the grid of ``sjd-jax generate``).
* ``parts/NNNNNN-MMMMMM.npz`` — per group of finished items (first and last id): item ids, tokens,
  NFE and commits. Written after the group's PNGs, so an item counts as done only when everything
  of it is on disk.
* ``tokens.npy`` ``[n_items, N]`` int32, ``labels.npy`` ``[n_items]`` and ``stats.json`` — when
  every item is done.

A rerun skips the items found in ``parts/`` whose PNG is intact (process 0 reads them, checks each
PNG's CRCs and broadcasts the list); a missing or damaged PNG is generated again. Every chunk has
the same global shape ``batch_per_device x data-axis size`` (a batch larger than the work left
shrinks to it), so one compile serves the run and every host traces identical shapes. With
continuous batching (``sampling.batching``, the default for drafting samplers) finished rows are
written as they finish and their slots refilled; every process follows the same schedule.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.io import atomic
from sjd_jax.parallel import distributed as dist

FORMAT = "sjd-jax-batch/1"


def _save_npz(path: Path, **arrays) -> None:
    atomic.write_file(path, lambda f: np.savez(f, **arrays))


def _save_npy(path: Path, array) -> None:
    atomic.write_file(path, lambda f: np.save(f, array))


def _item_ok(png: Path) -> bool:
    """A finished item's PNG is there, non-empty and passes its CRCs (a truncated or damaged file
    does not)."""
    from PIL import Image

    try:
        with Image.open(png) as im:
            im.verify()  # chunk CRCs and structure, without decoding the pixels
        return True
    except Exception:  # missing, empty, truncated, not a PNG: generate it again
        return False


def _prepare_dir(out_dir: Path, settings: dict) -> np.ndarray | str:
    """Process 0: create/validate ``out_dir``; returns the ids already done, or an error message."""
    settings = json.loads(json.dumps(settings))  # as run.json holds them (a tree's tuple is a list there)
    try:
        if out_dir.exists() and not out_dir.is_dir():
            return f"{out_dir} exists and is not a directory"
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / "parts").mkdir(exist_ok=True)
    except OSError as e:
        return f"cannot create {out_dir}: {e.strerror}"
    run = out_dir / "run.json"
    if run.exists():
        try:
            old = json.loads(run.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{run} is not valid JSON; remove it or use another --out-dir"
        if not isinstance(old, dict):
            return f"{run} is not a settings object (a JSON {type(old).__name__}); remove it or use another --out-dir"
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            return (f"{out_dir} holds a run with other settings ({', '.join(diff)} differ); "
                    f"use another --out-dir or remove it")
    else:
        atomic.write_json(run, settings)
    done = []
    for part in sorted((out_dir / "parts").glob("*.npz")):
        try:
            with np.load(part) as z:
                ids = np.asarray(z["ids"])
                if z["tokens"].shape != (ids.size, settings["image_tokens"]):
                    raise ValueError("tokens shape")
            done.append(ids)
        except Exception:  # a damaged part: its items are simply generated again
            print(f"sjd-jax: ignoring unreadable {part}", file=sys.stderr)
            part.unlink()
    done = np.unique(np.concatenate(done)) if done else np.zeros((0,), np.int64)
    if settings["png"]:  # an item counts as done only if its PNG is intact
        bad = [i for i in done if not _item_ok(out_dir / "images" / f"{i:06d}.png")]
        if bad:
            print(f"sjd-jax: {len(bad)} finished item(s) have a missing or damaged PNG (first: "
                  f"images/{bad[0]:06d}.png); generating them again", file=sys.stderr)
            done = np.setdiff1d(done, bad)
    return done


def _agree_on_done(out_dir: Path, settings: dict, total: int) -> np.ndarray:
    """Done mask ``[total]`` as process 0 sees it, on every process (or the same error everywhere)."""
    status = np.zeros((total + 1,), np.int32)
    msg = None
    if dist.is_writer():
        res = _prepare_dir(out_dir, settings)
        if isinstance(res, str):
            msg, status[0] = res, 1
        else:
            ids = res[res < total]
            status[1 + ids] = 1
    status = dist.broadcast(status)
    if status[0]:
        raise ValueError(msg or "process 0 refused the output directory (see its error)")
    return status[1:].astype(bool)


def run(bundle, out_dir, sampler, *, classes, n_per_class: int, seed: int, batch_per_device: int, mesh,
        settings_extra: dict, png: bool = True, quiet: bool = False, schedule: str = "auto",
        refill_rows: int | None = None) -> dict:
    """Generate ``n_per_class * len(classes)`` items into ``out_dir`` with ``sampler`` (a validated
    ``cliutil.SamplerChoice``); returns the stats dict. ``settings_extra`` joins the settings
    ``run.json`` keeps (a rerun must match them). ``schedule``/``refill_rows``: the batch schedule
    (``sampling.batching``; tokens do not depend on it, so a rerun may change it)."""
    from sjd_jax.parallel.sharding import mesh_shape
    from sjd_jax.sampling.batching import generate_stream, pick_schedule

    out_dir = Path(out_dir)
    N = bundle.gpt_config.num_image_tokens
    classes = [int(x) for x in classes]
    total = n_per_class * len(classes)
    labels = np.asarray(classes, np.int32)[np.arange(total) % len(classes)]
    settings = {"format": FORMAT, "classes": classes, "n_per_class": n_per_class, "seed": seed,
                "method": sampler.name, "window": sampler.window, "image_tokens": N, "png": png, **settings_extra,
                "lossless": sampler.lossless, "drafting": sampler.drafting,
                **{k: float(v) for k, v in sampler.knobs.items()}}
    done = _agree_on_done(out_dir, settings, total)
    todo = np.flatnonzero(~done)
    D = mesh_shape(mesh)["data"]
    # padding clamped to the work left: a huge --batch-per-device never pads a few items to it
    G = D * max(1, min(batch_per_device, -(-todo.size // D)))
    schedule = pick_schedule(schedule, sampler.spec)
    R = None if refill_rows is None else min(refill_rows, G)
    stream = generate_stream(bundle.gpt_params, bundle.gpt_config, labels[todo], seed, batch=G, schedule=schedule,
                             refill_rows=R, example_ids=todo, mesh=mesh, **sampler.keywords())
    t0 = time.perf_counter()
    writer = _Writer(bundle, out_dir, png)
    flush = G if schedule == "static" else max(stream.stats.refill_rows, G // 4)
    _stream(writer, stream, flush, sampler.name, N, total, int(done.sum()), quiet or not dist.is_writer())
    wall = time.perf_counter() - t0
    stats = {"items": total, "generated_this_run": int(todo.size), "skipped_done": int(done.sum()),
             "global_batch": G, "mesh": mesh_shape(mesh), "processes": jax.process_count(),
             "devices": jax.device_count(), "wall_s": round(wall, 3),
             "images_per_s": round(todo.size / wall, 3) if todo.size else None, **settings,
             "schedule": stream.stats.as_dict()}
    if dist.is_writer():
        _collect(out_dir, labels, N, sampler.window, stats)
    return stats


class _Writer:
    """Process 0 writes a group of finished items: their PNGs, then their part file."""

    def __init__(self, bundle, out_dir: Path, png: bool):
        from sjd_jax.core.vq import decode_tokens

        self.bundle, self.out_dir, self.png = bundle, out_dir, png
        c = bundle.gpt_config
        self.decode = jax.jit(lambda p, t: decode_tokens(p, bundle.vq_config, t, c.grid_size))

    def write(self, items) -> None:
        from sjd_jax.io.imaging import save_png
        from sjd_jax.core.vq import to_uint8

        if not dist.is_writer():
            return
        items = sorted(items, key=lambda it: it.example_id)
        ids = np.asarray([it.example_id for it in items], np.int64)
        tokens = np.stack([it.tokens for it in items])
        if self.png:
            images = self.bundle.preset.cropped(to_uint8(self.decode(self.bundle.vq_params, jnp.asarray(tokens))))
            for i, img in zip(ids, images):
                save_png(img, self.out_dir / "images" / f"{i:06d}.png")
        _save_npz(self.out_dir / "parts" / f"{ids[0]:06d}-{ids[-1]:06d}.npz", ids=ids, tokens=tokens,
                  nfe=np.asarray([it.nfe for it in items]), committed=np.stack([it.committed for it in items]))


def _stream(writer: _Writer, stream, flush: int, name: str, N: int, total: int, done: int, quiet: bool) -> None:
    """Every item of ``stream``, written in groups of ``flush`` as they finish (the sampler keeps
    running meanwhile: ``generate_stream`` dispatches its next segment before handing items out)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    gen_tokens = gen_forwards = 0
    group = []
    with tqdm(total=total, initial=done, desc=f"{name} batch", unit="img", file=sys.stderr, disable=quiet) as bar:
        for item in itertools.chain(stream, [None]):
            if item is not None:
                group.append(item)
            if group and (item is None or len(group) >= flush):
                writer.write(group)
                gen_tokens += len(group) * N
                gen_forwards += sum(it.nfe for it in group)
                el = time.perf_counter() - t0
                bar.update(len(group))
                bar.set_postfix(tok_s=f"{gen_tokens / el:.0f}", tok_per_fwd=f"{gen_tokens / max(gen_forwards, 1):.2f}",
                                useful=f"{stream.stats.useful_fraction:.2f}", refresh=False)
                group = []


def _collect(out_dir: Path, labels, N: int, window: int, stats: dict) -> None:
    """Process 0, every item done: ``tokens.npy``, ``labels.npy`` and ``stats.json`` from the parts
    (``stats`` gains the acceptance statistics)."""
    from sjd_jax.sampling import acceptance_stats

    total = labels.size
    tokens = np.full((total, N), -1, np.int32)
    nfe = np.zeros((total,), np.int64)
    committed = np.zeros((total, N), np.int32)
    for part in sorted((out_dir / "parts").glob("*.npz")):
        with np.load(part) as z:
            keep = z["ids"] < total
            tokens[z["ids"][keep]], nfe[z["ids"][keep]] = z["tokens"][keep], z["nfe"][keep]
            committed[z["ids"][keep]] = z["committed"][keep]
    missing = int((tokens[:, 0] < 0).sum())
    if missing:
        raise RuntimeError(f"{missing} items have no tokens after the run (parts/ was changed meanwhile?)")
    _save_npy(out_dir / "tokens.npy", tokens)
    _save_npy(out_dir / "labels.npy", labels)
    stats.update(acceptance_stats(nfe, committed, N, window))
    atomic.write_json(out_dir / "stats.json", stats)

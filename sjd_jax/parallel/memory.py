"""Sizes before work: what a load or a sampler run needs per device, against what the device has.

Every command checks here before it compiles or allocates, so an absurd size (a batch of 10^9
rows, a vocabulary of 10^8, a config with a 100000 x 100000 grid) is one line with the estimate and
the budget, in a second, instead of an out-of-memory abort minutes later.

The sampler estimate is analytic (no tracing, so it costs nothing per call): KV cache, the loop
state (token buffer, draft distributions, history) and the largest temporary of one iteration
(the window's logits and target probabilities, plus the larger of attention scores, MLP
activations and the filters' sort). It errs low: it refuses what cannot fit, never what might.
The budget is what the device can still take: ``memory_stats`` (limit - in use) on accelerators,
``MemAvailable`` (and the cgroup limit) on CPU, where all CPU devices share the host's RAM.
"""

from __future__ import annotations

import math
import os

import numpy as np

GIB = 2.0 ** 30
# Sizes past these are refused outright (validate checks them on flags; GPTConfig on configs).
MAX_ROWS = 1 << 20  # rows of one generate call / batch flags
MAX_CPU_DEVICES = 512  # --cpu-devices: fake devices (XLA takes ~10 s to create 4096)


def fmt(nbytes: float) -> str:
    if nbytes >= GIB:
        return f"{nbytes / GIB:.1f} GiB"
    return f"{nbytes / 2 ** 20:.0f} MiB"


def _cgroup_free() -> int | None:
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit == "max":
            return None
        return int(limit) - int(open("/sys/fs/cgroup/memory.current").read())
    except (OSError, ValueError):
        return None


def host_available() -> int | None:
    """Bytes of RAM this process can still take (``MemAvailable``, capped by a cgroup limit)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None and hasattr(os, "sysconf"):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = None
    cg = _cgroup_free()
    return cg if avail is None else (avail if cg is None else min(avail, cg))


def device_available(device) -> int | None:
    """Bytes ``device`` can still take, or None when it does not say. CPU devices: the host's RAM."""
    if device.platform == "cpu":
        return host_available()
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some backends do not implement it
        return None
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def require(need: float, what: str, device=None, hint: str = "", parts: dict | None = None) -> None:
    """``ValueError`` (one line: the estimate, its parts and the budget) when ``need`` bytes do not
    fit on ``device`` (default: the first local device)."""
    import jax

    device = device or jax.local_devices()[0]
    avail = device_available(device)
    if avail is None or need <= avail:
        return
    detail = ", ".join(f"{k} {fmt(v)}" for k, v in (parts or {}).items() if v)
    where = "this host's RAM" if device.platform == "cpu" else f"{device.device_kind} {device.id}"
    raise ValueError(f"{what} needs about {fmt(need)}" + (f" ({detail})" if detail else "")
                     + f", more than the {fmt(avail)} available in {where}" + (f"; {hint}" if hint else ""))


def tree_bytes(abstract) -> dict:
    """Bytes per device of a tree of ``jax.ShapeDtypeStruct`` with shardings (none: device 0)."""
    import jax

    per: dict = {}
    for x in jax.tree.leaves(abstract):
        nbytes = np.dtype(x.dtype).itemsize
        sh = getattr(x, "sharding", None)
        if sh is None:
            per[jax.local_devices()[0]] = per.get(jax.local_devices()[0], 0) + nbytes * math.prod(x.shape)
            continue
        shard = nbytes * math.prod(sh.shard_shape(x.shape))
        for d in sh.addressable_devices:
            per[d] = per.get(d, 0) + shard
    return per


def require_tree(abstract, what: str, hint: str = "") -> None:
    """Refuse to materialise ``abstract`` (e.g. a checkpoint's params) where it cannot fit: each
    accelerator against its own budget, all CPU devices together against the host's RAM."""
    per = tree_bytes(abstract)
    cpu = [d for d in per if d.platform == "cpu"]
    if cpu:
        require(sum(per[d] for d in cpu), what, cpu[0], hint)
    for d, n in per.items():
        if d.platform != "cpu":
            require(n, what, d, hint)


def sampler_parts(spec, batch: int, data: int = 1, model: int = 1) -> dict:
    """Per-device bytes of one sampler run of ``spec`` (a resolved ``sampling.SamplerSpec``) over
    ``batch`` rows on a ``data x model`` mesh: {"KV cache", "loop state", "largest temporary"}."""
    c = spec.config
    B = -(-batch // data)  # rows per data shard
    rows = 2 * B if spec.cfg else B
    W, A = spec.window, spec.branches * spec.tree_depth
    V, N, C = c.vocab_size, c.num_image_tokens, c.cls_token_num
    Vd = -(-V // model)  # vocabulary shards (dense q rows, logits)
    Hkv = c.kv_heads if c.kv_heads % model else c.kv_heads // model
    H = c.n_head if c.n_head % model else c.n_head // model
    item = np.dtype(c.dtype).itemsize
    S = c.seq_len + (W if A else 0)
    kv = 2 * c.n_layer * rows * S * Hkv * c.head_dim * item
    q_row = 8 * spec.q_slots + 4 if spec.q_slots else 4 * Vd  # compact: ids + values (+ base)
    state = 4 * B * (N + 2 * W) + 4 * B * N + q_row * B * (W + A + spec.history_rows)
    logits = 4 * rows * max(W, C) * Vd  # float32 logits of the window (the prefill's prompt)
    probs = 4 * B * W * Vd
    filters = 8 * min(spec.chunk_elements, B * W * Vd)  # the filters' sort: values + indices
    scores = 4 * rows * H * max(W, C) * S
    mlp = 2 * item * rows * max(W, C) * c.ffn_hidden // model
    return {"KV cache": kv, "loop state": state,
            "largest temporary": logits + probs + max(filters, scores, mlp)}


def require_sampler(spec, batch: int, mesh=None) -> None:
    """Refuse a sampler run that cannot fit (before it is traced or compiled)."""
    import jax

    if batch > MAX_ROWS:
        raise ValueError(f"{batch} rows in one generate call: at most {MAX_ROWS}; generate in batches")
    if mesh is None:
        devices, data, model = [jax.local_devices()[0]], 1, 1
    else:
        devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        data, model = mesh.shape.get("data", 1), mesh.shape.get("model", 1)
    parts = sampler_parts(spec, batch, data, model)
    per_device = sum(parts.values())
    cpu = [d for d in devices if d.platform == "cpu"]
    n = len(cpu) if cpu else 1
    require(per_device * n, f"sampling {batch} rows ({spec.method}, window {spec.window})",
            devices[0], "use a smaller batch or window", {k: v * n for k, v in parts.items()})

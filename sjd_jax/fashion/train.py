"""Training with optax: the VQ tokenizer and the class-conditional GPT over its tokens.

Deterministic (seeded init, per-epoch permutations derived from the seed, no other randomness
outside keys folded from the step) and resumable: the train state (params, optimizer state, step)
is an orbax checkpoint written atomically every ``ckpt_every`` steps and at the end; a rerun with
the same out dir continues from it. Losses go to ``log.jsonl``; the final weights are written as a
normal sjd-jax checkpoint (``sjd_jax.load``-able) in ``out/model``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sjd_jax.io import atomic
from sjd_jax.io import checkpoint
from sjd_jax.core.config import GPTConfig
from sjd_jax.core.vq import VQConfig
from sjd_jax.core.vq.model import VQModel, init_vq_params


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 500
    log_every: int = 50
    # VQ only
    commit_beta: float = 0.25
    codebook_weight: float = 1.0
    # GPT only
    class_dropout: float = 0.1  # LlamaGen: the null class replaces the label this often (CFG training)


def optimizer(t: TrainConfig):
    sched = optax.warmup_cosine_decay_schedule(0.0, t.lr, max(t.warmup, 1), max(t.steps, t.warmup + 1),
                                               end_value=t.lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                       optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=t.weight_decay))


def batch_indices(n: int, t: TrainConfig, step: int) -> np.ndarray:
    """Example ids of ``step``: a fixed permutation per epoch, derived from (seed, epoch) only."""
    per_epoch = n // t.batch
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([t.seed, epoch]).permutation(n)
    return perm[i * t.batch:(i + 1) * t.batch]


# ---- resumable state ---------------------------------------------------------------------------

def _is_train_state(path: Path) -> bool:
    """An orbax checkpoint directory (what ``_save_state`` writes): the only thing it replaces."""
    return (Path(path) / "_CHECKPOINT_METADATA").is_file()


def _save_state(path: Path, state) -> None:
    from orbax.checkpoint import v1 as ocp

    with atomic.directory(path, replace=True, owned=_is_train_state, what="sjd-jax train state") as tmp:
        ocp.save(tmp, state, overwrite=True)  # (tmp: our exclusive, empty directory)


def _load_state(path: Path, like):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like)
    from orbax.checkpoint import v1 as ocp

    try:
        return ocp.load(Path(path).absolute(), abstract)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        raise ValueError(f"{path}: the train state to resume from is damaged ({checkpoint.error_reason(e)}); "
                         f"remove it to start over") from None


def check_run_dir(out: Path) -> None:
    """Fail before any training when ``out`` (a run directory, resumable) or the final ``out/model``
    could not be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    atomic.check_dir_target(out / "model", True, checkpoint.is_checkpoint, "sjd-jax checkpoint")
    if (out / "train_state").exists():
        atomic.check_dir_target(out / "train_state", True, _is_train_state, "sjd-jax train state")


def _loop(out: Path, t: TrainConfig, state, step_fn, make_batch, n_examples: int, what: str, quiet: bool,
          stop_after: int | None = None):
    """Shared driver: resume, run ``step_fn(state, batch, step) -> (state, metrics)``, log, checkpoint.

    ``stop_after``: run at most this many steps now (then checkpoint); a rerun resumes.
    """
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "train_config.json", dataclasses.asdict(t))
    state_dir = out / "train_state"
    if state_dir.exists():
        state = _load_state(state_dir, jax.eval_shape(lambda: state))
        print(f"{what}: resumed at step {int(state['step'])}", file=sys.stderr)
    start = int(state["step"])
    end = t.steps if stop_after is None else min(t.steps, start + stop_after)
    log_file = out / "log.jsonl"  # rewritten whole at each row (atomic), a resume appends to it
    log = log_file.read_text() if log_file.exists() else ""
    acc: dict[str, list] = {}
    t0 = time.perf_counter()
    with tqdm(total=t.steps, initial=start, desc=what, unit="step", file=sys.stderr, disable=quiet) as bar:
        for step in range(start, end):
            state, metrics = step_fn(state, make_batch(batch_indices(n_examples, t, step), step), step)
            for k, v in metrics.items():
                acc.setdefault(k, []).append(v)
            if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
                row = {"step": step + 1, "time_s": round(time.perf_counter() - t0, 1),
                       **{k: round(float(np.mean(jax.device_get(v))), 5) for k, v in acc.items()}}
                acc = {}
                log += json.dumps(row) + "\n"
                atomic.write_text(log_file, log)
                bar.set_postfix({k: v for k, v in row.items() if k not in ("step", "time_s")})
            if (step + 1) % t.ckpt_every == 0 or step + 1 == end:
                _save_state(state_dir, state)
            bar.update(1)
    return state


# ---- VQ ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _vq_step(config: VQConfig, t: TrainConfig):
    """(optimizer, jitted step) for one (config, training config): a resumed run in the same process
    reuses the compiled step."""
    opt = optimizer(t)
    model = VQModel(config)

    def loss_fn(p, x):
        recon, cb, commit, idx = model.apply(p, x, method=VQModel.quantize_train)
        rec = jnp.mean((recon - x) ** 2)
        loss = rec + t.codebook_weight * cb + t.commit_beta * commit
        usage = jnp.zeros(config.codebook_size).at[idx.reshape(-1)].set(1.0).mean()
        return loss, {"loss": loss, "mse": rec, "codebook": cb, "commit": commit, "usage": usage}

    @jax.jit
    def step_fn(state, x):
        (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], x)
        upd, opt_state = opt.update(g, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], upd), "opt": opt_state,
                "step": state["step"] + 1}, m

    return opt, step_fn


def train_vq(out, config: VQConfig, t: TrainConfig, images: np.ndarray, quiet: bool = False,
             stop_after: int | None = None):
    """images: float32 ``[n, H, W, C]`` in [-1, 1]. Returns (params, finished); when finished,
    writes ``out/model``."""
    out = Path(out)
    opt, step_fn = _vq_step(config, t)
    params = init_vq_params(config, jax.random.key(t.seed), image_size=images.shape[1])
    state = {"params": params, "opt": opt.init(params), "step": jnp.int32(0)}
    state = _loop(out, t, state, lambda s, x, _: step_fn(s, x), lambda idx, _: jnp.asarray(images[idx]),
                  len(images), "train-vq", quiet, stop_after)
    finished = int(state["step"]) >= t.steps
    if finished:
        checkpoint.save(out / "model", "vq", config, state["params"], force=True)
    return state["params"], finished


def psnr(params, config: VQConfig, images: np.ndarray, batch: int = 500) -> float:
    """Mean PSNR (dB, peak-to-peak 2 in [-1, 1] units, i.e. 255 in uint8) of VQ reconstructions."""
    model = VQModel(config)
    rec = jax.jit(lambda p, x: model.apply(p, x))
    vals = []
    for i in range(0, len(images), batch):
        x = jnp.asarray(images[i:i + batch])
        mse = jnp.mean((jnp.clip(rec(params, x), -1, 1) - x) ** 2, axis=(1, 2, 3))
        vals.append(np.asarray(10 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))))
    return float(np.mean(np.concatenate(vals)))


def encode_dataset(params, config: VQConfig, images: np.ndarray, batch: int = 500) -> np.ndarray:
    from sjd_jax.core.vq import encode_images

    return np.concatenate([np.asarray(encode_images(params, config, jnp.asarray(images[i:i + batch])))
                           for i in range(0, len(images), batch)])


# ---- GPT -----------------------------------------------------------------------------------------

def gpt_loss(params, config: GPTConfig, labels, tokens):
    """Mean next-token cross-entropy (nats) over all N image tokens. labels: [B]; tokens: [B, N]."""
    from sjd_jax.core.model import teacher_forced

    B = labels.shape[0]  # labels may hold the null class (CFG dropout); no row uses `null`
    logits = teacher_forced(params, config, labels, jnp.ones((B, 1), bool), tokens, jnp.zeros((B,), bool))
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], axis=-1))


def train_gpt(out, config: GPTConfig, t: TrainConfig, tokens: np.ndarray, labels: np.ndarray,
              quiet: bool = False, stop_after: int | None = None):
    """tokens: int32 ``[n, N]``, labels: int32 ``[n]``. Returns (params, finished); when finished,
    writes ``out/model``."""
    from sjd_jax.core.model import init_params

    out = Path(out)
    opt = optimizer(t)
    params = init_params(config, jax.random.key(t.seed))
    state = {"params": params, "opt": opt.init(params), "step": jnp.int32(0)}
    drop_key = jax.random.key(t.seed + 1)

    @jax.jit
    def step_fn(state, batch, step):
        y, x = batch
        drop = jax.random.bernoulli(jax.random.fold_in(drop_key, step), t.class_dropout, y.shape)
        y = jnp.where(drop, config.num_classes, y)  # null class: trains the unconditional branch
        loss, g = jax.value_and_grad(gpt_loss)(state["params"], config, y, x)
        upd, opt_state = opt.update(g, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], upd), "opt": opt_state,
                "step": state["step"] + 1}, {"loss": loss}

    state = _loop(out, t, state, step_fn,
                  lambda idx, _: (jnp.asarray(labels[idx]), jnp.asarray(tokens[idx])),
                  len(tokens), "train-ar", quiet, stop_after)
    finished = int(state["step"]) >= t.steps
    if finished:
        checkpoint.save(out / "model", "gpt", config, state["params"], force=True)
    return state["params"], finished


def nll_bits_per_token(params, config: GPTConfig, tokens: np.ndarray, labels: np.ndarray,
                       batch: int = 250) -> float:
    f = jax.jit(gpt_loss, static_argnums=1)
    tot = 0.0
    for i in range(0, len(tokens), batch):
        y, x = labels[i:i + batch], tokens[i:i + batch]
        tot += float(f(params, config, jnp.asarray(y), jnp.asarray(x))) * len(x)
    return tot / len(tokens) / np.log(2)


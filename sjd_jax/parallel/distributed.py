"""Multi-host entry: ``jax.distributed.initialize`` when the environment describes a multi-process
job, plus the few cross-process helpers the batch generator needs.

Run the same command on every host. Detected: explicit ``JAX_COORDINATOR_ADDRESS`` (with
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``), multi-task SLURM and Open MPI jobs, and multi-host
Cloud TPU slices (jax's own cluster detection then fills in the details).
"""

from __future__ import annotations

import os

import jax
import numpy as np

MODES = ("auto", "on", "off")


def cluster_env(env=None) -> str | None:
    """Which multi-process launcher the environment shows, or None for a single process."""
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "mpi"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1 \
            or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def maybe_initialize(mode: str = "auto") -> bool:
    """Call ``jax.distributed.initialize`` if ``mode`` is "on", or "auto" and a launcher is seen.

    Must run before anything touches the devices. Returns whether it initialised."""
    if mode not in MODES:
        raise ValueError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
    kind = cluster_env()
    if mode == "off" or (mode == "auto" and kind is None):
        return False
    kwargs = {}
    if kind == "explicit":
        env = os.environ
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(**kwargs)
    return True


def is_writer() -> bool:
    """Only process 0 writes shared files."""
    return jax.process_index() == 0


def broadcast(x: np.ndarray) -> np.ndarray:
    """Process 0's value of a host array on every process (identity with one process)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(x)))


def gather_output(out):
    """A sampler ``GenerateOutput`` with its per-row fields as host arrays on every process."""
    return out.replace(**{f: gather(getattr(out, f)) for f in ("tokens", "nfe", "committed", "branch_hits")})


def gather(x: jax.Array) -> np.ndarray:
    """A global (possibly not fully addressable) array as one host array on every process (host
    arrays pass through)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

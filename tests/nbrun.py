"""Run a Colab notebook top to bottom with nbclient (CI), and check a stored notebook is clean.

Switches, read by every notebook in its first code cell:
  * ``SJD_JAX_OFFLINE=1``: no network. Skip ``pip install`` (the package is already installed) and
    hub downloads (tiny random checkpoints are made locally instead).
  * ``SJD_JAX_CI=1``: small sizes (fewer images, samples, windows), so CI stays fast.
CI sets both; ``colab/refresh.py`` sets only the first, to store full-size figures.
"""

from __future__ import annotations

import os
import pathlib

import nbformat
from nbclient import NotebookClient

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
KEEP_TAG = "figure"  # cells with this tag may store image outputs (the figures a reader sees)


def run_notebook(name: str, workdir, timeout: int = 600, ci: bool = True, extra_env: dict | None = None):
    """Execute ``colab/<name>`` in ``workdir`` offline (and with ``SJD_JAX_CI=1`` if ``ci``); returns
    the executed notebook (raises ``nbclient.exceptions.CellExecutionError`` on the first failing
    cell)."""
    nb = nbformat.read(COLAB / name, as_version=4)
    # (no MPLBACKEND: the kernel keeps matplotlib-inline, so figures become image outputs)
    env = dict(os.environ, SJD_JAX_OFFLINE="1", SJD_JAX_CI="1" if ci else "0",
               **(extra_env or {}))
    # the kernel must not inherit the test session's 8 fake CPU devices or xdist's worker vars
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env.pop("MPLBACKEND", None)
    # the kernel imports sjd_jax / convert from the checkout under test, wherever an install points
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(COLAB.parent), env.get("PYTHONPATH", "")) if p)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return nb


def outputs_of(nb, tag: str) -> list:
    """Outputs of the cells tagged ``tag`` (in order)."""
    return [o for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])
            for o in c.get("outputs", [])]


def stale_outputs(path) -> list[str]:
    """Problems of a stored notebook: outputs or execution counts anywhere except image outputs of
    cells tagged ``figure``."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    bad = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        if c.get("execution_count") is not None:
            bad.append(f"cell {i}: execution_count {c.execution_count}")
        keep = KEEP_TAG in c.metadata.get("tags", [])
        for o in c.get("outputs", []):
            if not (keep and o.output_type == "display_data" and set(o.get("data", {})) <= {"image/png", "text/plain"}):
                bad.append(f"cell {i}: stored {o.output_type} output")
    return bad

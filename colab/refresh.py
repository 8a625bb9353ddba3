"""Re-execute a notebook offline at full size and store it clean: only the image outputs of cells
tagged ``figure`` are kept (the figures a reader sees on GitHub before running anything).

    python colab/refresh.py quickstart.ipynb [--clear]    # --clear: strip every output instead
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from nbrun import KEEP_TAG, run_notebook  # noqa: E402

from sjd_jax.io import atomic  # noqa: E402


def clean(nb, keep_figures: bool):
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        c.execution_count = None
        keep = keep_figures and KEEP_TAG in c.metadata.get("tags", [])
        c.outputs = [o for o in c.outputs if keep and o.output_type in ("display_data", "execute_result")
                     and "image/png" in o.get("data", {})]
        for o in c.outputs:
            o.output_type = "display_data"
            o.pop("execution_count", None)
            o.data = {k: v for k, v in o.data.items() if k in ("image/png", "text/plain")}
            o.metadata = {}
    return nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="notebook file name under colab/")
    ap.add_argument("--clear", action="store_true", help="strip every output without executing")
    args = ap.parse_args(argv)
    path = HERE / args.name
    if args.clear:
        nb = clean(nbformat.read(path, as_version=4), keep_figures=False)
    else:
        with tempfile.TemporaryDirectory() as work:
            nb = clean(run_notebook(args.name, work, ci=False), keep_figures=True)
    text = nbformat.writes(nb)
    atomic.write_text(path, text if text.endswith("\n") else text + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

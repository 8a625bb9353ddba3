"""colab/quickstart.ipynb: executes top to bottom offline in CI mode (nbclient), and is stored clean.

The notebook writes ``quickstart_results.json`` in its working directory: the statistics of the
grid, of the AR / SJD / best-lossless comparison and of the greedy check. The assertions below
check what the notebook claims against those numbers.
"""

from __future__ import annotations

import base64
import json
import pathlib

import pytest
from nbrun import COLAB, outputs_of, run_notebook, stale_outputs

NAME = "quickstart.ipynb"
ROOT = COLAB.parent
N = 256  # image tokens of the bundled model (16 x 16)


def test_quickstart_is_stored_clean():
    assert stale_outputs(COLAB / NAME) == []


def test_quickstart_has_widgets_and_switches():
    import nbformat

    nb = nbformat.read(COLAB / NAME, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert 'os.environ.get("SJD_JAX_OFFLINE") == "1"' in code[0]
    assert 'os.environ.get("SJD_JAX_CI") == "1"' in code[0]
    src = "\n".join(code)
    for widget in ("REPO", "CLASS", "N_PER_CLASS", "SEED", "METHOD", "WINDOW", "INIT", "CFG_SCALE"):
        assert any(line.startswith(f"{widget} = ") and "#@param" in line for line in src.splitlines()), widget
    # the method dropdown offers exactly the recipes
    from sjd_jax.sampling import recipes

    line = next(line for line in src.splitlines() if line.startswith("METHOD = "))
    options = json.loads(line.split("#@param", 1)[1].strip())
    assert options == list(recipes.RECIPES)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    work = tmp_path_factory.mktemp("quickstart")
    nb = run_notebook(NAME, work)  # (the kernel imports this checkout: nbrun puts it on PYTHONPATH)
    results = json.loads((work / "quickstart_results.json").read_text())
    results["demo"] = json.loads((work / "quickstart_demo.json").read_text())
    return nb, results


@pytest.mark.slow
def test_quickstart_runs_and_reports(executed):
    nb, r = executed
    assert r["ci"] is True and r["image_tokens"] == N
    assert r["demo"]["served"] is True  # the web demo cell started the page and fetched it
    n_images = len(r["classes"]) * r["n_per_class"]
    assert n_images == 2

    # every image of every run got exactly its 256 tokens, one forward at least per committed run
    runs = {"grid": r["grid"], **r["compare"]}
    for name, s in runs.items():
        assert s["committed_per_image"] == [N] * n_images, name
        assert len(s["nfe_per_image"]) == n_images, name
        assert s["step_compression"] == pytest.approx(N / s["nfe_mean"]), name
        # histogram of tokens per iteration counts every iteration after the prefill
        assert sum(s["accepted_histogram"]) == sum(nfe - 1 for nfe in s["nfe_per_image"]), name
        assert s["wall_s_per_image"] > 0, name

    ar, sjd, best = r["compare"]["ar"], r["compare"]["sjd"], r["compare"]["best"]
    assert ar["nfe_per_image"] == [N] * n_images
    assert ar["mean_accepted_per_iteration"] == 1.0
    assert (best["method"], best["window"], best["init"]) == ("sjd-pac", 16, "vertical-repeat")  # CI size
    for s in (sjd, best):
        assert all(nfe < N for nfe in s["nfe_per_image"])
        assert s["mean_accepted_per_iteration"] > 1.0
    # the default grid is plain SJD at window 16, as is the comparison's SJD; with one sample per
    # class both batches hold the same labels in the same order, so the same seed gives the same run
    assert (r["grid"]["method"], r["grid"]["window"], r["grid"]["init"]) == ("sjd", 16, "uniform")
    assert r["grid"]["nfe_per_image"] == sjd["nfe_per_image"]

    # greedy: all three methods give AR's tokens, the speculative ones with fewer forwards
    assert r["greedy_equal"] is True
    assert r["greedy_nfe"]["ar"] == [N] * n_images
    assert all(n < N for n in r["greedy_nfe"]["sjd"] + r["greedy_nfe"]["best"])


@pytest.mark.slow
def test_quickstart_figures(executed):
    nb, _ = executed
    figure_cells = [c for c in nb.cells if c.cell_type == "code" and "figure" in c.metadata.get("tags", [])]
    assert len(figure_cells) == 3  # grid, tokens per step, comparison
    for c in figure_cells:
        pngs = [o for o in c.outputs if o.output_type == "display_data" and "image/png" in o.data]
        assert len(pngs) == 1, c.source[:60]
        assert base64.b64decode(pngs[0].data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(outputs_of(nb, "figure")) == 3
    # no cell errored and nothing but the figure cells draws
    for c in nb.cells:
        if c.cell_type == "code":
            assert not any(o.output_type == "error" for o in c.outputs)
            if "figure" not in c.metadata.get("tags", []):
                assert not any("image/png" in o.get("data", {}) for o in c.outputs), c.source[:60]


def test_quickstart_stored_figures_are_modest():
    import nbformat

    nb = nbformat.read(COLAB / NAME, as_version=4)
    pngs = [o.data["image/png"] for o in outputs_of(nb, "figure")]
    assert len(pngs) == 3  # the refreshed notebook shows its three figures before anything runs
    assert pathlib.Path(COLAB / NAME).stat().st_size < 600_000

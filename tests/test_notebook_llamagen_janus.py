"""colab/llamagen_janus.ipynb executed top to bottom offline at CI sizes: its download cell fills a
local hub cache with tiny random checkpoints in the released file formats and names
(colab/tiny_checkpoints.py), then the same cells as on Colab load them with ``sjd_jax.from_pretrained``
(fetch + convert once), sample LlamaGen c2i and Janus-Pro images with AR and SJD, check greedy SJD ==
greedy AR and write ``sjd_work/results.json``. The stored notebook must be clean (no outputs, no
execution counts)."""

import json
import re

import nbformat
import numpy as np
import pytest
from PIL import Image

from nbrun import COLAB, outputs_of, run_notebook, stale_outputs

NAME = "llamagen_janus.ipynb"
# tiny checkpoints: LlamaGen's 16x16 grid (from the c2i_B_256.pt name) and Janus' 4x4, VQ-16 -> 256 / 64 px
N_TOKENS = {"llamagen-c2i": 256, "janus-pro-1b": 16}
PIXELS = {"llamagen-c2i": 256, "janus-pro-1b": 64}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    work = tmp_path_factory.mktemp("nb_llamagen_janus")
    nb = run_notebook(NAME, work)  # (the kernel imports this checkout: nbrun puts it on PYTHONPATH)
    return nb, work / "sjd_work"


@pytest.mark.slow
def test_notebook_runs_both_pipelines(executed):
    nb, out = executed
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"llamagen-c2i", "janus-pro-1b"}
    for name, r in results.items():
        n, px = N_TOKENS[name], PIXELS[name]
        assert r["tokens_per_image"] == n and r["window"] == min(n, 16)
        assert set(r["methods"]) == {"ar", "sjd"}
        ar, sjd = r["methods"]["ar"], r["methods"]["sjd"]
        for m in (ar, sjd):
            assert m["image_shape"] == [1, px, px, 3]
            assert m["step_compression"] == pytest.approx(n / m["nfe_mean"])
        assert ar["nfe_per_image"] == [n] and ar["mean_accepted_per_iteration"] == 1.0
        assert 1 <= sjd["nfe_per_image"][0] <= n
        assert sjd["mean_accepted_per_iteration"] >= 1.0
        assert r["greedy_equal_to_ar"] == {"ar": True, "sjd": True}, (name, r["greedy_equal_to_ar"])
        for method in ("ar", "sjd"):  # the grids the notebook saved: one image + 2 px border
            img = np.asarray(Image.open(out / f"{name}_{method}.png"))
            assert img.shape == (px + 4, px + 4, 3) and img[2:px + 2, 2:px + 2].std() > 0
    # the conversions from_pretrained made from the local hub cache (each with its manifest)
    cache = out / "sjd-cache" / "pretrained"
    assert (cache / "janus-pro-1b" / "ckpt" / "tokenizer.json").is_file()
    assert {p.name for p in (cache / "llamagen-c2i-b-256" / "ckpt").iterdir()} == {"gpt", "vq"}
    assert all((cache / n / "sjd-jax-pretrained.json").is_file() for n in ("janus-pro-1b", "llamagen-c2i-b-256"))
    # one figure per model, shown inline (the cell tagged "figure")
    figures = [o for o in outputs_of(nb, "figure") if "image/png" in o.get("data", {})]
    assert len(figures) == 2
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_stored_notebook_is_clean_and_has_colab_widgets():
    from sjd_jax.sampling import recipes

    path = COLAB / NAME
    assert stale_outputs(path) == []
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code[0].startswith("import os") and 'OFFLINE = os.environ.get("SJD_JAX_OFFLINE") == "1"' in code[0]
    assert 'CI = os.environ.get("SJD_JAX_CI") == "1"' in code[0]
    src = "\n".join(code)
    params = dict(re.findall(r"^(\w+) = .*#@param(.*)$", src, re.M))
    assert {"REPO", "MODEL", "CLASS_ID", "PROMPT", "SEED", "METHOD", "WINDOW", "CFG_SCALE_LLAMAGEN",
            "CFG_SCALE_JANUS"} <= set(params)
    methods = json.loads(params["METHOD"].strip())
    assert set(methods) <= set(recipes.RECIPES) and {"ar", "sjd", "sjd-pac"} <= set(methods)
    # the real downloads, through the package's own entry point (no hand-written download cell)
    assert "sjd_jax.from_pretrained(" in src and "hf_hub_download" not in src and "snapshot_download" not in src
    assert '"llamagen-c2i": "llamagen-c2i-b-256", "janus-pro-1b": "janus-pro-1b"' in src
    assert nb.metadata["kernelspec"]["name"] == "python3"

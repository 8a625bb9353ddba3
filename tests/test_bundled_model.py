"""The shipped fashion-mnist model: checkpoints load, the VQ reconstructs real test images above
the PSNR target, and ``sjd-jax generate`` works end to end with clear errors on bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from sjd_jax.fashion import data
from sjd_jax.families import presets
from sjd_jax.cli.main import main
from sjd_jax.fashion.train import psnr


@pytest.fixture(scope="module")
def bundle():
    return presets.load("fashion-mnist")


def test_shipped_checkpoints_load_and_vq_psnr(bundle):
    assert bundle.gpt_config.num_classes == 10 and bundle.gpt_config.num_image_tokens == 256
    assert bundle.vq_config.codebook_size == bundle.gpt_config.vocab_size
    x, _ = data.load("test")
    value = psnr(bundle.vq_params, bundle.vq_config, data.to_model_range(x[:1000]))
    print(f"VQ PSNR on 1000 test images: {value:.2f} dB")
    assert value >= 24.0
    size = sum(p.stat().st_size for p in presets.ASSETS.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"bundled assets are {size / 2**20:.1f} MiB"


def test_generate_cli_writes_png_and_stats(tmp_path, capsys):
    out, stats = tmp_path / "grid.png", tmp_path / "stats.json"
    rc = main(["generate", "--class", "0", "7", "--n", "2", "--seed", "1", "--out", str(out),
               "--stats-json", str(stats)])  # progress bar on: exercises the in-loop callback
    assert rc == 0, capsys.readouterr().err
    img = Image.open(out)
    img.verify()
    img = Image.open(out)
    assert img.size == (2 * (56 + 2) + 2, 2 * (56 + 2) + 2)  # 2 columns x 2 rows of 2x-scaled 28x28
    st = json.loads(stats.read_text())
    assert st["images"] == 4 and st["image_tokens"] == 256 and st["method"] == st["auto"]["method"]  # auto
    assert st["step_compression"] == pytest.approx(256 / st["nfe_mean"])
    # (4 images: AR when a drafting sampler's longer compile outweighs what it saves, as timed here)
    assert (st["nfe_mean"] < 256 and sum(st["accepted_histogram"]) > 0) or (st["method"], st["nfe_mean"]) == ("ar", 256)
    cap = capsys.readouterr()
    assert "step compression" in cap.out and "1024/1024" in cap.err  # bar reached 4 x 256 tokens


@pytest.mark.parametrize("argv,msg", [
    (["--model", "imagenet-xl"], "unknown model"),
    (["--class", "10"], "class 10 out of range"),
    (["--n", "0"], "--n must be an integer in 1..1048576, got 0"),
    (["--method", "beam"], "unknown method"),
    (["--window", "0"], "window must be"),
    (["--top-k", "999"], "top_k must be"),
    (["--method", "medusa"], "unknown method 'medusa'"),
    (["--method", "sjd-pac", "--window", "8", "--tree", "4x3"], "needs window >= 13"),
    (["--method", "sjd", "--tree", "4by3"], "--tree must look like"),
    (["--init", "diagonal"], "unknown init 'diagonal'"),
    (["--method", "sjd", "--coupling", "optimal"], "unknown coupling 'optimal'"),
    (["--coupling", "gumbel"], "give --method with them"),  # auto chooses among the recipes as they are
    (["--method", "ar", "--init", "vertical-repeat"], "ar drafts nothing"),
    (["--method", "lantern", "--lantern-delta", "-1"], "lantern_delta must be"),
    (["--q-storage", "compact"], "compact q storage needs top-k"),
    (["--chunk-elements", "0"], "chunk_elements must be"),
])
def test_generate_cli_errors(tmp_path, capsys, argv, msg):
    out = tmp_path / "x.png"
    assert main(["generate", *argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv,lossless,tree", [
    (["--method", "sjd-pac", "--window", "32", "--init", "vertical-repeat"], True, [2, 2]),
    (["--method", "sjd-gumbel", "--tree", "3x2", "--window", "12", "--q-storage", "compact", "--top-k", "20",
      "--chunk-elements", "20000"], True, [3, 2]),
    (["--method", "lantern", "--lantern-k", "4", "--lantern-delta", "0.2"], False, None),
])
def test_generate_cli_drafting_options(tmp_path, capsys, argv, lossless, tree):
    out, stats = tmp_path / "g.png", tmp_path / "s.json"
    assert main(["generate", "--class", "3", "--n", "2", *argv, "--out", str(out), "--stats-json", str(stats),
                 "--quiet"]) == 0, capsys.readouterr().err
    st = json.loads(stats.read_text())
    assert st["lossless"] is lossless and st["method"] == argv[1]
    assert st.get("drafting", {}).get("tree") == (tree and list(tree))
    assert sum(st["nfe_per_image"]) < 2 * 256 and st["branch_hits_per_image"] >= 0
    assert st["drafting"]["q_storage"] == ("compact" if "--q-storage" in argv else "auto")
    if not lossless:
        assert st["drafting"]["lantern"] == {"k": 4, "delta": 0.2}
    Image.open(out).verify()


def test_generate_cli_unwritable_out(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    targets = [tmp_path / "missing" / "x.png", tmp_path / "file" / "x.png", tmp_path,
               __import__("pathlib").Path("/proc/sjd-x.png")]  # /proc refuses new files, even to root
    for target in targets:
        assert main(["generate", "--out", str(target), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_eval_cli_small(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--n-per-class", "2", "--methods", "ar,sjd-ac", "--skip-nll", "--batch", "20",
                 "--init", "vertical-repeat", "--json", str(out), "--quiet"]) == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    assert r["classifier_test_accuracy"] > 0.85
    assert r["drafting"] == {"ar": {}, "sjd-ac": {"coupling": "maximal", "init": "vertical-repeat", "q_storage": "auto"}}
    for m in ("ar", "sjd-ac"):
        e = r["methods"][m]
        lo, hi = e["class_accuracy_ci95"]
        assert e["n"] == 20 and lo <= e["class_accuracy"] <= hi and e["frechet_distance"] > 0
    assert r["methods"]["ar"]["nfe_mean"] == 256 and r["methods"]["sjd-ac"]["nfe_mean"] < 256
    assert main(["eval", "--n-per-class", "1", "--json", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_wilson_interval():
    from sjd_jax.fashion.evaluate import wilson

    lo, hi = wilson(80, 100)
    assert lo == pytest.approx(0.7112, abs=1e-3) and hi == pytest.approx(0.8666, abs=1e-3)


def test_agreement_test_has_power():
    """The permutation test on FD rejects clearly different feature sets and accepts equal ones."""
    from sjd_jax.fashion.evaluate import agreement

    rng = np.random.default_rng(0)
    real = rng.standard_normal((2000, 4))
    same = [{"_correct": 80, "n": 100, "_feats": rng.standard_normal((300, 4))} for _ in range(2)]
    diff = {"_correct": 50, "n": 100, "_feats": rng.standard_normal((300, 4)) * 1.5 + 0.5}
    assert agreement(same[0], same[1], real, n_perm=100)["fd_permutation_p_value"] > 0.01
    r = agreement(same[0], diff, real, n_perm=100)
    assert r["fd_permutation_p_value"] < 0.02 and r["accuracy_p_value"] < 1e-4

"""Benchmark bookkeeping and CLI errors (speed itself is measured by `sjd-jax bench`, not tested)."""

import json

import numpy as np
import pytest

from sjd_jax.cli import bench
from sjd_jax.cli import main as cli
from sjd_jax.sampling.recipes import LOSSLESS, RECIPES, auto_tree, recipe
from tiny import scaled_params, tiny_config


def test_run_one_statistics_are_consistent():
    config = tiny_config()
    params = scaled_params(config, seed=0, scale=3.0)
    knobs = dict(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0)
    r = bench.run_one(params, config, "sjd", 5, 3, knobs, images=5)  # batches of 3: last one padded
    N = config.num_image_tokens
    assert r["window"] == 5 and r["batch"] == 3 and len(r["nfe_per_row"]) == 5 and r["images"] == 5
    assert r["step_compression"] == N / np.mean(r["nfe_per_row"])
    hist = np.asarray(r["accepted_histogram"])
    # every loop iteration of every image commits 1..W tokens; together they give N - 1 tokens
    assert hist[0] == 0 and (hist * np.arange(len(hist))).sum() == 5 * (N - 1)
    assert hist.sum() == sum(r["nfe_per_row"]) - 5
    assert r["compile_s"] > 0 and r["wall_s"] > 0 and r["lossless"] and r["tree"] is None
    # the same images in one batch of 5 give the same per-image NFE (keys are per example id)
    r5 = bench.run_one(params, config, "sjd", 5, 5, knobs)
    assert r5["nfe_per_row"] == r["nfe_per_row"]
    ar = bench.run_one(params, config, "ar", 5, 3, knobs)
    assert ar["window"] == 1 and ar["nfe_mean"] == N and ar["accepted_histogram"] == [0, 3 * (N - 1)]
    nb = np.stack([(np.arange(config.vocab_size) + i) % config.vocab_size for i in (1, 2)], 1)
    lossy = bench.run_one(params, config, "lantern", 5, 3, knobs, images=5, lantern=(nb, 0.9))
    assert not lossy["lossless"] and lossy["nfe_mean"] < r["nfe_mean"] - 0.5  # delta reaches the loop
    pac = bench.run_one(params, config, "sjd-pac", 9, 2, knobs, init="vertical-repeat")
    assert pac["tree"] == [2, 2] and pac["init"] == "vertical-repeat" and pac["branch_hits_per_image"] >= 0
    json.dumps(r)


def test_recipes():
    assert recipe("sjd-ac", 32) == dict(method="sjd", coupling="maximal")
    assert recipe("sjd-pac", 64)["tree"] == (4, 3) and recipe("sjd-pac", 16)["tree"] == (2, 2)
    assert auto_tree(4) == (1, 0)
    assert LOSSLESS == set(RECIPES) - {"lantern"}
    with pytest.raises(ValueError, match="unknown method"):
        recipe("medusa", 16)


def test_forward_cost_and_report_outputs(tmp_path):
    """A full (tiny) bench run: JSON with a latency ratio and efficiency per row, a summary, the
    markdown table and the PNG plot."""
    out = tmp_path / "b.json"
    argv = ["--model", "random:GPT-B", "--vocab", "512", "--grid", "2", "--methods", "sjd-ac", "--windows", "3",
            "--inits", "uniform", "--q-storage", "dense,compact", "--top-k", "8", "--images", "2", "--no-auto",
            "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    cost = report["forward_cost"]["1"]
    assert set(cost) == {"1", "3"} and cost["1"]["ratio"] == 1.0
    rows = report["results"]
    assert [r["method"] for r in rows][:1] == ["ar"] and len(rows) == 1 + 2
    assert [r["q_slots"] for r in rows[1:]] == [0, 8] and rows[1]["nfe_per_row"] == rows[2]["nfe_per_row"]
    for r in rows:
        assert r["latency_ratio_vs_ar"] > 0 and r["efficiency"] > 0
        assert r["forward_cost_ratio"] == cost[str(r["window"])]["ratio"]
    assert report["summary"]["best_lossless"]["method"] == "sjd-ac"
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = bench.markdown_table(report)
    assert table.splitlines()[0] == "| method | lossless | W=3 |" and "| sjd-ac | yes |" in table


def test_schedule_comparison(tmp_path):
    """``--schedule static,continuous``: each configuration both ways, the same images (NFE per
    image equal), useful fractions, the comparison summary and its plot."""
    out = tmp_path / "s.json"
    argv = ["--model", "random:GPT-B", "--vocab", "64", "--grid", "3", "--methods", "sjd", "--windows", "4",
            "--inits", "uniform", "--batch", "4", "--images", "10", "--schedule", "static,continuous",
            "--refill-rows", "1", "--no-auto", "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    rows = {(r["method"], r["schedule"]): r for r in report["results"]}
    assert set(rows) == {(m, s) for m in ("ar", "sjd") for s in ("static", "continuous")}
    for m in ("ar", "sjd"):
        st, co = rows[(m, "static")], rows[(m, "continuous")]
        assert st["nfe_per_row"] == co["nfe_per_row"] and co["refill_rows"] == 1 and co["refills"] > 0
        assert 0 < st["useful_fraction"] <= 1 and 0 < co["useful_fraction"] <= 1
    assert rows[("ar", "static")]["useful_fraction"] == 10 / 12  # the last chunk of 4 holds 2 images
    assert rows[("ar", "continuous")]["useful_fraction"] > 10 / 12  # refilled, then the drain shrinks
    summary = {r["method"]: r for r in report["schedules"]}
    assert summary["sjd"]["speedup"] == rows[("sjd", "continuous")]["images_per_s"] / rows[("sjd", "static")][
        "images_per_s"]
    assert report["summary"]["best_lossless"]["method"] == "sjd"  # the static rows alone
    assert tmp_path.joinpath("s-schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_exit_2(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--model", "random:GPT-Z", "--out", str(out)]) == 2
    assert bench.main(["--model", "hub:llamagen", "--out", str(out)]) == 2
    assert bench.main(["--windows", "0", "--out", str(out)]) == 2
    assert bench.main(["--top-p", "2", "--out", str(out)]) == 2
    assert bench.main(["--methods", "sjd,medusa", "--out", str(out)]) == 2
    assert bench.main(["--inits", "diagonal", "--out", str(out)]) == 2
    assert bench.main(["--schedule", "static,dynamic", "--out", str(out)]) == 2
    assert bench.main(["--batch", "4", "--refill-rows", "5", "--out", str(out)]) == 2
    assert bench.main(["--model", "random:GPT-B", "--methods", "lantern", "--out", str(out)]) == 2
    assert not out.exists()
    assert cli.main(["nope"]) == 2
    err = capsys.readouterr().err
    for msg in ("unknown LlamaGen preset", "unknown model 'hub:llamagen'", "window must be", "top_p",
                "unknown method 'medusa'", "unknown init 'diagonal'", "lantern needs a VQ codebook",
                "unknown command"):
        assert msg in err, msg

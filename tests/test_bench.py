"""Benchmark bookkeeping and CLI errors (speed itself is measured by `sjd-jax bench`, not tested)."""

import json

import numpy as np

from sjd_jax import bench, cli
from tiny import scaled_params, tiny_config


def test_run_one_statistics_are_consistent():
    config = tiny_config()
    params = scaled_params(config, seed=0, scale=3.0)
    knobs = dict(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0)
    r = bench.run_one(params, config, "sjd", 5, 3, knobs)
    N = config.num_image_tokens
    assert r["window"] == 5 and r["batch"] == 3 and len(r["nfe_per_row"]) == 3
    assert r["step_compression"] == N / np.mean(r["nfe_per_row"])
    hist = np.asarray(r["accepted_histogram"])
    # every loop iteration of every row commits 1..W tokens; together they give N - 1 tokens
    assert hist[0] == 0 and (hist * np.arange(len(hist))).sum() == 3 * (N - 1)
    assert hist.sum() == sum(r["nfe_per_row"]) - 3
    assert r["compile_s"] > 0 and r["wall_s"] > 0
    ar = bench.run_one(params, config, "ar", 5, 3, knobs)
    assert ar["window"] == 1 and ar["nfe_mean"] == N and ar["accepted_histogram"] == [0, 3 * (N - 1)]
    json.dumps(r)


def test_cli_errors_exit_2(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--model", "random:GPT-Z", "--out", str(out)]) == 2
    assert bench.main(["--model", "hub:llamagen", "--out", str(out)]) == 2
    assert bench.main(["--windows", "0", "--out", str(out)]) == 2
    assert bench.main(["--top-p", "2", "--out", str(out)]) == 2
    assert not out.exists()
    assert cli.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown LlamaGen preset" in err and "unknown command" in err and "top_p" in err

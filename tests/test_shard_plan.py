"""``sjd-jax shard-plan --param-dtype``: bfloat16 halves the params of the 7-8B configs, which
"auto" plans in bfloat16 (as loads on GPU/TPU pick), while the smaller ones stay float32."""

import json

import jax
import numpy as np
import pytest

from sjd_jax.cli.shard_plan import CONFIGS, main, plan
from sjd_jax.core.model import abstract_params

MESH = {"data": 4, "model": 4}


@pytest.mark.parametrize("name", ["lumina-mgpt-7b-768", "emu3-gen"])
def test_bf16_halves_params_of_the_7_8b_configs(name):
    config = CONFIGS[name]()
    f32 = plan(config, MESH, 1, 16, param_dtype="float32")
    bf16 = plan(config, MESH, 1, 16, param_dtype="bfloat16")
    # every GPT param is a float, so exactly half (no integer leaves to leave out), per device too
    assert all(np.issubdtype(x.dtype, np.floating) for x in jax.tree.leaves(abstract_params(config)))
    assert bf16["params_gib"]["total"] * 2 == f32["params_gib"]["total"]
    assert bf16["params_gib"]["per_device"] * 2 == f32["params_gib"]["per_device"]
    assert bf16["kv_cache_gib"] == f32["kv_cache_gib"]  # the KV cache was bfloat16 already
    assert (f32["param_dtype"], bf16["param_dtype"]) == ("float32", "bfloat16")
    assert plan(config, MESH, 1, 16)["params_gib"] == bf16["params_gib"]  # default auto: bf16 here


def test_emu3_gen_is_emu3_sized():
    n = sum(x.size for x in jax.tree.leaves(abstract_params(CONFIGS["emu3-gen"]())))
    assert 8.45e9 < n < 8.55e9  # Emu3-Gen: ~8.5B params (34 GB of float32), + a 16k stand-in text table


def test_cli_reports_the_resolved_param_dtype(capsys):
    argv = ["--mesh", "data=2,model=2", "--batch-per-device", "1", "--window", "16", "--json"]
    want = {"llamagen-xl": "float32", "lumina-mgpt-7b-768": "bfloat16", "emu3-gen": "bfloat16"}
    for name, dtype in want.items():
        assert main(["--model", name, *argv]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["param_dtype"] == dtype and r["compute_dtype"] == "bfloat16"
    assert main(["--model", "llamagen-xl", "--param-dtype", "bfloat16", *argv]) == 0
    assert json.loads(capsys.readouterr().out)["param_dtype"] == "bfloat16"
    assert main(["--model", "llamagen-xl", "--param-dtype", "half", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--param-dtype" in err and "half" in err

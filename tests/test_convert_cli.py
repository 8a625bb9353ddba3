"""`sjd-jax convert` end to end on tiny LlamaGen-format files, and its error paths (exit 2, no
output left behind)."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from safetensors.numpy import save_file

import sjd_jax as S
from sjd_jax.convert.cli import main
from sjd_jax.convert.llamagen import gpt_params_from_state_dict
from sjd_jax.convert.vq import janus_to_llamagen_key
from fixtures_convert import LLAMAGEN_CASES as CASES
from fixtures_convert import hf_vq_model as hf_model
from fixtures_convert import llamagen_state_dict
from fixtures_convert import vq_state_dict as state_dict

C2I = S.GPTConfig(**CASES["c2i"])
T2I = S.GPTConfig(**CASES["t2i-padded"])


def _np(sd):
    return {k: v.numpy() for k, v in sd.items()}


def run(*argv):
    return main([*map(str, argv), "--quiet"])


def test_c2i_pt_with_pickled_args(tmp_path):
    sd = llamagen_state_dict(C2I)
    src = tmp_path / "c2i_T_64.pt"  # grid from the file name: 64 px / 16 = 4
    torch.save({"model": sd, "args": argparse.Namespace(gpt_model="GPT-T", lr=1e-4)}, src)
    out = tmp_path / "c2i"
    assert run("--family", "llamagen-c2i", src, "--out", out, "--n-head", 4) == 0
    config, params = S.load(out)
    assert config == C2I
    want = gpt_params_from_state_dict(_np(sd), C2I)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    tokens = jnp.zeros((1, 16), jnp.int32)
    np.testing.assert_array_equal(
        np.asarray(S.teacher_forced_logits(params, config, jnp.array([3]), tokens)),
        np.asarray(S.teacher_forced_logits(want, C2I, jnp.array([3]), tokens)))
    assert run("--family", "llamagen-c2i", src, "--out", out, "--n-head", 4) == 2  # no overwrite
    assert run("--family", "llamagen-c2i", src, "--out", out, "--n-head", 4, "--force") == 0


def test_t2i_raw_state_dict_and_safetensors(tmp_path, monkeypatch):
    sd = llamagen_state_dict(T2I)
    torch.save(sd, tmp_path / "t2i.pt")  # FSDP-style raw state dict
    assert run("--family", "llamagen-t2i", tmp_path / "t2i.pt", "--out", tmp_path / "a",
               "--image-size", 64, "--n-head", 4) == 0
    save_file({k: v.numpy() for k, v in sd.items() if k != "freqs_cis"}, tmp_path / "t2i.safetensors")
    assert run("--family", "llamagen-t2i", tmp_path / "t2i.safetensors", "--out", tmp_path / "b",
               "--image-size", 64, "--n-head", 4) == 0
    monkeypatch.chdir(tmp_path)  # a relative path loads too (orbax itself wants absolute ones)
    (ca, pa), (cb, pb) = S.load(tmp_path / "a"), S.load("b")
    assert ca == cb == T2I
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_vq_pt_and_safetensors(tmp_path):
    model, config = hf_model((1, 1, 2), 1)
    sd = {janus_to_llamagen_key(k): v for k, v in state_dict(model).items()}
    full = {**sd, "quantize.codebook_used": np.zeros(65536, np.float32)}
    torch.save({"model": {k: torch.from_numpy(v) for k, v in full.items()}, "steps": 10}, tmp_path / "vq.pt")
    save_file(full, tmp_path / "model.safetensors")
    assert run("--family", "llamagen-vq", tmp_path / "vq.pt", "--out", tmp_path / "a") == 0
    assert run("--family", "llamagen-vq", tmp_path / "model.safetensors", "--out", tmp_path / "b") == 0
    (ca, pa), (cb, pb) = S.load(tmp_path / "a"), S.load(tmp_path / "b")
    assert ca == cb == config
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    idx = jnp.arange(16)[None] % 64
    want = torch.from_numpy(np.array(idx))
    with torch.no_grad():
        ref = model.decode(want).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(S.vq.decode_tokens(pa, ca, idx, (4, 4)))
    assert np.abs(got - ref).max() <= 1e-4


def _bad_files(tmp_path):
    sd = llamagen_state_dict(C2I)
    cases = {}
    cases["unused key"] = ({**sd, "layers.0.attention.extra": torch.zeros(2)}, "unused keys")
    cases["missing key"] = ({k: v for k, v in sd.items() if k != "norm.weight"}, "unfilled params.*norm/weight")
    cases["wrong shape"] = ({**sd, "output.weight": torch.zeros(64, 63)}, "shape mismatch for output.weight")
    out = {}
    for name, (d, match) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}_64.pt"
        torch.save({"model": d}, p)
        out[name] = (p, "llamagen-c2i", match)
    good = tmp_path / "good_64.pt"
    torch.save({"model": sd}, good)
    trunc = tmp_path / "truncated_64.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated file"] = (trunc, "llamagen-c2i", "cannot be read")
    out["wrong family (vq flag)"] = (good, "llamagen-vq", "not a LlamaGen VQ checkpoint")
    out["wrong family (t2i flag)"] = (good, "llamagen-t2i", "looks like llamagen-c2i")
    out["unknown family"] = (good, "emu4", "unknown family")
    out["missing file"] = (tmp_path / "nope_64.pt", "llamagen-c2i", "no such file")
    return out


def test_errors_exit_2_and_leave_nothing(tmp_path, capsys):
    for name, (src, family, match) in _bad_files(tmp_path).items():
        out = tmp_path / "out"
        assert run("--family", family, src, "--out", out, "--n-head", 4) == 2, name
        err = capsys.readouterr().err
        assert "error:" in err and __import__("re").search(match, err), (name, err)
        assert not out.exists(), name
        assert not list(tmp_path.glob(".out.tmp*")), name


def test_bf16_safetensors_read_without_torch(tmp_path):
    """Released Lumina / Janus shards are bf16, which safetensors' numpy reader refuses: they are
    memory-mapped as ml_dtypes.bfloat16 and widened exactly; other dtypes go through safetensors."""
    from sjd_jax.convert.cli import read_tensors, to_numpy

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g).to(torch.bfloat16), torch.randn(4, generator=g)
    from safetensors.torch import save_file as save_torch

    save_torch({"a": a, "b": b, "z": torch.zeros(0, 2, dtype=torch.bfloat16)}, str(tmp_path / "m.safetensors"))
    t = read_tensors(tmp_path / "m.safetensors")
    assert t["a"].shape == (3, 5) and t["a"].dtype == "BF16"
    np.testing.assert_array_equal(to_numpy(t["a"]), a.float().numpy())
    np.testing.assert_array_equal(to_numpy(t["b"]), b.numpy())
    assert to_numpy(t["z"]).shape == (0, 2)


def test_generate_cli_from_converted_llamagen_c2i(tmp_path, capsys):
    """``sjd-jax generate --model llamagen-c2i --ckpt DIR``: converted GPT (DIR/gpt) + VQ (DIR/vq)
    give the same PNG as the Python API at LlamaGen's demo defaults (cfg 4, top-k 2000 capped at V);
    and the errors that need no model say what to do."""
    import json

    from PIL import Image

    from sjd_jax.cli.generate import main as generate_main
    from sjd_jax.io.imaging import grid
    from sjd_jax.core.vq import decode_tokens, to_uint8

    torch.save({"model": llamagen_state_dict(C2I)}, tmp_path / "c2i_T_64.pt")
    model, _ = hf_model((1, 1, 2), 1)
    sd = {janus_to_llamagen_key(k): v for k, v in state_dict(model).items()}
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, tmp_path / "vq.pt")
    d = tmp_path / "c2i"
    assert run("--family", "llamagen-c2i", tmp_path / "c2i_T_64.pt", "--out", d / "gpt", "--n-head", 4) == 0
    assert run("--family", "llamagen-vq", tmp_path / "vq.pt", "--out", d / "vq") == 0
    png = tmp_path / "g.png"
    capsys.readouterr()
    assert generate_main(["--model", "llamagen-c2i", "--ckpt", str(d), "--class", "3", "5", "--n", "1",
                          "--method", "sjd", "--window", "4", "--out", str(png), "--json", "--quiet"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["cfg_scale"], st["top_k"], st["method"], st["images"]) == (4.0, 64, "sjd", 2)
    config, params = S.load(d / "gpt")
    vq_config, vq_params = S.load(d / "vq")
    out = S.generate(params, config, jnp.array([3, 5]), 0, method="sjd", window=4, cfg_scale=4.0, top_k=64)
    assert np.asarray(out.nfe).tolist() == st["nfe_per_image"]
    want = grid(to_uint8(decode_tokens(vq_params, vq_config, out.tokens, config.grid_size)), ncols=2, scale=2)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), want)
    for argv, msg in ((["--class", "3"], "needs --ckpt DIR with DIR/gpt"),
                      (["--ckpt", str(d)], "needs --class ID"),
                      (["--ckpt", str(tmp_path), "--class", "3"], "gpt is not an sjd-jax checkpoint; make one with: sjd-jax convert --family llamagen-c2i"),
                      (["--ckpt", str(d), "--class", "10"], "class 10 out of range"),
                      (["--ckpt", str(d), "--class", "1", "--prompt", "x"], "--prompt/--t5 are for text")):
        assert generate_main(["--model", "llamagen-c2i", *argv, "--out", str(tmp_path / "e.png")]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, (argv, err)
        assert not (tmp_path / "e.png").exists()

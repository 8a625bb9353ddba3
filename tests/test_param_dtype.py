"""bfloat16 params (``param_dtype``): stored and restored as bf16 (half the bytes on disk and in
memory), widened back to float32 exactly, verified against the stored bytes' checksums whatever
dtype they are restored in, and close to the float32 model: the tolerances below were measured on
a tiny random model (seed 0) and each negative control is far outside them."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import sjd_jax as S
from sjd_jax.cli.main import main as cli_main
from sjd_jax.convert.llamagen import gpt_params_from_state_dict
from sjd_jax.core import precision
from sjd_jax.families import presets
from sjd_jax.io import checkpoint

from fixtures_convert import llamagen_state_dict
from tiny import c2i_checkpoints

# 2 x 256 teacher-forced positions; LlamaGen-layout random weights (fixtures_convert: std 0.2, unit
# embeddings) give peaked enough logits for greedy agreement to mean something
CONFIG = S.GPTConfig(vocab_size=256, grid_size=(16, 16), dim=64, n_layer=2, n_head=4, num_classes=10)


@pytest.fixture(scope="module")
def model():
    sd = {k: v.numpy() for k, v in llamagen_state_dict(CONFIG).items()}
    return gpt_params_from_state_dict(sd, CONFIG)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """The float32 model saved as float32 and as bfloat16."""
    root = tmp_path_factory.mktemp("pd")
    checkpoint.save(root / "f32", "gpt", CONFIG, model)
    checkpoint.save(root / "bf16", "gpt", CONFIG, jax.tree.map(lambda x: x.astype(jnp.bfloat16), model))
    return root


def _dtypes(params) -> set:
    return {x.dtype.name for x in jax.tree.leaves(params)}


def _nbytes(params) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(params))


def _disk(path) -> int:
    return sum(p.stat().st_size for p in (path / "params").rglob("*") if p.is_file())


def _same(a, b) -> bool:
    return all(x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---- storage and loading ------------------------------------------------------------------------

def test_bf16_checkpoint_loads_as_bf16_at_half_the_bytes(model, saved):
    assert json.loads((saved / "bf16" / "config.json").read_text())["param_dtype"] == "bfloat16"
    config, params = checkpoint.load(saved / "bf16")  # as stored
    assert _dtypes(params) == {"bfloat16"} and config.dtype == "bfloat16"
    assert _nbytes(params) * 2 == _nbytes(model)  # every GPT leaf is a float: exactly half
    assert _same(params, jax.tree.map(lambda x: x.astype(jnp.bfloat16), model))
    ratio = _disk(saved / "bf16") / _disk(saved / "f32")
    # measured 0.44: half the data, which orbax's compression also shrinks a little more than float32's
    assert 0.3 < ratio < 0.55, ratio
    f32_config, f32 = checkpoint.load(saved / "f32")
    assert _dtypes(f32) == {"float32"} and f32_config == CONFIG  # old behaviour: as stored, float32


def test_bf16_checkpoint_widens_to_float32_exactly(saved):
    _, bf = checkpoint.load(saved / "bf16")
    config, wide = checkpoint.load(saved / "bf16", param_dtype="float32")
    assert _dtypes(wide) == {"float32"} and config.dtype == "float32"
    assert _same(wide, jax.tree.map(lambda x: x.astype(jnp.float32), bf))


@pytest.mark.parametrize("group_bytes", [256 << 20, 1000])  # one group / a group per leaf or two
def test_float32_checkpoint_narrows_on_load(model, saved, monkeypatch, group_bytes):
    monkeypatch.setattr(checkpoint, "NARROW_GROUP_BYTES", group_bytes)
    config, params = checkpoint.load(saved / "f32", param_dtype="bfloat16")
    assert config == CONFIG.replace(dtype="bfloat16")
    assert _same(params, jax.tree.map(lambda x: x.astype(jnp.bfloat16), model))
    _, unverified = checkpoint.load(saved / "f32", param_dtype="bfloat16", verify=False)  # orbax casts
    assert _same(unverified, params)


def test_auto_on_cpu_is_float32_and_a_bad_value_is_refused(saved):
    for ck in ("f32", "bf16"):
        config, params = checkpoint.load(saved / ck, param_dtype="auto")  # the test backend is CPU
        assert _dtypes(params) == {"float32"} and config.dtype == "float32"
    with pytest.raises(ValueError, match="param_dtype must be one of auto, float32, bfloat16, got 'fp16'"):
        checkpoint.load(saved / "f32", param_dtype="fp16")


def test_loaders_report_the_dtype(tmp_path):
    c2i_checkpoints(tmp_path / "c2i")
    b = presets.from_checkpoint("llamagen-c2i", tmp_path / "c2i", param_dtype="bfloat16")
    assert b.param_dtype == "bfloat16" and b.gpt_config.dtype == "bfloat16"
    assert _dtypes(b.gpt_params) == {"bfloat16"} and _dtypes(b.vq_params) == {"float32"}  # VQ stays
    b = presets.from_checkpoint("llamagen-c2i", tmp_path / "c2i")  # auto, on CPU
    assert b.param_dtype == "float32" and b.gpt_config.dtype == "float32"
    assert presets.load("fashion-mnist", param_dtype="bfloat16").param_dtype == "bfloat16"
    with pytest.raises(ValueError, match="param_dtype must be one of"):
        presets.from_checkpoint("llamagen-c2i", tmp_path / "c2i", param_dtype="half")


# ---- accuracy against float32 -----------------------------------------------------------------

# Measured (seed 0, jax 0.10.2 CPU), bf16 params and bf16 compute vs float32, 512 positions:
# max |dlogit| = 0.148 logit std, RMS 0.021 std, greedy agreement 0.980 (seeds 1-3: max 0.18-0.19,
# RMS 0.020-0.021, agreement 0.963-0.975).
MAX_DIFF, RMS_DIFF, AGREEMENT = 0.25, 0.03, 0.95


def _compare(reference, logits) -> tuple[float, float, float]:
    std = reference.std()
    diff = logits - reference
    return (float(np.abs(diff).max() / std), float(np.sqrt((diff ** 2).mean()) / std),
            float((reference.argmax(-1) == logits.argmax(-1)).mean()))


def _within(m) -> bool:
    return m[0] <= MAX_DIFF and m[1] <= RMS_DIFF and m[2] >= AGREEMENT


def test_bf16_logits_and_greedy_tokens_track_float32(model, saved):
    cond = jnp.array([1, 7])
    tokens = jax.random.randint(jax.random.key(0), (2, CONFIG.num_image_tokens), 0, CONFIG.vocab_size)
    ref = np.asarray(S.teacher_forced_logits(model, CONFIG, cond, tokens))
    config, bf = checkpoint.load(saved / "bf16")
    assert config.dtype == "bfloat16"
    m = _compare(ref, np.asarray(S.teacher_forced_logits(bf, config, cond, tokens)))
    assert _within(m), m
    # negative controls, in float32: a wrong weight (layer 1's attention output = layer 0's)
    # measured 2.43 / 0.41 / 0.52; 20% noise on that one kernel 0.50 / 0.060 / 0.93
    layers = model["params"]
    wrong = {"params": {**layers, "layers_1": {**layers["layers_1"], "attention": {
        **layers["layers_1"]["attention"], "wo": layers["layers_0"]["attention"]["wo"]}}}}
    m = _compare(ref, np.asarray(S.teacher_forced_logits(wrong, CONFIG, cond, tokens)))
    assert not _within(m) and m[2] < 0.7, m
    w = layers["layers_1"]["attention"]["wo"]["kernel"]
    noisy = jax.tree.map(lambda x: x, model)
    noisy["params"]["layers_1"]["attention"]["wo"]["kernel"] = (
        w + 0.2 * jnp.std(w) * jax.random.normal(jax.random.key(9), w.shape))
    m = _compare(ref, np.asarray(S.teacher_forced_logits(noisy, CONFIG, cond, tokens)))
    assert not _within(m), m


# ---- the rules of "auto" ------------------------------------------------------------------------

def test_resolve_param_dtype_rules():
    big, small = 7_000_000_000, 775_000_000  # a 7B family, LlamaGen GPT-XL
    assert precision.resolve_param_dtype("auto", n_params=big, backend="cpu") == "float32"
    for backend in ("gpu", "tpu", "cuda"):
        assert precision.resolve_param_dtype("auto", n_params=big, backend=backend) == "bfloat16"
        assert precision.resolve_param_dtype("auto", n_params=small, backend=backend) == "float32"
    assert precision.resolve_param_dtype("auto", n_params=precision.LARGE_PARAMS, backend="gpu") == "bfloat16"
    assert precision.resolve_param_dtype("auto", n_params=precision.LARGE_PARAMS - 1, backend="gpu") == "float32"
    for explicit in ("float32", "bfloat16"):  # explicit wins, everywhere
        for backend in ("cpu", "tpu"):
            for n in (big, small):
                assert precision.resolve_param_dtype(explicit, n_params=n, backend=backend) == explicit
    assert precision.resolve_param_dtype("auto", n_params=big) == "float32"  # default backend: CPU here
    for bad in ("bf16", "float16", None, 16):
        with pytest.raises(ValueError, match="param_dtype must be one of auto, float32, bfloat16"):
            precision.resolve_param_dtype(bad, n_params=small, backend="gpu")


# ---- integrity --------------------------------------------------------------------------------

def _tampered(saved, name, tmp_path):
    """A copy of ``saved/name`` whose stored checksum of one leaf is wrong (as if its bytes were)."""
    dst = tmp_path / name
    shutil.copytree(saved / name, dst)
    meta = json.loads((dst / "config.json").read_text())
    key = "params/layers_1/attention/wo/kernel"
    meta["integrity"]["leaves"][key] = "0" * 16
    (dst / "config.json").write_text(json.dumps(meta))
    return dst, key


@pytest.mark.parametrize("name,param_dtype", [("bf16", None), ("bf16", "float32"), ("f32", "bfloat16")])
def test_damaged_checkpoints_are_refused_in_every_dtype(saved, tmp_path, name, param_dtype):
    """Stored bf16 restored as is or widened, stored float32 narrowed: each checks the stored bytes."""
    dst, key = _tampered(saved, name, tmp_path)
    with pytest.raises(ValueError, match=f"parameter {key} fails its checksum"):
        checkpoint.load(dst, param_dtype=param_dtype)
    data = max((p for p in (saved / name / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    broken = tmp_path / f"{name}-flipped"
    shutil.copytree(saved / name, broken)
    target = broken / data.relative_to(saved / name)
    b = bytearray(target.read_bytes())
    for i in range(len(b) // 2 - 32, len(b) // 2 + 32):  # 64 bytes in the middle of the weights' file
        b[i] ^= 0xFF
    target.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="damaged"):
        checkpoint.load(broken, param_dtype=param_dtype)


# ---- sjd-jax convert --param-dtype ------------------------------------------------------------

def test_convert_cli_param_dtype(tmp_path, capsys):
    c = S.GPTConfig(vocab_size=64, grid_size=(4, 4), dim=64, n_layer=2, n_head=4, num_classes=10)
    sd = llamagen_state_dict(c)
    src = tmp_path / "c2i_T_64.pt"
    torch.save({"model": sd}, src)
    base = ["convert", "--family", "llamagen-c2i", str(src), "--n-head", "4"]
    assert cli_main([*base, "--out", str(tmp_path / "f32"), "--quiet"]) == 0
    assert cli_main([*base, "--out", str(tmp_path / "bf16"), "--param-dtype", "bfloat16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dtype"] == "bfloat16"
    want = gpt_params_from_state_dict({k: v.numpy() for k, v in sd.items()}, c)
    assert summary["bytes"] * 2 == _nbytes(want)
    config, params = checkpoint.load(tmp_path / "bf16")
    assert config == c.replace(dtype="bfloat16")
    assert _same(params, jax.tree.map(lambda x: x.astype(jnp.bfloat16), want))
    assert 0.3 < _disk(tmp_path / "bf16") / _disk(tmp_path / "f32") < 0.55
    # bad values: one line, exit 2
    assert cli_main([*base, "--out", str(tmp_path / "x"), "--param-dtype", "float16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--param-dtype" in err and "float16" in err
    vq = ["convert", "--family", "llamagen-vq", str(src), "--out", str(tmp_path / "vq"), "--param-dtype", "bfloat16"]
    assert cli_main(vq) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no transformer" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "vq").exists()

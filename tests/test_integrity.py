"""Loads verify what they read: per-leaf checksums, NaN/inf, damaged or missing data files and
malformed config.json fields are each one ValueError (one line, exit 2 in the CLI) naming the
checkpoint, never garbage weights or a traceback."""

import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import sjd_jax as S
from sjd_jax.io import checkpoint
from sjd_jax.io import integrity
from sjd_jax.cli.main import main
from sjd_jax.core.model import init_params

from tiny import c2i_checkpoints, tiny_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    path = tmp_path_factory.mktemp("ck") / "ck"
    checkpoint.save(path, "gpt", config, params)
    return path, config, jax.tree.map(np.asarray, params)


def _copy(saved, tmp_path):
    dst = tmp_path / "ck"
    shutil.copytree(saved[0], dst)
    return dst


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _flip(path, n=64):
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    for i in range(max(0, mid - n // 2), min(len(b), mid + n // 2)):
        b[i] ^= 0xFF
    path.write_bytes(bytes(b))


def test_every_byte_flip_is_refused_or_harmless(saved, tmp_path):
    """64 flipped bytes in the middle of each file of a checkpoint, one file at a time: the load
    fails with one line naming the checkpoint, or (bytes orbax does not read for these weights)
    returns exactly the saved weights. A flip in the weights' own data file is always caught."""
    files = sorted(p.relative_to(saved[0]) for p in saved[0].rglob("*") if p.is_file() and p.stat().st_size)
    weights_file = max(files, key=lambda f: (saved[0] / f).stat().st_size)
    assert "/d/" in weights_file.as_posix() and len(files) >= 8
    caught = []
    for rel in files:
        ck = tmp_path / rel.as_posix().replace("/", "_")
        shutil.copytree(saved[0], ck)
        _flip(ck / rel)
        try:
            _, params = checkpoint.load(ck)
        except ValueError as e:
            assert str(ck) in str(e) and "\n" not in str(e), (rel, e)
            caught.append(rel)
        else:
            assert _equal(params, saved[2]), f"{rel}: damaged data loaded as different weights"
    # orbax splits the weights over a varying number of ocdbt files (13 to 15 in all here), so which
    # and how many of the small ones matter varies from save to save; these are read by every load
    always = {Path("config.json"), Path("params/state/_METADATA"), Path("params/state/manifest.ocdbt")}
    assert weights_file in caught and always <= set(caught), caught


def test_checksum_failure_names_the_leaf(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    meta = json.loads((ck / "config.json").read_text())
    key = "params/layers_1/attention/wqkv/kernel"
    meta["integrity"]["leaves"][key] = "0" * 16
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"parameter {key} fails its checksum"):
        checkpoint.load(ck)
    _, params = checkpoint.load(ck, verify=False)  # the escape hatch, for forensics
    assert _equal(params, saved[2])


@pytest.mark.parametrize("damage", ["missing", "truncated", "empty"])
def test_missing_or_truncated_data_file_is_one_line(saved, tmp_path, damage):
    ck = _copy(saved, tmp_path)
    big = max((p for p in (ck / "params").rglob("*") if p.is_file() and "/d/" in p.as_posix()),
              key=lambda p: p.stat().st_size)
    if damage == "missing":
        big.unlink()
    else:
        big.write_bytes(big.read_bytes()[: big.stat().st_size // 2] if damage == "truncated" else b"")
    with pytest.raises(ValueError) as e:
        checkpoint.load(ck)
    msg = str(e.value)
    assert msg.startswith(f"{ck}: checkpoint data is damaged or incomplete") and "\n" not in msg, msg
    assert len(msg) < 500


def test_non_finite_weights_are_refused_on_load(tmp_path):
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    params["params"]["norm"]["weight"] = params["params"]["norm"]["weight"].at[3].set(np.nan)
    checkpoint.save(tmp_path / "ck", "gpt", config, params)  # its checksum matches: NaN was saved
    with pytest.raises(ValueError, match="parameter params/norm/weight holds NaN or inf"):
        checkpoint.load(tmp_path / "ck")


def test_checkpoint_without_checksums_loads_with_one_note(saved, tmp_path, caplog):
    ck = _copy(saved, tmp_path)
    meta = json.loads((ck / "config.json").read_text())
    del meta["integrity"]
    (ck / "config.json").write_text(json.dumps(meta))
    with caplog.at_level("INFO", logger="sjd_jax"):
        _, params = checkpoint.load(ck)
    assert _equal(params, saved[2])
    notes = [r.getMessage() for r in caplog.records if r.name == "sjd_jax"]
    assert len(notes) == 1 and "has no checksums" in notes[0] and "\n" not in notes[0]


def test_the_bundled_model_carries_checksums():
    from sjd_jax.families import presets

    for name in ("gpt", "vq", "classifier"):
        meta = json.loads((presets.ASSETS / "fashion_mnist" / name / "config.json").read_text())
        assert meta["integrity"]["algorithm"] == integrity.ALGORITHM and meta["integrity"]["leaves"]


def test_digest_sees_dtype_shape_and_every_byte():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = integrity.digest(a)
    assert d == integrity.digest(a.copy()) and len(d) == 16
    assert d != integrity.digest(a.reshape(4, 3)) and d != integrity.digest(a.view(np.int32))
    b = a.copy()
    b.reshape(-1).view(np.uint8)[17] ^= 1  # one bit
    assert d != integrity.digest(b)
    import ml_dtypes

    h = a.astype(ml_dtypes.bfloat16)
    assert integrity.digest(h) != integrity.digest(a) and integrity.is_finite(h)
    assert not integrity.is_finite(np.array([1.0, np.inf], ml_dtypes.bfloat16))
    assert integrity.is_finite(np.array([3e38, 3e38], np.float32))  # the sum overflows; every value is finite


# ---- config.json, field by field -----------------------------------------------------------------

def _set(meta, dotted, value):
    node = meta
    *head, last = dotted.split(".")
    for k in head:
        node = node[k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value


BAD_CONFIGS = [
    ("version", "1", "version must be a non-negative integer, got '1'"),
    ("version", 2, "has format version 2; this sjd-jax reads <= 1"),
    ("config.dim", "768", "gpt config field 'dim' must be an integer, got '768'"),
    ("config.n_layer", 0, "n_layer must be positive"),
    ("config.n_head", 0, "must be positive"),
    ("config.grid_size", [100000, 100000], "beyond any model"),
    ("config.grid_size", [4], "grid_size' must be a list of 2 items"),
    ("config.vocab_size", 10 ** 12, "beyond any model"),
    ("config.norm_eps", -1.0, "norm_eps, rope_theta and ffn_dim_multiplier must be positive"),
    ("config.rope_type", "3d", "must be one of '2d', '1d'"),
    ("config.qk_norm", "yes", "must be true/false"),
    ("config.n_kv_head", 3, "not divisible by n_kv_head 3"),
    ("config.bogus", 1, "unknown gpt config field(s) ['bogus']"),
    ("config.dim", KeyError, None),  # a field left out takes its default: loads, shapes then disagree
    ("config", [1, 2], '"config" must be a JSON object'),
    ("kind", "nope", "unknown checkpoint kind 'nope'"),
    ("format", "other", "not an sjd-jax config"),
    ("integrity", [1], "malformed integrity record"),
    ("integrity.algorithm", "md5", "checksums of algorithm 'md5'"),
]


@pytest.mark.parametrize("field,value,msg", BAD_CONFIGS, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_CONFIGS])
def test_malformed_config_json_is_one_line(saved, tmp_path, field, value, msg):
    ck = _copy(saved, tmp_path)
    meta = json.loads((ck / "config.json").read_text())
    _set(meta, field, value)
    (ck / "config.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e:
        checkpoint.load(ck)
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(e.value) and str(ck) in str(e.value), e.value
    if msg:
        assert msg in str(e.value), e.value


@pytest.mark.parametrize("text", ["[1, 2]", "not json", "\"sjd-jax\"", ""])
def test_config_json_that_is_not_an_object(saved, tmp_path, text):
    ck = _copy(saved, tmp_path)
    (ck / "config.json").write_text(text)
    with pytest.raises(ValueError, match="config.json"):
        checkpoint.load(ck)


# ---- the CLI on a damaged checkpoint ---------------------------------------------------------------

def test_generate_on_damaged_weights_is_exit_2_and_writes_nothing(tmp_path, capsys):
    """The issue's reproduction: XOR 64 bytes in the middle of the largest data file of a converted
    class-conditional checkpoint; generate must not exit 0 with garbage."""
    ck = c2i_checkpoints(tmp_path / "c2i")
    argv = ["generate", "--model", "llamagen-c2i", "--ckpt", str(ck), "--class", "0", "--n", "1", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "ok.png")]) == 0  # intact: it works
    big = max((p for p in (ck / "gpt" / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    _flip(big)
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(ck / "gpt") in err and "damaged" in err, err
    assert not (tmp_path / "bad.png").exists()
    S.load(ck / "vq")  # the other checkpoint is fine


def test_damaged_data_in_a_fresh_process_is_exactly_one_line(tmp_path):
    """What the user sees, exit noise included: orbax's failed reads used to add 220+ lines
    ("Event loop is closed", "Task exception was never retrieved") around the error."""
    import subprocess
    import sys
    from pathlib import Path

    ck = c2i_checkpoints(tmp_path / "c2i")
    big = max((p for p in (ck / "gpt" / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    big.unlink()
    r = subprocess.run([sys.executable, "-m", "sjd_jax.cli.main", "generate", "--model", "llamagen-c2i", "--ckpt",
                        str(ck), "--class", "0", "--n", "1", "--out", str(tmp_path / "x.png")],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "checkpoint data is damaged or incomplete" in r.stderr, r.stderr
    assert not (tmp_path / "x.png").exists()

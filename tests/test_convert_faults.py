"""``sjd-jax convert`` on corrupt, malformed or out-of-range input: every case is refused with ONE
line naming the file / flag / tensor, exit status 2 and no ``--out`` left behind (ValueError in
Python); legacy (non-zip) ``torch.save`` files convert like zip ones."""

import argparse
import fractions
import json
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

import sjd_jax as S
from sjd_jax.convert.cli import convert, main
from sjd_jax.convert.llamagen import gpt_params_from_state_dict
from sjd_jax.convert.lumina import vqgan_config
from sjd_jax.convert.tree import require_finite

CFG = S.GPTConfig(vocab_size=64, grid_size=(4, 4), dim=64, n_layer=2, n_head=4, num_classes=10)


def state_dict(c: S.GPTConfig = CFG, seed: int = 0) -> dict:
    """Random LlamaGen c2i tensors (torch layout, LlamaGen names) for ``c``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    hd, kv = c.head_dim, c.kv_heads
    sd = {"tok_embeddings.weight": r(c.vocab_size, c.dim), "norm.weight": 1 + r(c.dim),
          "output.weight": r(c.vocab_size, c.dim), "cls_embedding.embedding_table.weight": r(c.num_classes + 1, c.dim)}
    for i in range(c.n_layer):
        p = f"layers.{i}."
        sd.update({p + "attention.wqkv.weight": r((c.n_head + 2 * kv) * hd, c.dim),
                   p + "attention.wo.weight": r(c.dim, c.n_head * hd),
                   p + "feed_forward.w1.weight": r(c.ffn_hidden, c.dim),
                   p + "feed_forward.w3.weight": r(c.ffn_hidden, c.dim),
                   p + "feed_forward.w2.weight": r(c.dim, c.ffn_hidden),
                   p + "attention_norm.weight": 1 + r(c.dim), p + "ffn_norm.weight": 1 + r(c.dim)})
    return sd


def run(*argv) -> int:
    return main([*map(str, argv), "--quiet"])


def refused(capsys, out: Path, *argv, needles=()) -> str:
    """Run the converter; assert exit 2, one stderr line holding every needle, and no ``out``."""
    rc = run(*argv, "--out", out)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.count("\n") == 1 and err.startswith("sjd-jax convert: error: "), err
    for n in needles:
        assert n in err, (n, err)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), argv
    return err


def leaves(path) -> list:
    return [np.asarray(x) for x in jax.tree.leaves(S.load(path)[1])]


# ---- 1. legacy (non-zip) torch.save files --------------------------------------------------------

def test_legacy_torch_save_converts_like_zip(tmp_path, capsys):
    """``_use_new_zipfile_serialization=False`` files cannot be memory-mapped: they are read into
    memory (weights_only as usual) and give exactly the zip-format file's weights."""
    sd = state_dict()
    obj = {"model": sd, "args": argparse.Namespace(gpt_model="GPT-T")}  # LlamaGen pickles its args
    torch.save(obj, tmp_path / "zip_64.pt")
    torch.save(obj, tmp_path / "legacy_64.pt", _use_new_zipfile_serialization=False)
    assert zipfile.is_zipfile(tmp_path / "zip_64.pt") and not zipfile.is_zipfile(tmp_path / "legacy_64.pt")
    assert run("--family", "llamagen-c2i", tmp_path / "zip_64.pt", "--out", tmp_path / "z", "--n-head", 4) == 0
    assert run("--family", "llamagen-c2i", tmp_path / "legacy_64.pt", "--out", tmp_path / "l", "--n-head", 4) == 0
    want = leaves(tmp_path / "z")
    for a, b in zip(want, leaves(tmp_path / "l"), strict=True):
        np.testing.assert_array_equal(a, b)
    # a legacy file pickling another object: weights_only refuses it and says what would help ...
    torch.save({**obj, "best": fractions.Fraction(1, 3)}, tmp_path / "pickles_64.pt",
               _use_new_zipfile_serialization=False)
    refused(capsys, tmp_path / "p", "--family", "llamagen-c2i", tmp_path / "pickles_64.pt", "--n-head", 4,
            needles=(str(tmp_path / "pickles_64.pt"), "fractions.Fraction", "--trust-pickle"))
    # ... which then loads it
    assert run("--family", "llamagen-c2i", tmp_path / "pickles_64.pt", "--out", tmp_path / "p", "--n-head", 4,
               "--trust-pickle") == 0
    for a, b in zip(want, leaves(tmp_path / "p"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unreadable_files_do_not_suggest_trust_pickle(tmp_path, capsys):
    """--trust-pickle is suggested only when a weights-only load refused a pickled object; a
    damaged or foreign file says so instead."""
    torch.save({"model": state_dict()}, tmp_path / "good_64.pt")
    data = (tmp_path / "good_64.pt").read_bytes()
    (tmp_path / "truncated_64.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text_64.pt").write_text("not a checkpoint\n" * 20)
    for name, extra, needle in (("truncated_64.pt", (), "damaged zip archive"),
                                ("text_64.pt", (), "not a torch.save file"),
                                ("text_64.pt", ("--trust-pickle",), "not a torch.save file")):
        err = refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", tmp_path / name, "--n-head", 4, *extra,
                      needles=(str(tmp_path / name), "cannot be read", needle))
        assert "--trust-pickle" not in err, err


# ---- 2. zip CRC ----------------------------------------------------------------------------------

def _flip_largest_record(path: Path, n: int = 64) -> str:
    """XOR ``n`` bytes in the middle of the largest stored member's data; returns its name."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(raw[info.header_offset + o:info.header_offset + o + 2], "little")
                           for o in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2 - n // 2
    raw[start:start + n] = bytes(b ^ 0x5A for b in raw[start:start + n])
    path.write_bytes(bytes(raw))
    return info.filename


def test_zip_member_with_flipped_bytes_is_refused(tmp_path, capsys):
    src = tmp_path / "flipped_64.pt"
    torch.save({"model": state_dict()}, src)
    member = _flip_largest_record(src)
    torch.load(src, weights_only=True)  # torch itself reads the damaged weights without complaint
    refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", src, "--n-head", 4,
            needles=(str(src), member, "CRC-32"))


# ---- 3. non-finite and complex tensors -----------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(tmp_path, capsys, bad):
    sd = state_dict()
    sd["layers.1.feed_forward.w2.weight"][3, 5] = bad
    torch.save({"model": sd}, tmp_path / "c2i_64.pt")
    refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", tmp_path / "c2i_64.pt", "--n-head", 4,
            needles=(str(tmp_path / "c2i_64.pt"), "tensor layers.1.feed_forward.w2.weight", "1 non-finite",
                     "(3, 5)"))


def test_non_finite_bf16_safetensors_and_complex_tensors_are_refused(tmp_path, capsys):
    from safetensors.torch import save_file

    sd = {k: v.to(torch.bfloat16) for k, v in state_dict().items()}
    sd["norm.weight"][7] = float("nan")
    save_file(sd, str(tmp_path / "bf16_64.safetensors"))
    refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", tmp_path / "bf16_64.safetensors", "--n-head", 4,
            needles=(str(tmp_path / "bf16_64.safetensors"), "tensor norm.weight", "non-finite"))
    sd = state_dict()
    sd["norm.weight"] = torch.complex(sd["norm.weight"], torch.ones(64))
    torch.save({"model": sd}, tmp_path / "complex_64.pt")
    refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", tmp_path / "complex_64.pt", "--n-head", 4,
            needles=(str(tmp_path / "complex_64.pt"), "tensor norm.weight is complex (complex64)"))


def test_python_api_refuses_non_finite_and_complex_by_name():
    """``sjd_jax.convert.tree.assign`` checks every tensor of every family: bare arrays too."""
    sd = {k: v.numpy() for k, v in state_dict().items()}
    gpt_params_from_state_dict(sd, CFG)  # the clean dict converts
    out = sd["output.weight"].copy()
    out[9, 0] = np.inf
    with pytest.raises(ValueError, match=r"tensor output.weight holds 1 non-finite value.*the first at index \(0, 9\)"):
        gpt_params_from_state_dict({**sd, "output.weight": out}, CFG)  # index in the kernel (transposed)
    with pytest.raises(ValueError, match=r"tensor norm.weight is complex \(complex64\)"):
        gpt_params_from_state_dict({**sd, "norm.weight": sd["norm.weight"].astype(np.complex64)}, CFG)


def test_finite_check_falls_back_to_the_exact_test_when_the_sum_overflows():
    big = np.full((1000,), 3e38, np.float32)  # finite, but its float32 sum is inf
    with np.errstate(over="ignore"):
        assert not np.isfinite(big.sum())
        require_finite(big, "big")
        big[999] = np.nan
        with pytest.raises(ValueError, match=r"big holds 1 non-finite value\(s\) \(NaN/inf\) of 1000, "
                                             r"the first at index \(999,\)"):
            require_finite(big, "big")
    require_finite(np.zeros((0, 3), np.float32), "empty")


# ---- 4. out-of-range flag values -----------------------------------------------------------------

def test_bad_n_head_and_image_size(tmp_path, capsys):
    src = tmp_path / "c2i_64.pt"
    torch.save({"model": state_dict()}, src)
    cases = [
        (("--n-head", 0), "argument --n-head: must be in 1..65536, got 0"),
        (("--n-head", -1), "argument --n-head: must be in 1..65536, got -1"),
        (("--n-head", "four"), "argument --n-head: expected a whole number, got 'four'"),
        (("--n-head", 3), "--n-head 3: must divide the model dim 64"),
        (("--n-head", 128), "--n-head 128: must divide the model dim 64"),
        (("--n-head", 32), "--n-head 32: must divide the model dim 64 (of c2i_64.pt) into heads of a multiple of 4"),
        (("--n-head", 4, "--image-size", 0), "argument --image-size: must be in 1..8192, got 0"),
        (("--n-head", 4, "--image-size", -64), "argument --image-size: must be in 1..8192, got -64"),
        (("--n-head", 4, "--image-size", 72),
         "--image-size 72: image size 72 is not a multiple of the 16x downsampling"),
    ]
    for extra, needle in cases:
        refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", src, *extra, needles=(needle,))
    t = time.perf_counter()
    refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", src, "--n-head", 4, "--image-size", 1600000,
            needles=("argument --image-size: must be in 1..8192, got 1600000",))
    assert time.perf_counter() - t < 1.0
    odd = tmp_path / "c2i_72.pt"
    odd.write_bytes(src.read_bytes())
    refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", odd, "--n-head", 4,
            needles=("c2i_72.pt (size from its name; --image-size overrides it): image size 72 is not a multiple",))
    # the Python API (no argparse) gets the same bounds
    args = argparse.Namespace(image_size=0, n_head=4, trust_pickle=False, force=False, quiet=True)
    with pytest.raises(ValueError, match=r"--image-size 0: image size 0 must be a whole number of pixels in 1\.\.8192"):
        convert("llamagen-c2i", src, tmp_path / "o", args)
    with pytest.raises(ValueError, match=r"--n-head 0: must divide"):
        convert("llamagen-c2i", src, tmp_path / "o", argparse.Namespace(**{**vars(args), "image_size": 64,
                                                                              "n_head": 0}))
    assert not (tmp_path / "o").exists()


# ---- 5. malformed state dicts --------------------------------------------------------------------

def _malformed(sd: dict) -> dict:
    gqa = CFG.replace(n_kv_head=2)
    bad_rows = {k: (torch.zeros(100, 64) if k.endswith("wqkv.weight") else v) for k, v in sd.items()}
    kv3 = {k: (torch.zeros(160, 64) if k.endswith("wqkv.weight") else v) for k, v in sd.items()}  # kv 3 ∤ 4 heads
    return {
        "no_layers": ({k: v for k, v in sd.items() if not k.startswith("layers.")},
                      ("no_layers_64.pt: no tensors named layers.N.*: not a complete state dict",)),
        "layer_gap": ({k.replace("layers.1.", "layers.2."): v for k, v in sd.items()},
                      ("tensors named layers.N.* number blocks [0, 2], not 0..n-1: some are missing",)),
        "wqkv_rows": (bad_rows, ("layers.0.attention.wqkv.weight has shape (100, 64)", "with 4 heads of 16",
                                 "rows one of [96, 128, 192]")),
        "wqkv_kv3": (kv3, ("layers.0.attention.wqkv.weight has shape (160, 64)",)),
        "flat_embeddings": ({**sd, "tok_embeddings.weight": torch.zeros(64)},
                            ("tensor tok_embeddings.weight has shape (64,), expected 2 non-empty dims",)),
        "gqa_ok": (state_dict(gqa), None),
    }


def test_malformed_llamagen_state_dicts(tmp_path, capsys):
    for name, (sd, needles) in _malformed(state_dict()).items():
        src = tmp_path / f"{name}_64.pt"
        torch.save({"model": sd}, src)
        if needles is None:  # control: a well-formed GQA dict (kv = 2 from 128 rows) converts
            assert run("--family", "llamagen-c2i", src, "--out", tmp_path / name, "--n-head", 4) == 0
            assert S.load(tmp_path / name)[0].kv_heads == 2
            continue
        refused(capsys, tmp_path / "o", "--family", "llamagen-c2i", src, "--n-head", 4, needles=(src.name, *needles))


def test_malformed_vq_state_dicts(tmp_path, capsys):
    z = torch.zeros
    vq = {"quantize.embedding.weight": z(16, 8), "decoder.conv_in.weight": z(32, 8, 3, 3),
          "encoder.conv_in.weight": z(32, 3, 3, 3), "quant_conv.weight": z(8, 32, 1, 1)}
    torch.save({"model": vq}, tmp_path / "vq.pt")
    refused(capsys, tmp_path / "o", "--family", "llamagen-vq", tmp_path / "vq.pt",
            needles=("vq.pt: no tensors named encoder.conv_blocks.N.*",))
    torch.save({"model": {**vq, "encoder.conv_blocks.0.res.0.conv1.weight": z(48, 32, 3, 3)}}, tmp_path / "vq.pt")
    refused(capsys, tmp_path / "o", "--family", "llamagen-vq", tmp_path / "vq.pt",
            needles=("encoder.conv_blocks.0.res.0.conv1.weight has 48 output channels, not a multiple of the base 32",))
    taming = {"quantize.embedding.weight": z(16, 8), "decoder.conv_in.weight": z(32, 8, 3, 3),
              "encoder.conv_in.weight": z(32, 3, 3, 3), "quant_conv.weight": z(8, 32, 1, 1),
              "encoder.down.0.attn.0.q.weight": z(32, 32, 1, 1)}
    with pytest.raises(ValueError, match=r"vqgan.ckpt: no tensors named encoder\.down\.0\.block\.N\.\*"):
        vqgan_config(taming, "vqgan.ckpt")


# ---- 6. configs written before qk_norm_eps / attn_head_dim ---------------------------------------

def test_config_json_without_the_new_fields_loads_with_the_defaults():
    from sjd_jax.io.checkpoint import config_from_dict

    meta = json.loads((Path(S.__file__).parent / "assets/fashion_mnist/gpt/config.json").read_text())
    assert "qk_norm_eps" not in meta["config"] and "attn_head_dim" not in meta["config"]
    config = config_from_dict("gpt", meta["config"])
    assert (config.qk_norm_eps, config.attn_head_dim, config.head_dim) == (1e-5, None, 64)

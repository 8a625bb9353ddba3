"""Emu3 vision-tokenizer decoder: parity with HF transformers' ``Emu3VQVAE.decode`` on tiny random
weights, from HF names, ``model.vqmodel.``-prefixed HF names and original BAAI names; converter
strictness; config parsing from both config dict styles."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Emu3VQVAE, Emu3VQVAEConfig

from sjd_jax.convert.emu3_vq import emu3_vq_config, emu3_vq_params, hf_to_original_key
from sjd_jax.core.vq.emu3 import Emu3VQConfig, abstract_emu3_vq_params, decode_codes, decode_video

CODEBOOK = 64


def hf_model(n_res=1, heads=1, seed=0):
    torch.manual_seed(seed)
    cfg = Emu3VQVAEConfig(codebook_size=CODEBOOK, embed_dim=4, latent_channels=4, base_channels=32,
                          channel_multiplier=[1, 2], num_res_blocks=n_res, attn_resolutions=[1],
                          temporal_downsample_factor=4, hidden_size=64, num_attention_heads=heads)
    model = Emu3VQVAE(cfg).eval()
    with torch.no_grad():  # non-trivial norms, biases and BatchNorm running stats
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
    return model


def state_dict(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def original_names(sd):
    """HF -> BAAI names: the inverse of HF's conversion renames (attention Linear -> 1x1 conv)."""
    rules = [(r"^encoder\.down_block\.down\.", "encoder.down."), (r"^decoder\.up_block\.up\.", "decoder.up."),
             (r"^(encoder|decoder)\.middle_block\.attn_norm\.", r"\1.mid.attn_1.norm."),
             (r"^(encoder|decoder)\.middle_block\.", r"\1.mid."), (r"\.attn_norms\.(\d+)\.", r".attn.\1.norm.")]
    proj = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "proj_out"}
    out = {}
    for k, v in sd.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        if m := re.search(r"\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$", k):
            k = k[:m.start()] + f".{proj[m.group(1)]}.{m.group(2)}"
            if m.group(2) == "weight":
                v = v[:, :, None, None]
        out[k] = v
    return out


@pytest.fixture(scope="module")
def model():
    return hf_model()


@pytest.fixture(scope="module")
def config(model):
    return emu3_vq_config(model.config.to_dict())


def test_config_from_hf_and_original_dicts(model):
    hf = emu3_vq_config(model.config.to_dict())
    assert hf == Emu3VQConfig(codebook_size=64, embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                              attn_levels=(1,), temporal_downsample=4)
    assert hf.downsample == 2 and Emu3VQConfig.from_dict(hf.to_dict()) == hf
    baai = {"architectures": ["Emu3VisionVQModel"], "attn_resolutions": [3], "ch": 256, "ch_mult": [1, 2, 2, 4],
            "codebook_size": 32768, "double_z": False, "dropout": 0.0, "embed_dim": 4, "in_channels": 3,
            "model_type": "Emu3VisionVQ", "num_res_blocks": 2, "out_channels": 3,
            "temporal_downsample_factor": 4, "z_channels": 4}
    c = emu3_vq_config(baai)
    assert c == Emu3VQConfig() and c.downsample == 8
    assert emu3_vq_config({"vq_config": Emu3VQVAEConfig().to_dict()}) == Emu3VQConfig()
    with pytest.raises(ValueError, match="unknown"):
        Emu3VQConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize("names", ["hf", "hf-prefixed", "original"])
def test_decode_matches_hf(model, config, names):
    sd = state_dict(model)
    if names == "hf-prefixed":
        sd = {"model.vqmodel." + k: v for k, v in sd.items()}
    elif names == "original":
        sd = original_names(sd)
        assert "decoder.up.1.attn.0.norm.conv_y.weight" in sd and sd["decoder.mid.attn_1.q.weight"].ndim == 4
    params = emu3_vq_params(sd, config, np.asarray)
    assert set(params) == {"params", "batch_stats"}
    h, w = 3, 5
    codes = torch.randint(0, CODEBOOK, (2, h, w), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.decode(codes).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(decode_codes(params, config, jnp.asarray(codes.numpy().reshape(2, h * w)), (h, w)))
    assert got.shape == want.shape == (2, h * config.downsample, w * config.downsample, 3)
    assert got.dtype == np.float32 and np.abs(want).max() > 0.1
    err = np.abs(got - want).max()
    print(f"{names}: decode max |diff| {err:.2e} (|want| max {np.abs(want).max():.2f})")
    assert err <= 1e-4


def test_video_decode_and_two_heads_match_hf():
    model = hf_model(n_res=2, heads=2, seed=3)
    config = emu3_vq_config(model.config.to_dict())
    assert config.attn_heads == 2 and config.num_res_blocks == 2
    params = emu3_vq_params(state_dict(model), config)
    codes = torch.randint(0, CODEBOOK, (1, 2, 2, 3), generator=torch.Generator().manual_seed(2))  # t = 2
    with torch.no_grad():
        want = model.decode(codes).numpy().transpose(0, 1, 3, 4, 2)
    got = np.asarray(decode_video(params, config, jnp.asarray(codes.numpy())))
    assert got.shape == want.shape == (1, 8, 4, 6, 3)
    err = np.abs(got - want).max()
    print(f"video t=2, 2 heads: max |diff| {err:.2e}")
    assert err <= 1e-4


def test_converter_is_strict(model, config):
    sd = state_dict(model)
    assert any(k.endswith("num_batches_tracked") for k in sd) and any(k.startswith("encoder.") for k in sd)
    with pytest.raises(ValueError, match=r"unused keys.*decoder\.extra\.weight"):
        emu3_vq_params({**sd, "decoder.extra.weight": np.zeros(3, np.float32)}, config)
    for key, path in [("decoder.conv_out.bias", "params/decoder/conv_out/bias"),
                      ("decoder.time_res_stack.0.norm1.running_var", "batch_stats/decoder/time_res_stack_0/norm1/var")]:
        missing = dict(sd)
        del missing[key]
        with pytest.raises(ValueError, match=f"unfilled params.*{path}"):
            emu3_vq_params(missing, config)
    bad = {**sd, "decoder.conv_in.weight": np.zeros((64, 4, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"shape mismatch for decoder\.conv_in\.weight"):
        emu3_vq_params(bad, config)
    with pytest.raises(ValueError, match="shape mismatch|unused keys|unfilled"):  # wrong config
        emu3_vq_params(sd, Emu3VQConfig(codebook_size=CODEBOOK, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                                        attn_levels=(2,)))


def test_abstract_params_match_converted(model, config):
    params = emu3_vq_params(state_dict(model), config)
    shapes = lambda t: jax.tree_util.tree_map(lambda x: tuple(x.shape), t)
    assert shapes(params) == shapes(abstract_emu3_vq_params(config))
    assert hf_to_original_key("model.vqmodel.decoder.middle_block.attn_norm.conv_b.bias") == \
        "decoder.mid.attn_1.norm.conv_b.bias"

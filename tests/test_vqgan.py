"""Chameleon's VQGAN (taming-transformers architecture): Flax decode/encode vs the PyPI
``taming-transformers-rom1504`` Encoder/Decoder on tiny random weights, through the converter."""

import numpy as np
import pytest
import torch

from convert.vq import vq_params_from_state_dict
from sjd_jax.vq import VQConfig, decode_tokens, encode_images

# the README's test command installs it: pip install --no-deps taming-transformers-rom1504==0.0.6
import taming.modules.diffusionmodules.model as taming  # noqa: E402


def _taming_vqgan(attn_resolutions, seed=0):
    torch.manual_seed(seed)
    kw = dict(ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=attn_resolutions,
              dropout=0.0, in_channels=3, resolution=32, z_channels=32)
    enc = taming.Encoder(**kw, double_z=False).eval()
    dec = taming.Decoder(**kw).eval()
    quant_conv, post_quant_conv = torch.nn.Conv2d(32, 8, 1), torch.nn.Conv2d(8, 32, 1)
    codebook = torch.nn.Embedding(16, 8)
    with torch.no_grad():  # GroupNorm affine away from the identity init, so a mix-up would show
        for m in list(enc.modules()) + list(dec.modules()):
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    sd = {**{f"encoder.{k}": v for k, v in enc.state_dict().items()},
          **{f"decoder.{k}": v for k, v in dec.state_dict().items()},
          **{f"quant_conv.{k}": v for k, v in quant_conv.state_dict().items()},
          **{f"post_quant_conv.{k}": v for k, v in post_quant_conv.state_dict().items()},
          "quantize.embedding.weight": codebook.weight.detach().clone(),
          "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}  # in vqgan.ckpt; skipped
    return enc, dec, quant_conv, post_quant_conv, codebook, sd


@pytest.mark.parametrize("attn_resolutions,attn_levels", [([], ()), ([8], (2,))])
def test_decode_and_encode_match_taming(attn_resolutions, attn_levels):
    enc, dec, qc, pqc, codebook, sd = _taming_vqgan(attn_resolutions)
    config = VQConfig(codebook_size=16, codebook_embed_dim=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                      z_channels=32, codebook_l2_norm=False, attn_levels=attn_levels)
    params = vq_params_from_state_dict({k: v.detach().numpy() for k, v in sd.items()}, config, taming_names=True)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 16, (2, 8 * 8))
    with torch.no_grad():
        z = codebook(torch.from_numpy(idx)).reshape(2, 8, 8, 8).permute(0, 3, 1, 2)
        ref = dec(pqc(z)).permute(0, 2, 3, 1).numpy()
    out = np.asarray(decode_tokens(params, config, idx, (8, 8)))
    assert out.shape == ref.shape == (2, 32, 32, 3)
    err = np.abs(out - ref).max()
    assert err <= 1e-4, err
    # encode: nearest codebook entry (plain, no l2 norm) of the encoder's latents
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        h = qc(enc(torch.from_numpy(x).permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(2, 64, 8)
        want = torch.cdist(h, codebook.weight[None].expand(2, -1, -1)).argmin(-1).numpy()
    np.testing.assert_array_equal(np.asarray(encode_images(params, config, x)), want)


def test_taming_names_are_strict():
    *_, sd = _taming_vqgan([])
    config = VQConfig(codebook_size=16, codebook_embed_dim=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                      z_channels=32, codebook_l2_norm=False, attn_levels=())
    sd = {k: v.detach().numpy() for k, v in sd.items()}
    with pytest.raises(ValueError, match="unfilled params"):  # the config expects attention the file lacks
        vq_params_from_state_dict(sd, VQConfig(**{**config.__dict__, "attn_levels": (2,)}), taming_names=True)
    with pytest.raises(ValueError, match="unused keys"):
        vq_params_from_state_dict({**sd, "decoder.up.0.extra.weight": np.zeros(3)}, config, taming_names=True)
    with pytest.raises(ValueError, match="attn_levels"):
        VQConfig(ch_mult=(1, 2), attn_levels=(2,))

"""Chameleon's VQGAN (taming-transformers architecture): Flax decode/encode vs the PyPI
``taming-transformers-rom1504`` Encoder/Decoder on tiny random weights, through the converter."""

import numpy as np
import pytest
import torch

from sjd_jax.convert.vq import vq_params_from_state_dict
from fixtures_convert import taming_vqgan as _taming_vqgan  # needs taming-transformers-rom1504 (README)
from sjd_jax.core.vq import VQConfig, decode_tokens, encode_images


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

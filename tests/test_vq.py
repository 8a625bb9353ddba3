"""VQ-16-family tokenizer: parity with HF transformers' JanusVQVAE (the same architecture as
LlamaGen's VQ) after the documented key renames, plus converter coverage errors."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sjd_jax.convert.vq import janus_to_llamagen_key, vq_params_from_state_dict
from fixtures_convert import hf_vq_model as hf_model
from fixtures_convert import vq_state_dict as state_dict
from sjd_jax.core import vq as V

CASES = {  # (channel_multiplier, num_res_blocks, grid)
    "3-levels": ((1, 1, 2), 1, 4),
    "4-levels-2-res": ((1, 2, 2, 4), 2, 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_and_encode_match_hf_janus(case):
    mults, n_res, grid = CASES[case]
    model, config = hf_model(mults, n_res, grid=grid)
    params = vq_params_from_state_dict(state_dict(model), config, janus_names=True)
    idx = torch.randint(0, 64, (3, grid * grid), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.decode(idx).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(V.decode_tokens(params, config, jnp.asarray(idx.numpy()), (grid, grid)))
    assert got.shape == want.shape == (3, grid * config.downsample, grid * config.downsample, 3)
    assert np.abs(want).max() > 0.1
    err = np.abs(got - want).max()
    print(f"{case}: decode max |diff| {err:.2e}")
    assert err <= 1e-4

    size = grid * config.downsample
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        want_ids = model.encode(x).image_tokens.reshape(4, -1).numpy()
    got_ids = np.asarray(V.encode_images(params, config, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))))
    np.testing.assert_array_equal(got_ids, want_ids)


def test_llamagen_names_and_buffer_give_the_same_params():
    model, config = hf_model((1, 1, 2), 1)
    sd = state_dict(model)
    lg = {janus_to_llamagen_key(k): v for k, v in sd.items()}
    assert "decoder.conv_blocks.0.res.1.conv1.weight" in lg and "encoder.mid.1.q.weight" in lg
    lg["quantize.codebook_used"] = np.zeros(65536, np.float32)  # LlamaGen's buffer is dropped
    a = vq_params_from_state_dict(sd, config, janus_names=True)
    b = vq_params_from_state_dict(lg, config)
    flat = lambda t: {k: v for k, v in __import__("jax").tree_util.tree_flatten_with_path(t)[0]}
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])


def test_converter_errors():
    model, config = hf_model((1, 1, 2), 1)
    sd = state_dict(model)
    with pytest.raises(ValueError, match="unused keys.*extra.weight"):
        vq_params_from_state_dict({**sd, "extra.weight": np.zeros(3)}, config, janus_names=True)
    missing = dict(sd)
    del missing["decoder.conv_out.bias"]
    with pytest.raises(ValueError, match="unfilled params.*decoder/conv_out/bias"):
        vq_params_from_state_dict(missing, config, janus_names=True)
    bad = {**sd, "quant_conv.weight": np.zeros((8, 16, 1, 1), np.float32)}
    with pytest.raises(ValueError, match="shape mismatch for quant_conv.weight"):
        vq_params_from_state_dict(bad, config, janus_names=True)
    with pytest.raises(ValueError, match="unused keys"):  # wrong family: LlamaGen names expected
        vq_params_from_state_dict(sd, config)


def test_to_uint8_and_presets():
    np.testing.assert_array_equal(V.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])), [0, 0, 128, 255, 255])
    assert V.VQConfig.preset("VQ-16").downsample == 16 and V.VQConfig.preset("VQ-8").downsample == 8
    with pytest.raises(ValueError, match="unknown VQ preset"):
        V.VQConfig.preset("VQ-4")

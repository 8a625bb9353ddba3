"""Emu3's LLM: raw logits vs HF ``Emu3ForConditionalGeneration`` (text model + lm_head) on a tiny
random config, from HF v5 names, the original BAAI names and the legacy hub names."""

import numpy as np
import pytest
import torch
from transformers import Emu3Config, Emu3ForConditionalGeneration

import sjd_jax as S
from convert.cli import to_numpy
from convert.emu3 import emu3_config, emu3_name, emu3_params

N_TEXT, N_VIS = 32, 64
VQ = dict(codebook_size=N_VIS, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
          num_res_blocks=1, attn_resolutions=[1], temporal_downsample_factor=4, hidden_size=64, num_attention_heads=1)


def _hf_model(seed=0):
    vocab = {f"t{i}": i for i in range(N_TEXT)}
    vocab.update({f"<|visual token{i:06d}|>": N_TEXT + i for i in range(N_VIS)})
    text = dict(vocab_size=N_TEXT + N_VIS, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(Emu3Config(text_config=text, vq_config=VQ, vocabulary_map=vocab)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    return model


def _raw_logits(model, ids):
    with torch.no_grad():
        return model.lm_head(model.model.text_model(torch.from_numpy(ids)).last_hidden_state).numpy()


ORIGINAL = {"hf": lambda k: k,  # HF v5
            "original": lambda k: k.replace("model.text_model.", "model.").replace("model.vqmodel.", "vqmodel."),
            "legacy-hub": lambda k: ("text_model.lm_head." + k[len("lm_head."):] if k.startswith("lm_head.")
                                     else k.replace("model.text_model.", "text_model.")
                                     .replace("model.vqmodel.", "vqmodel."))}


@pytest.mark.parametrize("names", sorted(ORIGINAL))
def test_logits_match_hf_emu3(names):
    model = _hf_model()
    C, grid = 6, (3, 4)  # rows of 3 codes + a row-end column
    rng = np.random.default_rng(0)
    prompt = np.concatenate([np.full((2, 1), 1), rng.integers(3, N_TEXT, (2, C - 1))], 1)
    image = rng.integers(N_TEXT, N_TEXT + N_VIS, (2, 12))
    ref = _raw_logits(model, np.concatenate([prompt, image], 1))[:, C - 1:C - 1 + 12]
    config = emu3_config(model.config.to_dict(), grid, C)
    assert (config.kv_heads, config.rope_theta, config.qk_norm, config.rope_interleaved) == (2, 1e6, False, False)
    sd = {ORIGINAL[names](k): v for k, v in model.state_dict().items()}
    params = emu3_params(sd, config, to_numpy)
    out = np.asarray(S.teacher_forced_logits(params, config, S.Prompt(prompt, np.ones(prompt.shape, bool)), image))
    err = np.abs(out - ref).max()
    print(f"emu3 logits ({names} names): max |diff| {err:.2e}")
    assert err <= 1e-4, err


def test_names_and_errors():
    assert emu3_name("model.text_model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.up_proj.weight"
    assert emu3_name("text_model.lm_head.weight") == "lm_head.weight"
    assert emu3_name("model.vqmodel.decoder.conv_in.weight") is None and emu3_name("vqmodel.quantize.x") is None
    model = _hf_model()
    cfg = model.config.to_dict()
    config = emu3_config(cfg, (2, 3), 4)
    sd = dict(model.state_dict())
    with pytest.raises(ValueError, match="unused keys"):
        emu3_params({**sd, "model.text_model.layers.0.extra.weight": torch.zeros(2)}, config, to_numpy)
    with pytest.raises(ValueError, match="both map to"):
        emu3_params({**sd, "model.layers.0.mlp.up_proj.weight": torch.zeros(2)}, config, to_numpy)
    with pytest.raises(ValueError, match="unfilled"):
        emu3_params({k: v for k, v in sd.items() if k != "lm_head.weight"}, config, to_numpy)
    with pytest.raises(ValueError, match="tied"):
        emu3_config({**cfg["text_config"], "tie_word_embeddings": True}, (2, 3), 4)
    with pytest.raises(ValueError, match="rope scaling"):
        emu3_config({**cfg["text_config"], "rope_parameters": {"rope_type": "linear", "factor": 2.0}}, (2, 3), 4)

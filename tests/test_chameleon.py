"""Chameleon-family LLM (Lumina-mGPT / Anole): raw logits vs HF ``ChameleonModel`` + ``lm_head``."""

import jax
import numpy as np
import pytest
import torch
from transformers import ChameleonConfig, ChameleonForConditionalGeneration

import sjd_jax as S
from sjd_jax.convert.chameleon import chameleon_config, chameleon_params
from sjd_jax.convert.cli import to_numpy

N_TEXT, N_IMG = 16, 32


def _hf_model(kv_heads=2, seed=0, **config):
    vocab = {f"t{i}": i for i in range(N_TEXT)}
    vocab["<image>"] = 3
    for c in range(N_IMG):  # Chameleon's image-token names: IMGIMG + code digits as letters + Z
        vocab["IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(c)) + "Z"] = N_TEXT + c
    cfg = ChameleonConfig(vocab_size=N_TEXT + N_IMG, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                          vocabulary_map=vocab,
                          vq_config=dict(embed_dim=8, num_embeddings=N_IMG, latent_channels=32, base_channels=32,
                                         channel_multiplier=[1, 2], num_res_blocks=1, resolution=32), **config)
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-trivial q/k-norm affine (the default init is ones/zeros)
        for layer in model.model.layers:
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                norm.weight.normal_(1.0, 0.3)
                norm.bias.normal_(0.0, 0.3)
    return model


def _raw_logits(model, ids):
    with torch.no_grad():
        return model.lm_head(model.model(torch.from_numpy(ids)).last_hidden_state).numpy()


def _case(model, C: int):
    """A prompt [2, C] (BOS first), 6 image tokens [2, 6] and HF's logits for those image tokens."""
    rng = np.random.default_rng(0)
    prompt = np.concatenate([np.full((2, 1), 1), rng.integers(4, N_TEXT, (2, C - 1))], 1)
    image = rng.integers(N_TEXT, N_TEXT + N_IMG, (2, 6))
    return prompt, image, _raw_logits(model, np.concatenate([prompt, image], 1))[:, C - 1:C - 1 + 6]


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_logits_match_hf_chameleon(kv_heads):
    model = _hf_model(kv_heads)
    C, grid = 5, (2, 3)
    prompt, image, ref = _case(model, C)
    config = chameleon_config(model.config.to_dict(), grid, C)
    sd = {k: v for k, v in model.state_dict().items()}
    params = chameleon_params(sd, config, to_numpy)
    out = np.asarray(S.teacher_forced_logits(params, config, S.Prompt(prompt, np.ones(prompt.shape, bool)), image))
    err = np.abs(out - ref).max()
    assert err <= 1e-4, err


def test_qk_norm_eps_is_chameleons_not_rms_norm_eps():
    """HF's ChameleonLayerNorm (q/k norm) always uses eps 1e-5, whatever ``rms_norm_eps`` says: with
    rms_norm_eps 1e-6 and small q/k activations (where eps matters) the logits match HF, and the
    config's RMSNorm eps on the q/k norms (the old behaviour) would not."""
    model = _hf_model(2, rms_norm_eps=1e-6)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(0.1)
            layer.self_attn.k_proj.weight.mul_(0.1)
    C, grid = 5, (2, 3)
    prompt, image, ref = _case(model, C)
    config = chameleon_config(model.config.to_dict(), grid, C)
    assert (config.norm_eps, config.qk_norm_eps) == (1e-6, 1e-5)
    params = chameleon_params(dict(model.state_dict()), config, to_numpy)
    cond = S.Prompt(prompt, np.ones(prompt.shape, bool))
    err = np.abs(np.asarray(S.teacher_forced_logits(params, config, cond, image)) - ref).max()
    old = np.abs(np.asarray(S.teacher_forced_logits(params, config.replace(qk_norm_eps=1e-6), cond, image)) - ref).max()
    print(f"rms_norm_eps 1e-6: max |logit diff| {old:.2e} with the q/k norms at 1e-6 -> {err:.2e} at 1e-5")
    assert err <= 1e-4 and old > 1e-3, (err, old)


def test_lumina_model_parallel_qk_norm_shapes_expand():
    """Lumina's fork stores q/k-norm as [model_parallel_size, head_dim]; with mp = 1 and identical
    rows in HF's [heads, head_dim] the logits must agree."""
    model = _hf_model(4, seed=1)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                norm.weight.copy_(norm.weight[:1].expand_as(norm.weight))
                norm.bias.copy_(norm.bias[:1].expand_as(norm.bias))
    sd = {k: (v[:1] if "_norm." in k and "self_attn" in k else v) for k, v in model.state_dict().items()}
    assert sd["model.layers.0.self_attn.q_norm.weight"].shape == (1, 16)
    config = chameleon_config(model.config.to_dict(), (2, 2), 3)
    params = chameleon_params(sd, config, to_numpy)
    ids = np.array([[1, 5, 6, N_TEXT + 3, N_TEXT + 4, N_TEXT + 9, N_TEXT]])
    ref = _raw_logits(model, ids)[:, 2:6]
    out = np.asarray(S.teacher_forced_logits(params, config, S.Prompt(ids[:, :3], np.ones((1, 3), bool)), ids[:, 3:]))
    assert np.abs(out - ref).max() <= 1e-4


def test_converter_errors():
    model = _hf_model(2)
    cfg = model.config.to_dict()
    config = chameleon_config(cfg, (2, 2), 3)
    sd = dict(model.state_dict())
    with pytest.raises(ValueError, match="missing some of q_proj"):
        chameleon_params({k: v for k, v in sd.items() if k != "model.layers.1.self_attn.k_proj.weight"}, config,
                         to_numpy)
    with pytest.raises(ValueError, match="unused keys"):
        chameleon_params({**sd, "model.layers.0.self_attn.extra.weight": torch.zeros(2)}, config, to_numpy)
    nan_q = sd["model.layers.0.self_attn.q_proj.weight"].clone()
    nan_q[5, 7] = float("nan")  # fused into wqkv: named by its group
    with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.self_attn\.\{q,k,v\}_proj\.weight holds 1 "
                                         r"non-finite value\(s\) \(NaN/inf\) of 8192, the first at index \(7, 5\)"):
        chameleon_params({**sd, "model.layers.0.self_attn.q_proj.weight": nan_q}, config, to_numpy)
    cplx = sd["model.layers.1.self_attn.k_norm.weight"].to(torch.complex64)
    with pytest.raises(ValueError, match=r"tensor model\.layers\.1\.self_attn\.k_norm\.weight is complex"):
        chameleon_params({**sd, "model.layers.1.self_attn.k_norm.weight": cplx}, config, to_numpy)
    bad = {**sd, "model.layers.0.self_attn.k_norm.weight": torch.zeros(3, 16)}
    with pytest.raises(ValueError, match="does not expand to 2 heads"):
        chameleon_params(bad, config, to_numpy)
    with pytest.raises(ValueError, match="swin_norm"):
        chameleon_config({**cfg, "swin_norm": True}, (2, 2), 3)
    with pytest.raises(ValueError, match=r"Chameleon config.json has field\(s\) this converter does not understand: "
                                         r"\['head_dim', 'qk_layernorm'\]"):
        chameleon_config({**cfg, "qk_layernorm": False, "head_dim": 16}, (2, 2), 3)
    lumina_fork = {**cfg, "z_loss_weight": 1e-5, "dropout": 0.05, "mask_image_logits": False}  # Lumina-mGPT's
    assert chameleon_config(lumina_fork, (2, 2), 3) == config
    with pytest.raises(ValueError, match="num_attention_heads 0 is not a positive integer"):
        chameleon_config({**cfg, "num_attention_heads": 0}, (2, 2), 3)
    with pytest.raises(ValueError, match="lacks hidden_size"):
        chameleon_config({k: v for k, v in cfg.items() if k != "hidden_size"}, (2, 2), 3)
    with pytest.raises(ValueError, match="shared_embeddings needs"):
        S.GPTConfig(vocab_size=8, text_vocab_size=4, shared_embeddings=True, cls_token_num=2)
    assert "text_embeddings" not in jax.tree_util.keystr(list(S.abstract_params(config)["params"]))

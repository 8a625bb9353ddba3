"""sjd-jax GPT vs HF transformers' LlamaForCausalLM fed the same (LlamaGen-format) weights after
the documented re-layout: split wqkv, permute q/k rows from interleaved-pair to rotate-half RoPE,
and LlamaGen's 2D RoPE cos/sin injected (zero at condition positions)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import sjd_jax as S
from sjd_jax.convert.llamagen import gpt_params_from_state_dict
from fixtures_convert import LLAMAGEN_CASES as CASES
from fixtures_convert import llamagen_state_dict


def permute_rows(w, n_heads):  # interleaved pairs -> rotate-half layout
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


class FixedRope(torch.nn.Module):
    def __init__(self, cos, sin):
        super().__init__()
        self.cos, self.sin = cos, sin

    def forward(self, x, position_ids):
        return self.cos[position_ids].to(x.dtype), self.sin[position_ids].to(x.dtype)


def hf_llama(c: S.GPTConfig, sd):
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_hidden,
        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads,
        rms_norm_eps=c.norm_eps, max_position_embeddings=c.seq_len + 1, tie_word_embeddings=False,
        attn_implementation="eager")).eval()
    hd, kv = c.head_dim, c.kv_heads
    new = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["output.weight"]}
    for i in range(c.n_layer):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        wq, wk, wv = sd[p + "attention.wqkv.weight"].split([c.n_head * hd, kv * hd, kv * hd], 0)
        new.update({q + "self_attn.q_proj.weight": permute_rows(wq, c.n_head),
                    q + "self_attn.k_proj.weight": permute_rows(wk, kv),
                    q + "self_attn.v_proj.weight": wv, q + "self_attn.o_proj.weight": sd[p + "attention.wo.weight"],
                    q + "mlp.gate_proj.weight": sd[p + "feed_forward.w1.weight"],
                    q + "mlp.up_proj.weight": sd[p + "feed_forward.w3.weight"],
                    q + "mlp.down_proj.weight": sd[p + "feed_forward.w2.weight"],
                    q + "input_layernorm.weight": sd[p + "attention_norm.weight"],
                    q + "post_attention_layernorm.weight": sd[p + "ffn_norm.weight"]})
    missing, unexpected = hf.load_state_dict(new, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    cos, sin = (torch.from_numpy(t) for t in S.rope.rope_table(c))  # [S, hd/2] per pair
    hf.model.rotary_emb = FixedRope(torch.cat([cos, cos], -1), torch.cat([sin, sin], -1))
    return hf


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hf_llama(case):
    c = S.GPTConfig(**CASES[case])
    sd = llamagen_state_dict(c)
    params = gpt_params_from_state_dict({k: v.numpy() for k, v in sd.items()}, c)
    hf = hf_llama(c, sd)
    B, N, C = 3, c.num_image_tokens, c.cls_token_num
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, c.vocab_size, (B, N))
    if c.text_conditional:  # left-padded captions, features zeroed at padding (LlamaGen layout)
        valid = np.arange(C)[None] >= np.array([0, 2, 4])[:, None]
        feats = rng.normal(size=(B, C, c.caption_dim)).astype(np.float32) * valid[..., None]
        cond = S.Caption(jnp.asarray(feats), jnp.asarray(valid))
        fc1, fc2 = sd["cls_embedding.cap_proj.fc1.weight"], sd["cls_embedding.cap_proj.fc2.weight"]
        cond_emb = torch.nn.functional.gelu(torch.from_numpy(feats) @ fc1.T, approximate="tanh") @ fc2.T
    else:
        valid = np.ones((B, 1), bool)
        cond = jnp.asarray(rng.integers(0, c.num_classes + 1, B), jnp.int32)
        cond_emb = sd["cls_embedding.embedding_table.weight"][torch.from_numpy(np.asarray(cond))][:, None]
    x = torch.cat([cond_emb, hf.model.embed_tokens(torch.from_numpy(tokens[:, : N - 1]))], 1)
    T = x.shape[1]
    allowed = np.tril(np.ones((T, T), bool))[None] & (
        np.concatenate([valid, np.ones((B, T - C), bool)], 1)[:, None, :] | np.eye(T, dtype=bool)[None])
    mask = torch.from_numpy(np.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None].astype(np.float32))
    with torch.no_grad():
        want = hf(inputs_embeds=x, attention_mask=mask, position_ids=torch.arange(T)[None].repeat(B, 1)).logits
    want = want[:, C - 1:].numpy()
    got = np.asarray(S.teacher_forced_logits(params, c, cond, jnp.asarray(tokens)))
    err = np.abs(got - want).max()
    print(f"{case}: max |logit diff| {err:.2e} (logit scale {np.abs(want).max():.1f})")
    assert np.abs(want).max() > 1.0 and err <= 1e-4


def test_gpt_converter_errors():
    c = S.GPTConfig(**CASES["c2i"])
    sd = {k: v.numpy() for k, v in llamagen_state_dict(c).items()}
    with pytest.raises(ValueError, match="unused keys.*layers.9.extra"):
        gpt_params_from_state_dict({**sd, "layers.9.extra": np.zeros(2)}, c)
    with pytest.raises(ValueError, match="unfilled params.*layers_1/ffn_norm/weight"):
        gpt_params_from_state_dict({k: v for k, v in sd.items() if k != "layers.1.ffn_norm.weight"}, c)
    with pytest.raises(ValueError, match="shape mismatch for output.weight"):
        gpt_params_from_state_dict({**sd, "output.weight": np.zeros((63, 64), np.float32)}, c)
    prefixed = gpt_params_from_state_dict({"module." + k: v for k, v in sd.items()}, c)
    assert prefixed["params"]["output"]["kernel"].shape == (64, 64)

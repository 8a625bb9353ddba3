"""Model architecture and KV-cache tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sjd_jax as S
from tiny import scaled_params, tiny_config

CONFIGS = {
    "c2i": tiny_config(),
    "c2i-gqa": tiny_config(n_head=4, n_kv_head=2),
    "t2i": tiny_config(num_classes=None, caption_dim=24, cls_token_num=5, grid_size=(3, 4)),
    "1d-rope-qknorm": tiny_config(rope_type="1d", rope_interleaved=False, qk_norm=True, n_kv_head=1,
                                  rope_theta=1e6),
}


def make_inputs(config, batch, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (batch, config.num_image_tokens)), jnp.int32)
    if config.text_conditional:
        C = config.cls_token_num
        feats = rng.normal(size=(batch, C, config.caption_dim)).astype(np.float32)
        # left-padded captions of different lengths (LlamaGen layout); row 0 unpadded
        valid = np.arange(C)[None, :] >= np.array([0, 2, 4, 1, 3][:batch])[:, None]
        cond = S.Caption(jnp.asarray(feats * valid[..., None]), jnp.asarray(valid))
    else:
        cond = jnp.asarray(rng.integers(0, config.num_classes + 1, batch), jnp.int32)
    return cond, tokens


# ---- independent numpy reference of the LlamaGen forward (no cache) ---------------------------

def _np_rope(x, pos, config):
    """x: [T, H, hd] rotated at absolute positions pos: [T] (LlamaGen 2D interleaved / 1D half)."""
    hd, C = config.head_dim, config.cls_token_num
    if config.rope_type == "2d":
        f = config.rope_theta ** (-np.arange(0, hd // 2, 2)[: hd // 4] / (hd // 2))
        r, c = np.divmod(np.maximum(pos - C, 0), config.grid_size[1])
        ang = np.concatenate([r[:, None] * f, c[:, None] * f], -1)
        cos, sin = np.cos(ang), np.sin(ang)
        cos[pos < C], sin[pos < C] = 0.0, 0.0
    else:
        ang = pos[:, None] * config.rope_theta ** (-np.arange(0, hd, 2) / hd)
        cos, sin = np.cos(ang), np.sin(ang)
    cos, sin = cos[:, None], sin[:, None]
    if config.rope_interleaved:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return out
    x0, x1 = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1)


def _np_forward(params, config, cond, tokens):
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), params)["params"]
    c, C, N = config, config.cls_token_num, config.num_image_tokens
    H, Hkv, hd = c.n_head, c.kv_heads, c.head_dim
    rms = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + c.norm_eps) * w
    out = []
    for b in range(tokens.shape[0]):
        if c.text_conditional:
            f = np.asarray(cond.features[b], np.float64)
            h1 = f @ P["cap_fc1"]["kernel"]
            gelu = 0.5 * h1 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h1 + 0.044715 * h1 ** 3)))
            emb_c = gelu @ P["cap_fc2"]["kernel"]
            key_ok = np.asarray(cond.mask[b])
        else:
            emb_c = P["cls_embedding"]["embedding"][int(cond[b])][None]
            key_ok = np.ones(1, bool)
        x = np.concatenate([emb_c, P["tok_embeddings"]["embedding"][np.asarray(tokens[b, : N - 1])]])
        T = x.shape[0]
        pos = np.arange(T)
        mask = pos[None, :] <= pos[:, None]
        mask &= np.concatenate([key_ok, np.ones(T - C, bool)])[None, :] | np.eye(T, dtype=bool)
        for i in range(c.n_layer):
            L = P[f"layers_{i}"]
            a = rms(x, L["attention_norm"]["weight"]) @ L["attention"]["wqkv"]["kernel"]
            q = a[:, : H * hd].reshape(T, H, hd)
            k = a[:, H * hd:(H + Hkv) * hd].reshape(T, Hkv, hd)
            v = a[:, (H + Hkv) * hd:].reshape(T, Hkv, hd)
            if c.qk_norm:
                def ln(z, p):
                    mu = z.mean(-1, keepdims=True)
                    return (z - mu) / np.sqrt(((z - mu) ** 2).mean(-1, keepdims=True) + c.norm_eps) \
                        * p["scale"] + p["bias"]
                q, k = ln(q, L["attention"]["q_norm"]), ln(k, L["attention"]["k_norm"])
            q, k = _np_rope(q, pos, c), _np_rope(k, pos, c)
            k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)  # repeat_interleave
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
            s = np.where(mask[None], s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", w, v).reshape(T, H * hd) @ L["attention"]["wo"]["kernel"]
            x = x + o
            hN = rms(x, L["ffn_norm"]["weight"])
            g = hN @ L["feed_forward"]["w1"]["kernel"]
            x = x + ((g / (1 + np.exp(-g))) * (hN @ L["feed_forward"]["w3"]["kernel"])) \
                @ L["feed_forward"]["w2"]["kernel"]
        out.append(rms(x, P["norm"]["weight"]) @ P["output"]["kernel"])
    return np.stack(out)[:, C - 1:]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_teacher_forced_matches_numpy_reference(name):
    config = CONFIGS[name]
    params = scaled_params(config, seed=1, scale=5.0)
    cond, tokens = make_inputs(config, 3)
    got = np.asarray(S.teacher_forced_logits(params, config, cond, tokens))
    want = _np_forward(params, config, cond, tokens)
    assert got.shape == (3, config.num_image_tokens, config.vocab_size)
    assert np.abs(want).max() > 1.0  # a meaningful scale for the tolerance below
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cache_windows_match_teacher_forced(name):
    """Prefill + windows of several sizes with ragged per-row lengths and rolled-back garbage
    drafts give the teacher-forced logits (float32, 1e-5)."""
    config = CONFIGS[name]
    params = scaled_params(config, seed=2, scale=3.0)
    B, N, C = 4, config.num_image_tokens, config.cls_token_num
    cond, tokens = make_inputs(config, B, seed=3)
    want = np.asarray(S.teacher_forced_logits(params, config, cond, tokens))
    cond_arr, prefix_mask = S.model.split_cond(config, cond)

    fwd = jax.jit(S.forward, static_argnums=1)
    cache = S.init_cache(config, B, prefix_mask)
    x = S.embed_cond(params, config, cond_arr, jnp.zeros((B,), bool))
    logits, cache = fwd(params, config, x, cache)
    np.testing.assert_array_equal(np.asarray(cache.length), C)
    np.testing.assert_allclose(np.asarray(logits[:, -1]), want[:, 0], atol=1e-5)

    rng = np.random.default_rng(0)
    n = np.ones(B, int)  # committed tokens per row; the cache holds tokens < n - 1
    checked = 0
    for T in [3, 1, 5, 2, 4, 7, 6, 3, 2, 8, 5, 4, 3, 2, 1] * 4:
        if (n >= N).all():
            break
        good = rng.integers(0, T, B)  # drafts correct in slots 1..good, garbage after
        win = np.zeros((B, T), int)
        for b in range(B):
            for j in range(T):
                t = n[b] - 1 + j
                win[b, j] = tokens[b, min(t, N - 1)] if j <= good[b] else rng.integers(config.vocab_size)
        cache = cache.with_length(jnp.asarray(C + n - 1))
        logits, cache = fwd(params, config, S.embed_tokens(params, config, jnp.asarray(win)), cache)
        logits = np.asarray(logits)
        for b in range(B):
            if n[b] >= N:
                continue
            upto = min(good[b], N - 1 - n[b])  # slots whose whole input prefix is correct
            np.testing.assert_allclose(logits[b, : upto + 1], want[b, n[b]: n[b] + upto + 1], atol=1e-5)
            checked += upto + 1
            n[b] += upto + 1
    assert (n >= N).all() and checked == B * (N - 1)


@pytest.mark.parametrize("name,c2i,t2i", [
    ("B", 110.9, None), ("L", 342.9, None), ("XL", 774.7, 777.7), ("XXL", 1411.0, None), ("3B", 3096.7, None)])
def test_llamagen_preset_param_counts(name, c2i, t2i):
    """Parameter counts of the LlamaGen presets equal the released models' (abstract, no memory)."""
    count = S.param_count(S.abstract_params(S.GPTConfig.llamagen(name)))
    assert round(count / 1e6, 1) == c2i
    if t2i is not None:
        cfg = S.GPTConfig.llamagen(name, caption_dim=2048, grid_size=32)
        assert cfg.cls_token_num == 120 and cfg.num_image_tokens == 1024
        shapes = S.abstract_params(cfg)
        # LlamaGen counts nn.Parameters; its uncond_embedding (120 x 2048) is a buffer
        buffer = S.param_count(shapes["params"]["uncond_embedding"])
        assert buffer == 120 * 2048
        assert round((S.param_count(shapes) - buffer) / 1e6, 1) == t2i


def test_llamagen_preset_shapes():
    assert [S.GPTConfig.llamagen(n).ffn_hidden for n in ["B", "L", "XL", "XXL", "3B"]] == \
        [2048, 2816, 3584, 4096, 8704]
    assert S.GPTConfig.llamagen("GPT-3B").head_dim == 100
    with pytest.raises(ValueError, match="unknown LlamaGen preset"):
        S.GPTConfig.llamagen("GPT-Z")
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        S.GPTConfig.llamagen("B", windw=3)


def test_condition_positions_have_zero_rotation():
    """LlamaGen quirk: q/k at condition positions are multiplied by cos = sin = 0."""
    config = CONFIGS["t2i"]
    cos, sin = S.rope.rope_table(config)
    C = config.cls_token_num
    assert cos.shape == (config.seq_len, config.head_dim // 2)
    assert not cos[:C].any() and not sin[:C].any()
    # image token (r, c) = (1, 2): first half of pairs rotates by the row, second by the column
    f = 10000.0 ** (-np.arange(0, config.head_dim // 2, 2)[: config.head_dim // 4] / (config.head_dim // 2))
    pos = C + 1 * config.grid_size[1] + 2
    np.testing.assert_allclose(cos[pos], np.cos(np.concatenate([1 * f, 2 * f])), rtol=1e-6)


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="not divisible"):
        tiny_config(dim=30)
    with pytest.raises(ValueError, match="exactly one condition token"):
        tiny_config(cls_token_num=2)
    config = tiny_config()
    params = S.init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="tokens must have shape"):
        S.teacher_forced_logits(params, config, jnp.array([0]), jnp.zeros((1, 3), jnp.int32))
    with pytest.raises(ValueError, match="out of range"):
        S.teacher_forced_logits(params, config, jnp.array([4]), jnp.zeros((1, 16), jnp.int32))
    with pytest.raises(ValueError, match="batch size"):
        S.teacher_forced_logits(params, config, jnp.array([0, 1]), jnp.zeros((1, 16), jnp.int32))

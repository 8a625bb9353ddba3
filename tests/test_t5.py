"""Flax T5 encoder vs HF ``T5EncoderModel`` (tiny random configs), the converter and its errors."""

import json

import jax
import numpy as np
import pytest
import torch
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel, T5ForConditionalGeneration

from sjd_jax.convert.cli import main as convert_main
from sjd_jax.convert.cli import to_numpy
from sjd_jax.convert.t5 import t5_config, t5_params
from sjd_jax.io import checkpoint
from sjd_jax.core.text import encode

TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _inputs(L=24, B=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, TINY["vocab_size"], (B, L))
    mask = np.ones((B, L), bool)
    mask[1, L * 5 // 8:] = False  # right-padded as HF tokenizers pad T5 captions
    mask[-1, 3:] = False
    ids[~mask] = 0
    return ids, mask


@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_encoder_matches_hf(ff):
    torch.manual_seed(0)
    hf_cfg = HFT5Config(**TINY, feed_forward_proj=ff)
    model = T5EncoderModel(hf_cfg).eval()
    with torch.no_grad():  # a larger bias table, so that a wrong bucket would show
        model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.mul_(8.0)
    ids, mask = _inputs()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)))
    ref = ref.last_hidden_state.numpy()
    config = t5_config(hf_cfg.to_dict())
    params = t5_params(model.state_dict(), config, to_numpy)
    out = np.asarray(encode(params, config, ids, mask))
    err = np.abs(out - ref).max()
    assert err <= 1e-4, err  # measured ~2e-6
    # distances up to 23 with 8 buckets / max distance 12 exercise the exact, log and clipped buckets;
    # the bias must matter: zeroing it moves the output far more than the tolerance
    params0 = jax.tree.map(lambda x: x, params)
    params0["params"]["relative_attention_bias"] = params["params"]["relative_attention_bias"] * 0
    assert np.abs(np.asarray(encode(params0, config, ids, mask)) - ref).max() > 100 * 1e-4


def test_convert_cli_from_seq2seq_safetensors(tmp_path):
    torch.manual_seed(1)
    model = T5ForConditionalGeneration(HFT5Config(**TINY, feed_forward_proj="gated-gelu")).eval()
    snap = tmp_path / "flan-tiny"
    model.save_pretrained(snap)  # config.json + model.safetensors (encoder + decoder + tied embeddings)
    (snap / "tokenizer.json").write_text("{}")
    out = tmp_path / "t5ck"
    assert convert_main(["--family", "t5-encoder", str(snap), "--out", str(out), "--quiet"]) == 0
    config, params = checkpoint.load(out)
    assert (out / "tokenizer.json").is_file() and config.feed_forward_proj == "gated-gelu"
    ids, mask = _inputs(L=10, B=2, seed=3)
    with torch.no_grad():
        ref = model.encoder(input_ids=torch.from_numpy(ids),
                            attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(encode(params, config, ids, mask)), ref, atol=1e-5, rtol=1e-5)


def test_config_and_checkpoint_errors(tmp_path, capsys):
    base = HFT5Config(**TINY, feed_forward_proj="gated-gelu").to_dict()
    with pytest.raises(ValueError, match="unsupported T5 feed_forward_proj"):
        t5_config({**base, "feed_forward_proj": "gated-silu"})
    with pytest.raises(ValueError, match="dense_act_fn"):
        t5_config({**base, "dense_act_fn": "gelu"})
    with pytest.raises(ValueError, match="lacks"):
        t5_config({k: v for k, v in base.items() if k != "d_kv"})
    config = t5_config(base)
    model = T5EncoderModel(HFT5Config(**TINY, feed_forward_proj="gated-gelu"))
    sd = dict(model.state_dict())
    with pytest.raises(ValueError, match="unfilled params"):
        t5_params({k: v for k, v in sd.items() if "block.2." not in k}, config, to_numpy)
    with pytest.raises(ValueError, match="unused keys"):
        t5_params({**sd, "encoder.block.0.layer.0.SelfAttention.extra.weight": torch.zeros(2)}, config, to_numpy)
    with pytest.raises(ValueError, match="shape mismatch"):
        t5_params({**sd, "encoder.final_layer_norm.weight": torch.zeros(5)}, config, to_numpy)
    snap = tmp_path / "nocfg"
    snap.mkdir()
    (snap / "model.safetensors").write_bytes(b"")
    assert convert_main(["--family", "t5-encoder", str(snap), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "need their config.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must both be"):
        encode(jax.tree.map(lambda x: x, t5_params(sd, config, to_numpy)), config, np.zeros((2, 3)), np.ones((2, 4)))
    json.dumps(config.__dict__)  # the checkpoint config is plain JSON


def _word_tokenizer(tmp_path):
    """A tiny T5-style tokenizer.json: words, ``</s>`` appended by the post-processor, ``<pad>`` = 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "a red fox in the snow blue cat on mat big small".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_tokenize_matches_hf_max_length_padding_and_truncation(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from sjd_jax.core.text import T5Config, load_tokenizer, tokenize

    path = _word_tokenizer(tmp_path)
    texts = ["a red fox in the snow", "cat", "big small " * 10 + "zebra", ""]
    config = T5Config(**{k: v for k, v in TINY.items() if k in ("vocab_size", "d_model", "d_kv", "d_ff",
                                                                 "num_layers", "num_heads")}, max_length=12)
    ids, mask = tokenize(load_tokenizer(path), texts, config)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    ref = hf(texts, padding="max_length", truncation=True, max_length=12)
    np.testing.assert_array_equal(ids, np.asarray(ref["input_ids"]))
    np.testing.assert_array_equal(mask, np.asarray(ref["attention_mask"], bool))
    assert ids[0, 6] == 1 and mask[0, :7].all() and not mask[0, 7:].any()  # 6 words + </s>, right-padded
    assert mask[2].all() and ids[2, -1] == 1  # truncated, still ends with </s>
    tok = load_tokenizer(path)
    tokenize(tok, ["cat"], config)
    assert len(tok.encode("a red fox").ids) == 4  # the call left no padding/truncation behind
    tok.enable_truncation(3)  # ... and a tokenizer's own settings survive the call
    tokenize(tok, ["cat"], config)
    assert tok.truncation["max_length"] == 3 and tok.padding is None
    with pytest.raises(ValueError, match="non-empty list"):
        tokenize(tok, "a red fox", config)
    with pytest.raises(ValueError, match="not a readable tokenizer.json"):
        load_tokenizer(tmp_path / "missing.json")


def test_left_pad_captions_is_llamagens_layout():
    from sjd_jax.core.text import left_pad_captions

    rng = np.random.default_rng(0)
    L, D = 6, 3
    feats = rng.normal(size=(3, L, D)).astype(np.float32)
    mask = np.zeros((3, L), bool)
    for b, n in enumerate([6, 2, 0]):
        mask[b, :n] = True
    out, out_mask = map(np.asarray, left_pad_captions(feats, mask))
    for b, n in enumerate([6, 2, 0]):
        np.testing.assert_array_equal(out_mask[b], np.r_[np.zeros(L - n, bool), np.ones(n, bool)])
        np.testing.assert_array_equal(out[b, L - n:], feats[b, :n])  # valid tokens at the end, in order
        assert not out[b, :L - n].any()  # padded features zeroed


def test_caption_features_drive_a_text_conditional_gpt(tmp_path):
    """Prompt -> T5 tokens -> features -> left-padded Caption -> SJD tokens (tiny random models)."""
    import jax.numpy as jnp

    import sjd_jax as S
    from sjd_jax.core.text import T5Config, caption_features, init_t5_params, load_tokenizer

    tconf = T5Config(vocab_size=16, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, max_length=8)
    tparams = init_t5_params(tconf, jax.random.key(0))
    feats, mask = caption_features(tparams, tconf, load_tokenizer(_word_tokenizer(tmp_path)), ["a red fox", "cat"])
    assert feats.shape == (2, 8, 16) and np.asarray(mask).sum(1).tolist() == [4, 2]
    gconf = S.GPTConfig(vocab_size=32, grid_size=(3, 3), dim=32, n_layer=2, n_head=4, caption_dim=16,
                        cls_token_num=8)
    gparams = S.init_params(gconf, jax.random.key(1))
    cap = S.Caption(feats, mask)
    ar = S.generate(gparams, gconf, cap, 0, method="ar", window=1, temperature=0.0, cfg_scale=3.0)
    sjd = S.generate(gparams, gconf, cap, 0, method="sjd", window=4, temperature=0.0, cfg_scale=3.0)
    np.testing.assert_array_equal(np.asarray(ar.tokens), np.asarray(sjd.tokens))
    # only the valid caption positions matter: changing padded features changes nothing
    noisy = S.Caption(jnp.where(mask[..., None], feats, 5.0), mask)
    again = S.generate(gparams, gconf, noisy, 0, method="sjd", window=4, temperature=0.0, cfg_scale=3.0)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(sjd.tokens))

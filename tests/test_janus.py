"""Janus-Pro: a tiny random HF ``JanusForConditionalGeneration`` saved with ``save_pretrained``
(safetensors) -> ``sjd-jax convert --family janus-pro`` -> sjd-jax. Generation-head logits and
decoded pixels match HF within 1e-4; greedy image tokens equal HF ``generate(generation_mode="image")``
with Janus CFG; converter errors exit 2 and leave nothing behind."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import JanusConfig as HFJanusConfig
from transformers import GenerationConfig, JanusForConditionalGeneration

import sjd_jax as S
from sjd_jax.convert.cli import main
from sjd_jax.families import janus as J
from sjd_jax.core.vq import decode_tokens

PAD, BOS, EOS, BOI = 0, 1, 2, 5
WORDS = ["<|User|>:", "<|Assistant|>:", "a", "red", "cat", "on", "the", "moon", "dog", "under", "rain",
         "big", "small", "blue", "house"]


def hf_model(seed=0):
    torch.manual_seed(seed)
    text = dict(model_type="llama", vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
                  projection_dim=64, num_image_tokens=16)
    vq = dict(embed_dim=8, num_embeddings=48, base_channels=32, channel_multiplier=[1, 1, 2], num_res_blocks=1,
              latent_channels=32, projection_dim=64, image_token_embed_dim=64, num_patches=4)
    cfg = HFJanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=3)
    model = JanusForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # HF's init (std 0.02) gives near-flat logits; make every tensor matter
        for name, p in model.named_parameters():
            if not name.startswith(("model.language_model", "model.generation_")):
                continue
            if "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim == 2:  # the head gets logits of a few units: distinct argmaxes
                scale = 4.0 if "vision_head" in name else 0.6
                p.copy_(torch.randn(p.shape, generator=g) * scale / p.shape[1] ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def write_tokenizer(path):
    vocab = {"<pad>": PAD, "<｜begin▁of▁sentence｜>": BOS, "<｜end▁of▁sentence｜>": EOS, "<image>": 3,
             "<unk>": 4, "<begin_of_image>": BOI}
    vocab.update({w: 6 + i for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<｜begin▁of▁sentence｜> $A", special_tokens=[("<｜begin▁of▁sentence｜>", BOS)])
    tok.save(str(path))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("janus")
    model = hf_model()
    model.save_pretrained(d / "hf")
    write_tokenizer(d / "hf" / "tokenizer.json")
    assert main(["--family", "janus-pro", str(d / "hf"), "--out", str(d / "sjd"), "--quiet"]) == 0
    config, params = S.load(d / "sjd")
    return model, config, params, d


def prompts(config, rows, length=None):
    return J.pad_prompts(config, rows, length)


def hf_gen_logits(model, ids, mask, tokens):
    """HF generation-head logits [B, N, K] for left-padded prompts, positions counting real tokens."""
    ids, mask, tokens = (torch.as_tensor(np.array(a)) for a in (ids, mask, tokens))
    B, C = ids.shape
    with torch.no_grad():
        x = torch.cat([model.get_input_embeddings()(ids.long()),
                       model.prepare_embeddings_for_image_generation(tokens[:, :-1].long())], 1)
        full = torch.cat([mask.long(), torch.ones(B, tokens.shape[1] - 1, dtype=torch.long)], 1)
        pos = (full.cumsum(1) - 1).clamp(min=0)
        h = model.model.language_model(inputs_embeds=x, attention_mask=full, position_ids=pos).last_hidden_state
        return model.model.generation_head(h[:, C - 1:]).numpy()


def test_config_and_files(converted):
    _, config, params, d = converted
    assert isinstance(config, J.JanusConfig)
    g = config.gpt
    assert (g.text_vocab_size, g.vocab_size, g.grid_size, g.dim, g.kv_heads, g.intermediate_size) == \
        (64, 48, (4, 4), 64, 2, 96)
    assert (g.rope_type, g.rope_interleaved, g.rope_theta, g.norm_eps) == ("1d", False, 500.0, 1e-6)
    assert (config.bos_id, config.boi_id, config.pad_id, g.cfg_keep_ids) == (BOS, BOI, PAD, (BOS, BOI))
    assert config.image_size == 16 and (d / "sjd" / "tokenizer.json").is_file()
    assert set(params) == {"gpt", "vq"}


def test_generation_head_logits_match_hf(converted):
    model, config, params, _ = converted
    ids, mask = prompts(config, [[BOS, 8, 9, 10, BOI], [BOS, 11, 12, 13, 14, 15, 16, 17, BOI], [BOS, BOI]], length=12)
    tokens = jax.random.randint(jax.random.key(0), (3, 16), 0, 48)
    want = hf_gen_logits(model, ids, mask, tokens)
    got = np.asarray(S.teacher_forced_logits(params["gpt"], config.with_prompt_length(12),
                                             S.Prompt(ids, mask), tokens))
    err = np.abs(got - want).max()
    print(f"janus gen-head logits max |diff| {err:.2e} (|logits| max {np.abs(want).max():.1f})")
    assert np.abs(want).max() > 1.0 and err <= 1e-4
    # the same prompt padded differently gives the same logits (positions count real tokens)
    ids2, mask2 = prompts(config, [[BOS, 8, 9, 10, BOI]], length=5)
    again = np.asarray(S.teacher_forced_logits(params["gpt"], config.with_prompt_length(5),
                                               S.Prompt(ids2, mask2), tokens[:1]))
    assert np.abs(again - got[:1]).max() <= 1e-5


def test_decoded_pixels_match_hf(converted):
    model, config, params, _ = converted
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 48)
    with torch.no_grad():
        want = model.decode_image_tokens(torch.as_tensor(np.array(tokens)).long()).numpy()
    got = np.asarray(decode_tokens(params["vq"], config.vq, tokens, config.gpt.grid_size))
    err = np.abs(got - want).max()
    print(f"janus decoded pixels max |diff| {err:.2e}")
    assert got.shape == want.shape == (2, 16, 16, 3) and np.abs(want).max() > 0.05 and err <= 1e-4
    imgs = J.decode_images(params, config, tokens)
    assert imgs.dtype == np.uint8 and imgs.shape == (2, 16, 16, 3)


@pytest.mark.parametrize("method", ["ar", "jacobi", "sjd"])
def test_greedy_tokens_equal_hf_generate(converted, method):
    model, config, params, _ = converted
    rows = [[BOS, 8, 9, 10, 11, BOI], [BOS, 12, 13, 14, 15, BOI]]
    ids, mask = prompts(config, rows, length=6)
    with torch.no_grad():
        want = model.generate(torch.tensor(rows), attention_mask=torch.ones(2, 6, dtype=torch.long),
                              generation_mode="image", generation_config=GenerationConfig(
                                  do_sample=False, guidance_scale=5.0, pad_token_id=PAD, bos_token_id=BOS,
                                  eos_token_id=EOS, generation_kwargs={"boi_token_id": BOI},
                                  max_new_tokens=16)).numpy()
    out = J.generate_tokens(params, config, S.Prompt(ids, mask), 0, method=method, window=4,
                            temperature=0.0, cfg_scale=5.0)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    assert len(set(want[0].tolist())) > 3  # not a degenerate constant image


def test_text_to_image_with_tokenizer(converted):
    _, config, params, d = converted
    tok = J.load_tokenizer(d / "sjd")
    ids = J.prompt_ids(tok, config, "a red cat on the moon")
    assert ids[0] == BOS and ids[-1] == BOI and ids.count(BOS) == 1
    assert ids[1:-1] == [6, 8, 9, 10, 11, 12, 13, 7]  # <|User|>: a red cat on the moon <|Assistant|>:
    imgs, out = J.text_to_image(params, config, tok, ["a red cat on the moon", "big blue house"],
                                jax.random.key(3), method="sjd", window=4)
    assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8
    assert out.tokens.shape == (2, 16)
    # prompt padding (16 vs 32) never changes sampled tokens: per-row keys, masked pads, real positions
    rows = [J.prompt_ids(tok, config, t) for t in ("a red cat on the moon", "big blue house")]
    a = J.generate_tokens(params, config, J.pad_prompts(config, rows), 7, method="sjd", window=4)
    b = J.generate_tokens(params, config, J.pad_prompts(config, rows, length=32), 7, method="sjd", window=4)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    with pytest.raises(ValueError, match="prompt too long"):
        J.pad_prompts(config, [[BOS] * 120 + [BOI]])
    with pytest.raises(ValueError, match="non-empty"):
        J.prompt_ids(tok, config, "  ")


def test_cli_generate(converted, tmp_path, capsys):
    """``sjd-jax generate --model janus-pro-1b --ckpt DIR --prompt ...`` writes exactly the images of
    ``text_to_image`` (grid column per prompt, example id = grid index, Janus' cfg 5 default)."""
    from PIL import Image

    from sjd_jax.cli.main import main as cli_main

    _, config, params, d = converted
    out = tmp_path / "j.png"
    rc = cli_main(["generate", "--model", "janus-pro-1b", "--ckpt", str(d / "sjd"), "--prompt", "a red cat",
                   "big blue house", "--method", "sjd", "--window", "4", "--seed", "2", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    want, _ = J.text_to_image(params, config, J.load_tokenizer(d / "sjd"), ["a red cat", "big blue house"], 2,
                              window=4)
    got = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(got[2:18, 2:18], want[0])
    np.testing.assert_array_equal(got[2:18, 20:36], want[1])
    rc = cli_main(["generate", "--model", "lumina-mgpt-7b-768", "--ckpt", str(d / "sjd"), "--prompt", "x", "--quiet"])
    assert rc == 2 and "holds a 'janus' checkpoint" in capsys.readouterr().err


def _break(d, tmp_path, edit):
    src = tmp_path / "broken"
    shutil.copytree(d / "hf", src)
    edit(src)
    out = tmp_path / "out"
    rc = main(["--family", "janus-pro", str(src), "--out", str(out), "--quiet"])
    return rc, out


def _edit_config(fn):
    def edit(src):
        cfg = json.loads((src / "config.json").read_text())
        fn(cfg)
        (src / "config.json").write_text(json.dumps(cfg))
    return edit


def _edit_tensors(fn):
    def edit(src):
        t = load_file(src / "model.safetensors")
        fn(t)
        save_file(t, src / "model.safetensors")
    return edit


@pytest.mark.parametrize("case,edit,msg", [
    ("unknown-field", _edit_config(lambda c: c["text_config"].update(sliding_window=4)), "does not understand"),
    ("rope-scaling", _edit_config(lambda c: c["text_config"]["rope_parameters"].update(rope_type="linear")),
     "rope scaling"),
    ("missing-key", _edit_tensors(lambda t: t.pop("model.language_model.layers.1.mlp.up_proj.weight")),
     "unfilled params"),
    ("missing-qkv", _edit_tensors(lambda t: t.pop("model.language_model.layers.0.self_attn.k_proj.weight")),
     "missing some of q_proj"),
    ("unused-key", _edit_tensors(lambda t: t.update({"model.extra.weight": np.zeros(3, np.float32)})),
     "unused keys"),
    ("wrong-shape", _edit_tensors(lambda t: t.update({"model.generation_head.vision_head.bias":
                                                      np.zeros(47, np.float32)})), "shape mismatch"),
    ("truncated", lambda s: (s / "model.safetensors").write_bytes((s / "model.safetensors").read_bytes()[:5000]),
     "safetensors"),
    ("no-config", lambda s: (s / "config.json").unlink(), "config.json"),
])
def test_converter_errors(converted, tmp_path, capsys, case, edit, msg):
    rc, out = _break(converted[3], tmp_path, edit)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err, err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_wrong_family(converted, tmp_path, capsys):
    d = converted[3]
    assert main(["--family", "llamagen-c2i", str(d / "hf" / "model.safetensors"), "--out",
                 str(tmp_path / "x"), "--quiet", "--image-size", "64"]) == 2
    assert "not a LlamaGen GPT checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

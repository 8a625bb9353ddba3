"""Emu3's LLM: raw logits vs HF ``Emu3ForConditionalGeneration`` (text model + lm_head) on a tiny
random config, from HF v5 names, the original BAAI names and the legacy hub names."""

import jax
import numpy as np
import pytest
import torch
from transformers import Emu3Config, Emu3ForConditionalGeneration

import sjd_jax as S
from sjd_jax.convert.cli import to_numpy
from sjd_jax.convert.emu3 import emu3_config, emu3_name, emu3_params

N_TEXT, N_VIS = 32, 64
VQ = dict(codebook_size=N_VIS, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
          num_res_blocks=1, attn_resolutions=[1], temporal_downsample_factor=4, hidden_size=64, num_attention_heads=1)


def _hf_model(seed=0, **text_config):
    vocab = {f"t{i}": i for i in range(N_TEXT)}
    vocab.update({f"<|visual token{i:06d}|>": N_TEXT + i for i in range(N_VIS)})
    text = dict(vocab_size=N_TEXT + N_VIS, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                **text_config)
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
            # the hub files (what save_pretrained writes): text_model.model.*, text_model.lm_head, vqmodel.*
            "hub": lambda k: ("text_model.lm_head." + k[len("lm_head."):] if k.startswith("lm_head.")
                              else k.replace("model.text_model.", "text_model.model.")
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


def test_head_dim_other_than_hidden_over_heads():
    """``text_config.head_dim`` 24 with hidden 64 / 4 heads: q/k/v project to heads * 24 features,
    o_proj maps 96 -> 64 and RoPE turns 12 pairs, as in HF; the logits match."""
    model = _hf_model(head_dim=24)
    assert tuple(model.model.text_model.layers[0].self_attn.o_proj.weight.shape) == (64, 96)
    C, grid = 6, (3, 4)
    rng = np.random.default_rng(1)
    prompt = np.concatenate([np.full((2, 1), 1), rng.integers(3, N_TEXT, (2, C - 1))], 1)
    image = rng.integers(N_TEXT, N_TEXT + N_VIS, (2, 12))
    ref = _raw_logits(model, np.concatenate([prompt, image], 1))[:, C - 1:C - 1 + 12]
    config = emu3_config(model.config.to_dict(), grid, C)
    assert (config.head_dim, config.attn_head_dim, config.dim, config.kv_heads) == (24, 24, 64, 2)
    params = emu3_params(dict(model.state_dict()), config, to_numpy)
    assert params["params"]["layers_0"]["attention"]["wo"]["kernel"].shape == (96, 64)
    out = np.asarray(S.teacher_forced_logits(params, config, S.Prompt(prompt, np.ones(prompt.shape, bool)), image))
    err = np.abs(out - ref).max()
    print(f"emu3 logits with head_dim 24 (hidden 64, 4 heads): max |diff| {err:.2e}")
    assert err <= 1e-4, err
    # head_dim equal to hidden/heads is the plain layout (same config as without the field)
    assert emu3_config({**model.config.to_dict(), "text_config": {**model.config.to_dict()["text_config"],
                                                                  "head_dim": 16}}, grid, C).attn_head_dim is None


def test_config_fields_outside_the_released_ones_are_refused():
    cfg = _hf_model().config.to_dict()
    with pytest.raises(ValueError, match=r"Emu3 config.json text_config has field\(s\) this converter does not "
                                         r"understand: \['partial_rotary_factor', 'sliding_window'\]"):
        emu3_config({**cfg, "text_config": {**cfg["text_config"], "sliding_window": 64,
                                            "partial_rotary_factor": 0.5}}, (2, 3), 4)
    with pytest.raises(ValueError, match=r"\(top level\) has field\(s\).*\['text_norm'\]"):
        emu3_config({**cfg, "text_norm": True}, (2, 3), 4)
    flat = {**cfg["text_config"], "boi_token_id": 5, "image_area": 720 * 720, "auto_map": {}}  # BAAI/Emu3-Gen
    assert emu3_config(flat, (2, 3), 4) == emu3_config(cfg, (2, 3), 4)
    with pytest.raises(ValueError, match=r"Emu3 config.json has field\(s\).*\['qk_layernorm'\]"):
        emu3_config({**flat, "qk_layernorm": True}, (2, 3), 4)
    with pytest.raises(ValueError, match="head_dim 0 is not a positive integer"):
        emu3_config({**flat, "head_dim": 0}, (2, 3), 4)


def test_names_and_errors():
    assert emu3_name("model.text_model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.up_proj.weight"
    assert emu3_name("text_model.lm_head.weight") == "lm_head.weight"
    assert emu3_name("text_model.model.norm.weight") == "model.norm.weight"
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


# ---- the Emu3 pipeline: prompt format, layout, negative-prompt CFG vs HF generate ---------------

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from sjd_jax.convert.emu3_vq import emu3_vq_config, emu3_vq_params  # noqa: E402
from sjd_jax.families import emu3  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<|extra_200|>", "<|extra_201|>",
           "<|image start|>", "<|image end|>", "<|image token|>", "<image>"]
WORDS = "a red fox cat in snow blurry ugly 4*4 masterpiece, film grained, best quality. [UNK]".split()
H = W = 4


def _pipeline_vocab():
    v = {t: i for i, t in enumerate(SPECIAL)}
    for t in WORDS:
        v[t] = len(v)
    start = len(v)
    v.update({f"<|visual token{i:06d}|>": start + i for i in range(N_VIS)})
    return v


@pytest.fixture(scope="module")
def pipeline():
    vocab = _pipeline_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(1)
    model = Emu3ForConditionalGeneration(Emu3Config(text_config=text, vq_config=VQ, vocabulary_map=vocab)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    sd = model.state_dict()
    vqc = emu3_vq_config(model.config.to_dict())
    gpt = emu3_config(model.config.to_dict(), (H, W + 1), 4)
    config = emu3.make_config(gpt, vqc, vocab, (H, W), 512)
    params = {"gpt": emu3_params(sd, config.gpt, to_numpy),
              "vq": emu3_vq_params({k: v for k, v in sd.items() if k.startswith("model.vqmodel.")}, vqc, to_numpy)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIAL)
    return dict(model=model, config=config, params=params, tok=tok, vocab=vocab)


def test_config_layout_and_prompt(pipeline):
    c, v, tok = pipeline["config"], pipeline["vocab"], pipeline["tok"]
    assert c.gpt.grid_size == (H, W + 1) and c.gpt.row_end_token == v["<|extra_200|>"]
    assert c.gpt.image_token_range == (v["<|visual token000000|>"], v["<|visual token000000|>"] + N_VIS)
    assert c.gpt.cfg_negative_prompt and c.image_size == (8, 8)
    ids = emu3.prompt_ids(tok, c, "a red fox")
    words = "a red fox masterpiece, film grained, best quality.".split()
    assert ids == [v["<|extra_203|>"], *[v[w] for w in words], v["<|image start|>"], v["4*4"], v["<|image token|>"]]
    assert emu3.prompt_ids(tok, c, "blurry", positive=False)[1:-3] == [v["blurry"]]
    t = np.tile(np.r_[np.arange(W) + c.visual_start + 5, v["<|extra_200|>"]], H)[None]
    np.testing.assert_array_equal(emu3.codes_of(c, t), np.tile(np.arange(W) + 5, H)[None])
    full = emu3.full_image_tokens(c, t)
    assert full.shape == (1, H * (W + 1) + 3) and full[0, -3:].tolist() == [c.eof_id, c.eoi_id, c.eos_id]
    with pytest.raises(ValueError, match="not a visual token"):
        emu3.codes_of(c, np.zeros((1, H * (W + 1)), int))


def _hf_greedy(model, prompt, neg, cfg):
    vis = model.vocabulary_mapping.image_tokens
    img_wrap, eol = 7, 3

    def allowed(batch_id, input_ids):  # BAAI's layout constraint (rows of W codes + EOL)
        pos = torch.nonzero(input_ids == img_wrap, as_tuple=True)[0][0]
        off = input_ids.shape[0] - pos
        return [eol] if off % (W + 1) == 0 else vis

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=(W + 1) * H, prefix_allowed_tokens_fn=allowed,
                             guidance_scale=cfg, negative_prompt_ids=torch.tensor([neg]),
                             negative_prompt_attention_mask=torch.ones(1, len(neg), dtype=torch.long),
                             pad_token_id=0, eos_token_id=2)
    return out[0, len(prompt):].numpy()


@pytest.mark.parametrize("method", ["ar", "sjd"])
def test_greedy_tokens_and_pixels_equal_hf_generate(pipeline, method):
    """Greedy tokens with CFG 3 against a negative prompt equal HF ``generate`` (unbatched
    log-softmax CFG, BAAI's layout constraint) for two prompts of different lengths in one batch;
    pixels equal HF ``decode_image_tokens``."""
    c, tok, model, params = pipeline["config"], pipeline["tok"], pipeline["model"], pipeline["params"]
    texts = ["a red fox in snow", "cat"]
    images, out = emu3.text_to_image(params, c, tok, texts, 0, negative="blurry ugly", method=method, window=6,
                                     temperature=0.0, cfg_scale=3.0)
    tokens = np.asarray(out.tokens)
    neg = emu3.prompt_ids(tok, c, "blurry ugly", positive=False)
    for b, t in enumerate(texts):
        np.testing.assert_array_equal(tokens[b], _hf_greedy(model, emu3.prompt_ids(tok, c, t), neg, 3.0))
    plain = emu3.text_to_image(params, c, tok, texts, 0, negative="blurry ugly", method=method, window=6,
                               temperature=0.0, cfg_scale=1.0)[1]
    assert (np.asarray(plain.tokens) != tokens).any()  # the negative prompt matters here
    with torch.no_grad():
        ref = model.decode_image_tokens(image_tokens=torch.from_numpy(emu3.full_image_tokens(c, tokens)),
                                        height=H, width=W).permute(0, 2, 3, 1).numpy()
    from sjd_jax.core.vq import to_uint8

    assert images.shape == (2, 8, 8, 3)
    assert np.abs(images.astype(int) - to_uint8(ref).astype(int)).max() <= 1


def test_convert_and_cli_generate(pipeline, tmp_path, capsys):
    """``sjd-jax convert --family emu3`` on an HF-format snapshot (LLM + vision tokenizer in bf16
    shards, tokenizer.json), then ``sjd-jax generate --model emu3-gen``: the PNG holds exactly the
    pipeline's images; the vision tokenizer from a separate directory (--vq) gives the same params."""
    import json

    from PIL import Image

    from sjd_jax.convert.cli import main as convert_main
    from sjd_jax.io import checkpoint
    from sjd_jax.cli.main import main as cli_main

    model, tok = pipeline["model"], pipeline["tok"]
    snap = tmp_path / "Emu3-Gen-hf"
    model.save_pretrained(snap, max_shard_size="200KB")
    tok.save(str(snap / "tokenizer.json"))
    out = tmp_path / "ck"
    assert convert_main(["--family", "emu3", str(snap), "--image-size", "8", "--out", str(out), "--quiet"]) == 0
    c, params = checkpoint.load(out)
    assert c == pipeline["config"]  # max_positions 512 from the text config, ids by name
    png, stats = tmp_path / "e.png", tmp_path / "s.json"
    rc = cli_main(["generate", "--model", "emu3-gen", "--ckpt", str(out), "--prompt", "a red fox", "cat",
                   "--method", "sjd", "--window", "6", "--seed", "4", "--out", str(png), "--stats-json", str(stats), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    want, _ = emu3.text_to_image(params, c, tok, ["a red fox", "cat"], 4, window=6)
    got = np.asarray(Image.open(png).convert("RGB"))
    np.testing.assert_array_equal(got[2:10, 2:10], want[0])
    np.testing.assert_array_equal(got[2:10, 12:20], want[1])
    st = json.loads(stats.read_text())
    assert (st["cfg_scale"], st["top_k"]) == (3.0, N_VIS)
    # errors: no vision tokenizer, --vq given twice over, no tokenizer.json
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((snap / "config.json").read_text())
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items() if "vqmodel" not in k},
              str(bare / "model.safetensors"))
    (bare / "tokenizer.json").write_text((snap / "tokenizer.json").read_text())
    assert convert_main(["--family", "emu3", str(bare), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "pass --vq" in capsys.readouterr().err
    vqdir = tmp_path / "Emu3-VisionTokenizer"
    vqdir.mkdir()
    (vqdir / "config.json").write_text(json.dumps(model.config.vq_config.to_dict()))
    save_file({k[len("model.vqmodel."):]: v.contiguous() for k, v in model.state_dict().items() if "vqmodel" in k},
              str(vqdir / "model.safetensors"))
    assert convert_main(["--family", "emu3", str(bare), "--vq", str(vqdir), "--image-size", "8", "--out",
                         str(tmp_path / "w"), "--quiet"]) == 0
    c2, p2 = checkpoint.load(tmp_path / "w")
    assert c2 == c
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert convert_main(["--family", "emu3", str(snap), "--vq", str(bare), "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "drop --vq" in capsys.readouterr().err
    (bare / "tokenizer.json").unlink()
    assert convert_main(["--family", "emu3", str(bare), "--out", str(tmp_path / "z"), "--quiet"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "xyz")


def test_convert_refuses_image_sizes_the_model_cannot_use(pipeline, tmp_path, capsys):
    """--image-size 0 is not "unset"; sizes off the vision tokenizer's grid or whose image tokens
    overflow the model's context (max_position_embeddings 512 here) are refused before converting."""
    from sjd_jax.convert.cli import main as convert_main

    snap = tmp_path / "Emu3-Gen-hf"
    pipeline["model"].save_pretrained(snap)
    pipeline["tok"].save(str(snap / "tokenizer.json"))
    capsys.readouterr()  # save_pretrained's progress bar
    cases = [("0", "argument --image-size: must be in 1..8192, got 0"),
             ("9", "--image-size 9: image size 9 is not a multiple of the 2x downsampling"),
             ("64", "image size 64 px needs 1056 image positions, more than the model's context "
                    "(max_position_embeddings 512)")]
    for size, msg in cases:
        out = tmp_path / f"out{size}"
        rc = convert_main(["--family", "emu3", str(snap), "--image-size", size, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1, (size, err)
        assert not out.exists()
    assert convert_main(["--family", "emu3", str(snap), "--image-size", "40", "--out", str(tmp_path / "ok"),
                         "--quiet"]) == 0  # 20 x 21 = 420 image positions fit


def test_layout_at_720px():
    """Emu3-Gen at 720 px: 90 x 90 codes, 8190 positions with the end-of-line column (+ EOF, image
    end, EOS = 8193 in the image section); end of line at every 91st position; codes over the
    32768 visual tokens only."""
    vocab = {n: 151643 + i for i, n in enumerate(emu3.SPECIAL_NAMES.values())}
    vocab.update({f"<|visual token{i:06d}|>": 151854 + i for i in range(32768)})
    gpt = S.GPTConfig(vocab_size=184622, text_vocab_size=184622, shared_embeddings=True, dim=32, n_layer=1,
                      n_head=2, rope_type="1d", rope_interleaved=False, grid_size=(90, 91))
    from sjd_jax.core.vq.emu3 import Emu3VQConfig

    c = emu3.make_config(gpt, Emu3VQConfig(), vocab, (90, 90), 9216)
    assert c.image_size == (720, 720) and c.gpt.num_image_tokens == 8190
    forced = c.gpt.forced_tokens()
    np.testing.assert_array_equal(np.flatnonzero(forced >= 0), np.arange(90, 8190, 91))
    assert (forced[forced >= 0] == vocab["<|extra_200|>"]).all() and (forced < 0).sum() == 8100
    assert c.gpt.image_token_range == (151854, 184622)
    assert emu3.full_image_tokens(c, np.zeros((1, 8190), int)).shape == (1, 8193)


def test_sharded_generation_equals_single_device(pipeline):
    from sjd_jax.parallel import sharding

    mesh = sharding.make_mesh({"data": 2, "model": 2})
    c, tok, params = pipeline["config"], pipeline["tok"], pipeline["params"]
    a_img, a = emu3.text_to_image(params, c, tok, ["a red fox", "cat"], 4, negative="blurry", window=6)
    b_img, b = emu3.text_to_image(params, c, tok, ["a red fox", "cat"], 4, negative="blurry", window=6, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(a_img, b_img)

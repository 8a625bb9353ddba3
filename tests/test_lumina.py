"""Lumina-mGPT end to end on a tiny random Chameleon: convert (HF snapshot + vqgan.ckpt), prompt
format, tokenizer round trips, Lumina's CFG (unconditional sequence from <racm3:break>) and layout
against an independent torch reference decoding loop, decoding, the CLI and its errors."""

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import ChameleonConfig, ChameleonForConditionalGeneration

from sjd_jax.convert.cli import main as convert_main
from fixtures_convert import taming_vqgan
from sjd_jax.io import checkpoint
from sjd_jax.cli.main import main as cli_main
from sjd_jax.families import lumina

# A Chameleon-like vocabulary: special tokens by their real names at small ids, 16 image tokens
# (ids 4..19) whose code order is shuffled (the mapping must go by name), then words.
SPECIAL = ["<s>", "<pad>", "</s>", "<reserved08706>"]
N_CODES = 16
WORDS = ("Generate an image of 16x16 according to the following prompt: a red fox cat in snow "
         "Red FOX").split()
SHUFFLE = np.random.default_rng(3).permutation(N_CODES)


def _name(code):
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def _vocab():
    v = {t: i for i, t in enumerate(SPECIAL)}
    for j in range(N_CODES):
        v[_name(int(SHUFFLE[j]))] = 4 + j
    for t in ["<racm3:break>", "<eoss>", "<reserved08799>"] + [f"<reserved0{8800 + n}>" for n in range(4)]:
        v[t] = len(v)
    for w in dict.fromkeys(WORDS):
        v[w] = len(v)
    v["[UNK]"] = len(v)
    return v


VOCAB = _vocab()
V = 48
BOI, EOI, NL, SEP = VOCAB["<racm3:break>"], VOCAB["<eoss>"], VOCAB["<reserved08799>"], VOCAB["<reserved08706>"]


def _tokenizer():
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([t for t in VOCAB if t.startswith("<")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("lumina")
    snap = root / "Lumina-mGPT-tiny-16"
    cfg = ChameleonConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                          vocabulary_map=VOCAB, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                          vq_config=dict(embed_dim=8, num_embeddings=N_CODES, latent_channels=32, base_channels=32,
                                         channel_multiplier=[1, 2], num_res_blocks=1, resolution=32))
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # Lumina's mp = 1 q/k-norm: one row shared by all heads
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                norm.weight.copy_(torch.randn(1, norm.weight.shape[1]).mul(0.3).add(1.0).expand_as(norm.weight))
                norm.bias.copy_(torch.randn(1, norm.bias.shape[1]).mul(0.3).expand_as(norm.bias))
        model.lm_head.weight.mul_(4.0)  # peaked enough that CFG and the layout matter for argmax
    # as released: bf16 safetensors shards + index (the reference keeps the same bf16-exact weights)
    model = model.to(torch.bfloat16)
    model.save_pretrained(snap, max_shard_size="100KB")
    model = model.float()
    assert len(list(snap.glob("model-*-of-*.safetensors"))) > 1 and (snap / "model.safetensors.index.json").is_file()
    _tokenizer().save(str(snap / "tokenizer.json"))
    enc, dec, qc, pqc, codebook, sd = taming_vqgan([8])
    torch.save({"state_dict": sd}, root / "vqgan.ckpt")
    out = root / "ckpt"
    assert convert_main(["--family", "lumina-mgpt", str(snap), "--vqgan", str(root / "vqgan.ckpt"),
                         "--out", str(out), "--quiet"]) == 0
    config, params = checkpoint.load(out)
    return dict(root=root, snap=snap, out=out, model=model, dec=dec, pqc=pqc, codebook=codebook,
                config=config, params=params, tok=lumina_tokenizer(out))


def lumina_tokenizer(path):
    from sjd_jax.families.prompting import load_tokenizer

    return load_tokenizer(path)


def test_converted_config(converted):
    c = converted["config"]
    assert c.layout == "lumina" and c.latent == (4, 4) and c.image_size == (16, 16)
    assert (c.boi_id, c.eoi_id, c.newline_id, c.sep_id, c.bos_id) == (BOI, EOI, NL, SEP, 0)
    g = c.gpt
    assert g.grid_size == (4, 5) and g.row_end_token == NL and g.image_token_range == (4, 20)
    assert g.cfg_uncond_suffix == 3 and g.shared_embeddings and g.qk_norm and g.rope_type == "1d"
    assert c.image_prefix() == [BOI, VOCAB["<reserved08802>"], VOCAB["<reserved08802>"]]
    # code -> BPE by name: code SHUFFLE[j] is token 4 + j
    assert [c.code_bpe[int(SHUFFLE[j])] for j in range(N_CODES)] == list(range(4, 20))
    assert c.vq.attn_levels == (2,) and not c.vq.codebook_l2_norm and c.vq.codebook_size == N_CODES
    assert (converted["out"] / "tokenizer.json").is_file()


def test_prompt_format_and_tokenizer_round_trips(converted):
    c, tok = converted["config"], converted["tok"]
    ids = lumina.prompt_ids(tok, c, "a red fox")
    text = "Generate an image of 16x16 according to the following prompt:\na red fox"
    assert ids == [0] + [VOCAB[w] for w in text.split()] + [SEP, BOI, VOCAB["<reserved08802>"],
                                                            VOCAB["<reserved08802>"]]
    # text round trip (WordLevel joins with spaces; the newline is whitespace)
    assert tok.decode(ids[1:-4]) == " ".join(text.split())
    # the template string with the separator written as text tokenizes to the same ids (added token)
    assert tok.encode(text + "<reserved08706>").ids == ids[:-3]
    # every image code: code -> BPE id -> token name -> code, and name -> id through the tokenizer
    for code in range(N_CODES):
        bpe = c.code_bpe[code]
        assert tok.id_to_token(bpe) == _name(code) and tok.token_to_id(_name(code)) == bpe
        assert lumina.bpe_to_code(np.array([bpe]), np.asarray(c.code_bpe))[0] == code
    # a whole image span as text -> ids -> the same span
    rng = np.random.default_rng(0)
    rows = np.asarray(c.code_bpe)[rng.integers(0, N_CODES, (4, 4))]
    span = [*c.image_prefix(), *np.concatenate([rows, np.full((4, 1), NL)], 1).reshape(-1), EOI]
    assert tok.encode(" ".join(tok.id_to_token(i) for i in span), add_special_tokens=False).ids == span
    with pytest.raises(ValueError, match="non-empty"):
        lumina.prompt_ids(tok, c, "  ")


def _hf_logits(model, ids):
    with torch.no_grad():
        return model.lm_head(model.model(torch.tensor([ids])).last_hidden_state)[0, -1].numpy().astype(np.float64)


def reference_greedy(model, prompt_ids, cfg, h, w, layout="lumina"):
    """Lumina's decoding, written independently with HF's ChameleonModel (no cache): the conditional
    sequence is the whole prompt, the unconditional one starts at <racm3:break> (its own positions
    from 0); scores = uncond + cfg * (cond - uncond) on raw logits; a newline is forced after each row
    of w codes; elsewhere only image ids 4..19 are allowed; greedy. Anole: no size tokens, no newlines."""
    lumina_layout = layout == "lumina"
    cond, uncond = list(prompt_ids), list(prompt_ids[-3:] if lumina_layout else prompt_ids[-1:])
    assert uncond[0] == BOI
    out = []
    for i in range(h * (w + 1) if lumina_layout else h * w):
        if lumina_layout and i % (w + 1) == w:
            t = NL
        else:
            lc, lu = _hf_logits(model, cond), _hf_logits(model, uncond)
            s = lu + cfg * (lc - lu)
            s[:4], s[20:] = -np.inf, -np.inf
            t = int(np.argmax(s))
        out.append(t)
        cond.append(t)
        uncond.append(t)
    return np.asarray(out)


DRAFTING = {"ar": ("ar", {}), "sjd": ("sjd", {}),
            "sjd-pac-vertical": ("sjd", dict(coupling="maximal", tree=(2, 2), init="vertical-repeat")),
            "gumbel-horizon": ("sjd", dict(coupling="gumbel", init="horizon-sample"))}


@pytest.mark.parametrize("name", sorted(DRAFTING))
def test_greedy_tokens_and_pixels_equal_reference(converted, name):
    c, tok, model = converted["config"], converted["tok"], converted["model"]
    method, drafting = DRAFTING[name]
    texts = ["a red fox in snow", "cat"]  # different lengths: left padding must not matter
    images, out = lumina.text_to_image(converted["params"], c, tok, texts, 0, method=method, window=6,
                                       temperature=0.0, cfg_scale=3.0, **drafting)
    tokens = np.asarray(out.tokens)
    for b, t in enumerate(texts):
        ref = reference_greedy(model, lumina.prompt_ids(tok, c, t), 3.0, 4, 4)
        np.testing.assert_array_equal(tokens[b], ref)
    # CFG matters here (otherwise the test could not tell Lumina's unconditional branch from others)
    if name == "sjd":
        plain = lumina.text_to_image(converted["params"], c, tok, texts, 0, method=method, window=6,
                                     temperature=0.0, cfg_scale=1.0)[1]
        assert (np.asarray(plain.tokens) != tokens).any()
    # pixels: BPE ids -> codes by name -> taming decoder, clamp, (x + 1) / 2 * 255 truncated
    codes = lumina.codes_of(c, tokens)
    with torch.no_grad():
        z = converted["codebook"](torch.from_numpy(codes)).reshape(2, 4, 4, 8).permute(0, 3, 1, 2)
        ref = converted["dec"](converted["pqc"](z)).permute(0, 2, 3, 1).numpy()
    want = ((np.clip(ref, -1, 1) + 1) / 2 * 255)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert np.abs(images.astype(float) - want).max() < 1.0 + 1e-3  # truncation of values within 1e-5


def test_anole_layout(converted, tmp_path):
    """--family anole: prompt + <racm3:break>, codes only (no size tokens, no newlines), CFG's
    unconditional branch <racm3:break> alone; greedy tokens equal the reference loop."""
    out = tmp_path / "anole"
    assert convert_main(["--family", "anole", str(converted["snap"]), "--vqgan", str(converted["root"] / "vqgan.ckpt"),
                         "--image-size", "16", "--out", str(out), "--quiet"]) == 0
    c, params = checkpoint.load(out)
    assert c.layout == "anole" and c.gpt.grid_size == (4, 4) and c.gpt.row_end_token is None
    assert c.gpt.cfg_uncond_suffix == 1 and c.image_prefix() == [BOI]
    tok = converted["tok"]
    ids = lumina.prompt_ids(tok, c, "a red fox")
    assert ids == [0, VOCAB["a"], VOCAB["red"], VOCAB["fox"], BOI]
    images, res = lumina.text_to_image(params, c, tok, ["a red fox"], 0, window=5, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(res.tokens)[0],
                                  reference_greedy(converted["model"], ids, lumina.DEFAULTS["cfg_scale"], 4, 4, "anole"))
    assert images.shape == (1, 16, 16, 3)


def test_sampling_is_per_example_and_respects_layout(converted):
    c, tok = converted["config"], converted["tok"]
    _, one = lumina.text_to_image(converted["params"], c, tok, ["a red fox"], 5, window=8)
    _, three = lumina.text_to_image(converted["params"], c, tok, ["a red fox", "cat", "in snow"], 5, window=8)
    np.testing.assert_array_equal(np.asarray(one.tokens)[0], np.asarray(three.tokens)[0])
    t = np.asarray(three.tokens).reshape(3, 4, 5)
    assert (t[:, :, 4] == NL).all() and ((t[:, :, :4] >= 4) & (t[:, :, :4] < 20)).all()


def test_cli_generate_and_errors(converted, tmp_path, capsys):
    out = tmp_path / "fox.png"
    stats = tmp_path / "stats.json"
    rc = cli_main(["generate", "--model", "lumina-mgpt-7b-768", "--ckpt", str(converted["out"]),
                   "--prompt", "a red fox", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "converted for 16x16 px" in err and "--image-size 768" in err
    # the tiny checkpoint's size is 16 px: convert again under another name to use the CLI's size check
    ck = tmp_path / "ck768"
    assert convert_main(["--family", "lumina-mgpt", str(converted["snap"]), "--vqgan",
                         str(converted["root"] / "vqgan.ckpt"), "--image-size", "16", "--out", str(ck),
                         "--quiet"]) == 0
    rc = cli_main(["generate", "--model", "lumina-mgpt-7b-512", "--ckpt", str(ck), "--prompt", "x", "--quiet"])
    assert rc == 2 and "is 512 px" in capsys.readouterr().err
    import dataclasses

    from sjd_jax import families

    lumina_family = families.get("lumina-mgpt")  # a tiny model of the family, 16 px, for the CLI
    families.register(dataclasses.replace(lumina_family, models={
        **lumina_family.models, "lumina-mgpt-tiny-16": dict(layout="lumina", size=16)}), replace=True)
    try:
        rc = cli_main(["generate", "--model", "lumina-mgpt-tiny-16", "--ckpt", str(ck), "--prompt", "a red fox",
                       "cat", "--n", "2", "--window", "8", "--out", str(out), "--stats-json", str(stats), "--quiet"])
        assert rc == 0, capsys.readouterr().err
        from PIL import Image

        assert Image.open(out).size == (2 * 18 + 2, 2 * 18 + 2)  # 2 prompts x 2 samples, 16 px + 2 px pads
        st = json.loads(stats.read_text())
        assert st["images"] == 4 and st["cfg_scale"] == 3.0 and st["top_k"] == N_CODES and st["image_size"] == [16, 16]
        cases = [
            (["--prompt", "x"], "needs --ckpt"),
            (["--ckpt", str(ck)], "needs --prompt"),
            (["--ckpt", str(ck), "--prompt", "x", "--class", "1"], "--class is for class-conditional"),
            (["--ckpt", str(ck), "--prompt", "x", "--out-dir", str(tmp_path / "d")], "batch mode"),
            (["--ckpt", str(tmp_path), "--prompt", "x"], "not an sjd-jax checkpoint"),
            (["--ckpt", str(ck), "--prompt", "x", "--t5", str(ck)], "--t5 is for llamagen-t2i"),
            (["--ckpt", str(ck), "--prompt", "x", "--method", "lantern"], "lantern needs"),
            (["--ckpt", str(ck), "--prompt", "x", "--top-p", "2"], "top_p"),
            (["--ckpt", str(ck), "--prompt", " ".join(["red"] * 300)], "prompt too long"),
        ]
        for extra, msg in cases:
            rc = cli_main(["generate", "--model", "lumina-mgpt-tiny-16", "--quiet", "--out",
                           str(tmp_path / "never.png"), *extra])
            err = capsys.readouterr().err
            assert rc == 2 and msg in err and err.count("\n") == 1, (extra, err)
            assert not (tmp_path / "never.png").exists()
    finally:
        families.register(lumina_family, replace=True)
    rc = cli_main(["generate", "--prompt", "x", "--quiet"])
    assert rc == 2 and "class-conditional" in capsys.readouterr().err


def test_convert_errors(converted, tmp_path, capsys):
    snap, root = converted["snap"], converted["root"]
    cases = [
        ([str(snap), "--out", str(tmp_path / "a")], "needs --vqgan"),
        ([str(snap), "--vqgan", str(snap / "config.json"), "--out", str(tmp_path / "b")], "cannot be read"),
        ([str(snap), "--vqgan", str(root / "vqgan.ckpt"), "--image-size", "18", "--out", str(tmp_path / "c")],
         "not a multiple"),
        ([str(snap), "--vqgan", str(root / "vqgan.ckpt"), "--image-size", "12", "--out", str(tmp_path / "d")],
         "latent sizes are even"),
    ]
    for args, msg in cases:
        assert convert_main(["--family", "lumina-mgpt", *args, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert msg in err, (args, err)
    # a vocabulary without Lumina's special tokens
    bad = tmp_path / "bad-16"
    bad.mkdir()
    cfg = json.loads((snap / "config.json").read_text())
    cfg["vocabulary_map"] = {k: v for k, v in cfg["vocabulary_map"].items() if k != "<reserved08799>"}
    (bad / "config.json").write_text(json.dumps(cfg))
    for f in snap.glob("*.safetensors"):
        (bad / f.name).symlink_to(f)
    assert convert_main(["--family", "lumina-mgpt", str(bad), "--vqgan", str(root / "vqgan.ckpt"),
                         "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert "<reserved08799>" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abcde")
    # a Lightning file that pickles more than tensors: refused by default, loaded with --trust-pickle
    import fractions

    sd = torch.load(root / "vqgan.ckpt", weights_only=True)["state_dict"]
    torch.save({"state_dict": sd, "callbacks": {"best": fractions.Fraction(1, 3)}}, tmp_path / "lightning.ckpt")
    args = ["--family", "lumina-mgpt", str(snap), "--vqgan", str(tmp_path / "lightning.ckpt"), "--quiet"]
    assert convert_main([*args, "--out", str(tmp_path / "f")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not (tmp_path / "f").exists()
    assert convert_main([*args, "--out", str(tmp_path / "g"), "--trust-pickle"]) == 0


def test_sharded_checkpoint_and_generation_equal_single_device(converted):
    """The lumina checkpoint restores onto a (data=2, model=2) mesh (LLM sharded, VQGAN replicated)
    and samples the same tokens and images as on one device."""
    from sjd_jax.parallel import sharding

    mesh = sharding.make_mesh({"data": 2, "model": 2})
    c, params = checkpoint.load(converted["out"], mesh=mesh)
    wqkv = params["gpt"]["params"]["layers_0"]["attention"]["wqkv"]["kernel"]
    assert wqkv.sharding.spec == sharding.spec_for(wqkv.shape, ("embed", "qkv"), mesh) and "model" in wqkv.sharding.spec
    assert params["vq"]["params"]["codebook"].sharding.is_fully_replicated
    texts = ["a red fox", "cat"]
    a_img, a = lumina.text_to_image(converted["params"], c, converted["tok"], texts, 4, window=8)
    b_img, b = lumina.text_to_image(params, c, converted["tok"], texts, 4, window=8, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(a_img, b_img)

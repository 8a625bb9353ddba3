"""LlamaGen text-to-image pipeline (``sjd_jax.families.llamagen_t2i``) on tiny random checkpoints converted
with ``sjd-jax convert``: HF T5 encoder + tokenizer.json, a LlamaGen-format t2i GPT, a LlamaGen VQ."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel

import sjd_jax as S
from sjd_jax.convert.cli import main as convert_main
from sjd_jax.convert.vq import janus_to_llamagen_key
from fixtures_convert import hf_vq_model, llamagen_state_dict, vq_state_dict
from sjd_jax.families import llamagen_t2i as T

D_MODEL = 32
MAX_LEN = 120  # convert/t5.py fixes T5Config.max_length at LlamaGen's 120
WORDS = "a red fox in the snow blue cat on mat big small dog sky".split()
PROMPTS = ["a red fox in the snow", "blue cat on a mat", "big dog"]
KW = dict(window=4)  # 3x3 image tokens


def _tokenizer(path):
    """A T5-style word-level tokenizer.json (lower-case words; ``</s>`` appended; ``<pad>`` = 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(path))


def run(*argv):
    return convert_main([*map(str, argv), "--quiet"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    src, ck = root / "src", root / "ckpt"
    src.mkdir()
    # T5 encoder: HF snapshot (config.json, model.safetensors) + tokenizer.json
    torch.manual_seed(0)
    t5 = T5EncoderModel(HFT5Config(vocab_size=32, d_model=D_MODEL, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                   dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0)).eval()
    t5.save_pretrained(src / "t5")
    _tokenizer(src / "t5" / "tokenizer.json")
    assert run("--family", "t5-encoder", src / "t5", "--out", ck / "t5") == 0
    # GPT: LlamaGen t2i state dict, caption_dim = T5 d_model, cls_token_num = T5 max_length
    gconf = S.GPTConfig(vocab_size=64, grid_size=(3, 3), dim=32, n_layer=2, n_head=4, caption_dim=D_MODEL,
                        cls_token_num=MAX_LEN)
    sd = llamagen_state_dict(gconf, seed=3)
    with torch.no_grad():  # larger caption projection: the caption must visibly steer the logits
        sd["cls_embedding.cap_proj.fc1.weight"].mul_(5.0)
    torch.save({"model": sd}, src / "t2i_T_48.pt")
    assert run("--family", "llamagen-t2i", src / "t2i_T_48.pt", "--out", ck / "gpt", "--n-head", 4) == 0
    # VQ (LlamaGen key names, codebook 64 = GPT vocab)
    vq, _ = hf_vq_model((1, 1, 2), 1, codebook=64, grid=3)
    save_file({janus_to_llamagen_key(k): v for k, v in vq_state_dict(vq).items()}, src / "model.safetensors")
    assert run("--family", "llamagen-vq", src / "model.safetensors", "--out", ck / "vq") == 0
    bundle = T.load(ck)
    assert bundle.gpt_config == gconf and bundle.t5_config.max_length == MAX_LEN
    return dict(root=root, ckpt=ck, t5=t5, bundle=bundle)


def _hf_reference(t5, tokenizer_file, texts):
    """Left-padded caption features from HF alone: PreTrainedTokenizerFast(padding='max_length',
    truncation=True) -> T5EncoderModel -> each row's valid tokens moved to the end, padding zeroed."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>")
    enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
    with torch.no_grad():
        h = t5(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.numpy()
    m = enc["attention_mask"].numpy().astype(bool)
    feats, mask = np.zeros_like(h), np.zeros_like(m)
    for b in range(len(texts)):
        n = m[b].sum()
        feats[b, MAX_LEN - n:] = h[b, :n]
        mask[b, MAX_LEN - n:] = True
    return feats, mask


def test_caption_features_match_hf_t5(setup):
    bundle = setup["bundle"]
    texts = PROMPTS + ["the sky " * 70]  # the last one is truncated at 120 tokens
    cap = T.captions(bundle, texts, clean=False)
    want, want_mask = _hf_reference(setup["t5"], setup["ckpt"] / "t5" / "tokenizer.json", texts)
    np.testing.assert_array_equal(np.asarray(cap.mask), want_mask)
    assert want_mask.sum(1).tolist() == [7, 6, 3, MAX_LEN] and np.abs(want).max() > 0.5
    err = float(np.abs(np.asarray(cap.features) - want).max())
    print(f"caption features vs HF T5: max |diff| {err:.2e}")
    assert err <= 1e-4
    # cleaning is applied by default: a messy prompt gives the features of its cleaned form
    messy = T.captions(bundle, ["  A RED&nbsp;Fox in\tthe  SNOW http://x.org/a.png "])
    plain = T.captions(bundle, PROMPTS[:1], clean=False)
    np.testing.assert_array_equal(np.asarray(messy.features), np.asarray(plain.features))


def test_text_to_image_is_generate_then_decode(setup):
    bundle = setup["bundle"]
    assert bundle.image_size == 3 * 4
    images, out = T.text_to_image(bundle, PROMPTS, 7, **KW)  # LlamaGen defaults: cfg 7.5, top_k, T=1
    assert images.dtype == np.uint8 and images.shape == (3, 12, 12, 3)
    cap = T.captions(bundle, PROMPTS)
    ref = S.generate(bundle.gpt_params, bundle.gpt_config, cap, 7, method="sjd", window=4, cfg_scale=7.5,
                     top_k=64, top_p=1.0, temperature=1.0)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(out.nfe), np.asarray(ref.nfe))
    pixels = S.vq.to_uint8(S.vq.decode_tokens(bundle.vq_params, bundle.vq_config, ref.tokens, (3, 3)))
    np.testing.assert_array_equal(images, np.asarray(pixels))
    assert len(np.unique(np.asarray(out.tokens))) > 3 and images.std() > 1
    # overrides reach the sampler: another cfg scale gives other tokens with the same key
    _, other = T.text_to_image(bundle, PROMPTS, 7, cfg_scale=1.0, **KW)
    assert (np.asarray(other.tokens) != np.asarray(out.tokens)).any()


def test_greedy_sjd_equals_greedy_ar(setup):
    bundle = setup["bundle"]
    _, sjd = T.text_to_image(bundle, PROMPTS, 0, method="sjd", temperature=0.0, **KW)
    _, ar = T.text_to_image(bundle, PROMPTS, 1, method="ar", temperature=0.0)
    np.testing.assert_array_equal(np.asarray(sjd.tokens), np.asarray(ar.tokens))
    tokens = np.asarray(ar.tokens)
    assert not (tokens[0] == tokens[1]).all()  # the captions matter


def test_same_seed_same_image_alone_or_in_a_batch(setup):
    bundle = setup["bundle"]
    batch, bout = T.text_to_image(bundle, PROMPTS, 11, **KW)
    alone, aout = T.text_to_image(bundle, PROMPTS[:1], 11, **KW)
    np.testing.assert_array_equal(np.asarray(aout.tokens)[0], np.asarray(bout.tokens)[0])
    np.testing.assert_array_equal(alone[0], batch[0])
    last, lout = T.text_to_image(bundle, PROMPTS[2:], 11, example_ids=[2], **KW)  # row 2's key
    np.testing.assert_array_equal(np.asarray(lout.tokens)[0], np.asarray(bout.tokens)[2])
    np.testing.assert_array_equal(last[0], batch[2])


def test_clean_caption():
    assert T.clean_caption("Tom &amp; Jerry") == "tom & jerry"
    assert T.clean_caption("fish &amp;amp; chips&nbsp;&lt;b&gt;") == "fish & chips <b>"
    assert T.clean_caption("a cat https://example.com/x?a=1&amp;b=2 on a mat www.cats.org") == "a cat on a mat"
    assert T.clean_caption("A Red FOX") == "a red fox"
    assert T.clean_caption("  a \t red\n\n fox  ") == "a red fox"
    assert T.clean_caption("http://only.url") == ""


def test_clean_false_passes_text_through(setup):
    bundle = setup["bundle"]
    raw = T.captions(bundle, ["A RED fox"], clean=False)  # "A", "RED" are <unk> to this tokenizer
    want, _ = _hf_reference(setup["t5"], setup["ckpt"] / "t5" / "tokenizer.json", ["A RED fox"])
    assert np.abs(np.asarray(raw.features) - want).max() <= 1e-4
    cleaned = T.captions(bundle, ["A RED fox"])
    assert np.abs(np.asarray(raw.features) - np.asarray(cleaned.features)).max() > 1e-2


def _variant(setup, name, gpt=None, vq=None, t5=None, drop=()):
    """A checkpoint dir whose gpt/vq/t5 link to the good ones, except ``gpt``/``vq``/``t5`` given as
    a path (linked instead) or a dict of config fields (a copy of config.json with them changed,
    params linked); ``drop``: sub-directories left out."""
    good, d = setup["ckpt"], setup["root"] / "variants" / name
    d.mkdir(parents=True)
    for sub, change in (("gpt", gpt), ("vq", vq), ("t5", t5)):
        if sub in drop:
            continue
        if change is None or not isinstance(change, dict):
            (d / sub).symlink_to(change or good / sub, target_is_directory=True)
            continue
        (d / sub).mkdir()
        meta = json.loads((good / sub / "config.json").read_text())
        meta["config"].update(change)
        (d / sub / "config.json").write_text(json.dumps(meta))
        (d / sub / "params").symlink_to(good / sub / "params", target_is_directory=True)
        if (good / sub / "tokenizer.json").exists():
            shutil.copyfile(good / sub / "tokenizer.json", d / sub / "tokenizer.json")
    return d


def test_load_errors(setup):
    good = setup["ckpt"]
    cases = [
        (dict(drop=("gpt",)), r"gpt: no LlamaGen-T2I GPT checkpoint directory.*--family llamagen-t2i"),
        (dict(drop=("vq",)), r"vq: no VQ checkpoint directory.*--family llamagen-vq"),
        (dict(drop=("t5",)), r"t5: no T5 encoder checkpoint directory.*--family t5-encoder"),
        (dict(gpt=good / "vq"), r"gpt: a 'vq' checkpoint where the LlamaGen-T2I GPT \(kind 'gpt'\) belongs"),
        (dict(t5=good / "gpt"), r"t5: a 'gpt' checkpoint where the T5 encoder \(kind 't5'\).*t5-encoder"),
        (dict(gpt=dict(caption_dim=None, num_classes=10, cls_token_num=1)),
         r"gpt: a class-conditional GPT \(no caption_dim\).*--family llamagen-t2i"),
        (dict(gpt=dict(caption_dim=24)), r"gpt: caption_dim 24 != d_model 32 of the T5 in .*t5"),
        (dict(gpt=dict(cls_token_num=8)), r"gpt: cls_token_num 8 != max_length 120 of the T5"),
        (dict(gpt=dict(vocab_size=48)), r"gpt: vocab_size 48 != codebook_size 64 of the VQ in .*vq"),
    ]
    for i, (kw, match) in enumerate(cases):
        with pytest.raises(ValueError, match=match):
            T.load(_variant(setup, f"case{i}", **kw))
    # the T5 from elsewhere: t5_dir; without its tokenizer.json it is refused
    bare = setup["root"] / "variants" / "t5-bare"
    bare.mkdir()
    (bare / "config.json").symlink_to(good / "t5" / "config.json")
    (bare / "params").symlink_to(good / "t5" / "params", target_is_directory=True)
    with pytest.raises(ValueError, match="t5-bare: no tokenizer.json beside the T5 params"):
        T.load(_variant(setup, "no-t5", drop=("t5",)), t5_dir=bare)
    b = T.load(_variant(setup, "t5-elsewhere", drop=("t5",)), t5_dir=good / "t5")
    assert b.t5_config == setup["bundle"].t5_config


def test_prompt_validation(setup):
    bundle = setup["bundle"]
    for bad, match in (([], "non-empty list"), ("a red fox", "non-empty list"), ([""], "prompt 0 must be"),
                       (["a fox", "   "], "prompt 1 must be"), (["a fox", None], "prompt 1 must be")):
        with pytest.raises(ValueError, match=match):
            T.captions(bundle, bad)
    with pytest.raises(ValueError, match="non-empty list"):
        T.text_to_image(bundle, [], 0, **KW)


def test_mesh_load_and_generate(setup):
    """``load(mesh=)`` restores the GPT sharded (heads over ``model``); tokens match the unsharded run."""
    mesh = S.sharding.make_mesh({"data": 1, "model": 2})
    sharded = T.load(setup["ckpt"], mesh=mesh)
    assert any(len(x.sharding.device_set) == 2 for x in jax.tree.leaves(sharded.gpt_params))
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(sharded.vq_params))
    opts = dict(method="ar", temperature=0.0)  # greedy: no sampling on float noise across layouts
    images, out = T.text_to_image(sharded, PROMPTS, 5, mesh=mesh, **opts)
    ref_images, ref = T.text_to_image(setup["bundle"], PROMPTS, 5, **opts)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(images, ref_images)


def test_cli_generate(setup, tmp_path, capsys):
    """``sjd-jax generate --model llamagen-t2i-xl --ckpt DIR --prompt ...``: the grid holds exactly
    the pipeline's images (column per prompt, example id = grid index), stats carry LlamaGen's
    defaults; --t5 points at a T5 elsewhere."""
    from PIL import Image

    from sjd_jax.cli.main import main as cli_main

    ck, out, stats = setup["ckpt"], tmp_path / "t2i.png", tmp_path / "st.json"
    t5 = tmp_path / "t5"
    shutil.copytree(ck / "t5", t5)
    rc = cli_main(["generate", "--model", "llamagen-t2i-xl", "--ckpt", str(ck), "--t5", str(t5), "--prompt",
                   *PROMPTS[:2], "--n", "2", "--method", "sjd", "--window", "4", "--seed", "3", "--out", str(out),
                   "--stats-json", str(stats), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    texts = [PROMPTS[0], PROMPTS[1]] * 2
    images, _ = T.text_to_image(setup["bundle"], texts, 3, window=4)
    got = np.asarray(Image.open(out).convert("RGB"))
    H = images.shape[1]
    for i in range(4):
        r, c = divmod(i, 2)
        np.testing.assert_array_equal(got[2 + r * (H + 2): 2 + r * (H + 2) + H, 2 + c * (H + 2): 2 + c * (H + 2) + H],
                                      images[i])
    st = json.loads(stats.read_text())
    assert (st["cfg_scale"], st["top_k"], st["images"], st["prompts"]) == (7.5, 64, 4, PROMPTS[:2])
    rc = cli_main(["generate", "--model", "llamagen-t2i-xl", "--ckpt", str(tmp_path), "--prompt", "x", "--quiet"])
    assert rc == 2 and "sjd-jax convert --family llamagen-t2i" in capsys.readouterr().err

"""LlamaGen text-to-image: prompt -> T5 caption features -> GPT (SJD or any sampler) -> VQ-16 -> pixels.

A LlamaGen-T2I setup is three converted checkpoints, by default side by side under one directory:

  DIR/gpt  kind "gpt" with ``caption_dim`` set  (``sjd-jax convert --family llamagen-t2i
           t2i_XL_stage2_512.pt --out DIR/gpt``; stage 1 is ``t2i_XL_stage1_256.pt``)
  DIR/vq   kind "vq"                            (``sjd-jax convert --family llamagen-vq vq_ds16_t2i.pt
           --out DIR/vq``)
  DIR/t5   kind "t5" with its tokenizer.json    (``sjd-jax convert --family t5-encoder flan-t5-xl/
           --out DIR/t5``, the HF snapshot directory so that tokenizer.json comes along)

Captions are (optionally) cleaned, tokenized to T5's ``max_length`` (120) and encoded; the features
are left-padded as LlamaGen lays them out (``text.caption_features``) and condition the GPT through
its caption projection. CFG's null condition is the GPT's learned ``uncond_embedding`` (the sampler
uses it); LlamaGen's ``sample_t2i`` defaults are ``DEFAULTS``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import Caption
from sjd_jax.core.text import T5Config, abstract_t5_params
from sjd_jax.core.vq import VQConfig
from sjd_jax.families import Family, HubStep, Kind, Pretrained, register

# LlamaGen sample_t2i.py's sampling defaults
DEFAULTS = dict(cfg_scale=7.5, top_k=1000, top_p=1.0, temperature=1.0)

_MAKE = {
    "gpt": "sjd-jax convert --family llamagen-t2i t2i_XL_stage2_512.pt --out {dir}",
    "vq": "sjd-jax convert --family llamagen-vq vq_ds16_t2i.pt --out {dir}",
    "t5": "sjd-jax convert --family t5-encoder flan-t5-xl/ --out {dir}  (the HF snapshot directory)",
}


@dataclasses.dataclass
class T2IBundle:
    """Everything ``text_to_image`` needs: the three configs, their params and the T5 tokenizer."""

    gpt_config: GPTConfig
    gpt_params: dict
    vq_config: VQConfig
    vq_params: dict
    t5_config: T5Config
    t5_params: dict
    tokenizer: object  # tokenizers.Tokenizer

    @property
    def param_dtype(self) -> str:
        """The GPT params' dtype as loaded ("float32" / "bfloat16"; VQ and T5 stay float32)."""
        from sjd_jax.core import precision

        return precision.dtype_of(self.gpt_params)

    @property
    def image_size(self) -> int:
        """Image side in pixels: grid rows * the VQ's downsampling factor."""
        return self.gpt_config.grid_size[0] * self.vq_config.downsample


# ---- loading -------------------------------------------------------------------------------------

def _read_config(path: Path, kind: str, what: str):
    """``path/config.json`` -> the config of a checkpoint of ``kind``, read before any params so
    that a mismatched setup fails in milliseconds, not after loading gigabytes."""
    from sjd_jax.io.checkpoint import FORMAT, config_from_dict

    make = _MAKE[kind].format(dir=path)
    if not path.is_dir():
        raise ValueError(f"{path}: no {what} checkpoint directory; make it with `{make}`")
    meta_file = path / "config.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not an sjd-jax checkpoint (unreadable config.json: {e}); "
                         f"make it with `{make}`") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an sjd-jax checkpoint (config.json lacks format {FORMAT!r}); "
                         f"make it with `{make}`")
    if meta.get("kind") != kind:
        raise ValueError(f"{path}: a {meta.get('kind')!r} checkpoint where the {what} (kind {kind!r}) "
                         f"belongs; make it with `{make}`")
    try:
        return config_from_dict(kind, meta.get("config"))
    except ValueError as e:
        raise ValueError(f"{meta_file}: {e}") from None


def load(ckpt_dir, t5_dir=None, mesh=None, param_dtype: str = "auto") -> T2IBundle:
    """Load ``ckpt_dir/gpt``, ``ckpt_dir/vq`` and the T5 encoder (``t5_dir``, default ``ckpt_dir/t5``).

    All configs are read and checked against each other before any params are loaded; each problem
    is one ValueError naming the directory and the ``sjd-jax convert`` command that makes it.
    ``mesh``: restore the GPT sharded on it (``checkpoint.load``); VQ and T5 land on device 0.
    ``param_dtype``: the GPT params' dtype (``checkpoint.load``; VQ and T5 stay float32).
    """
    from sjd_jax.io import checkpoint
    from sjd_jax.core.text import load_tokenizer

    root = Path(ckpt_dir)
    gpt_dir, vq_dir = root / "gpt", root / "vq"
    t5_dir = root / "t5" if t5_dir is None else Path(t5_dir)
    gpt = _read_config(gpt_dir, "gpt", "LlamaGen-T2I GPT")
    if not gpt.text_conditional:
        raise ValueError(f"{gpt_dir}: a class-conditional GPT (no caption_dim); text-to-image needs a "
                         f"LlamaGen t2i checkpoint: `{_MAKE['gpt'].format(dir=gpt_dir)}`")
    vq = _read_config(vq_dir, "vq", "VQ")
    t5 = _read_config(t5_dir, "t5", "T5 encoder")
    if not (t5_dir / "tokenizer.json").is_file():
        raise ValueError(f"{t5_dir}: no tokenizer.json beside the T5 params; convert the HF snapshot "
                         f"directory, which holds it: `{_MAKE['t5'].format(dir=t5_dir)}`")
    if gpt.caption_dim != t5.d_model:
        raise ValueError(f"{gpt_dir}: caption_dim {gpt.caption_dim} != d_model {t5.d_model} of the T5 in "
                         f"{t5_dir}; LlamaGen-T2I uses flan-t5-xl (d_model 2048): "
                         f"`{_MAKE['t5'].format(dir=t5_dir)}`")
    if gpt.cls_token_num != t5.max_length:
        raise ValueError(f"{gpt_dir}: cls_token_num {gpt.cls_token_num} != max_length {t5.max_length} of the "
                         f"T5 in {t5_dir}; the caption length must equal the GPT's condition positions "
                         f"(LlamaGen: 120)")
    if gpt.vocab_size != vq.codebook_size:
        raise ValueError(f"{gpt_dir}: vocab_size {gpt.vocab_size} != codebook_size {vq.codebook_size} of the "
                         f"VQ in {vq_dir}; use LlamaGen's t2i VQ: `{_MAKE['vq'].format(dir=vq_dir)}`")
    gpt, gpt_params = checkpoint.load(gpt_dir, mesh=mesh, param_dtype=param_dtype)
    _, vq_params = checkpoint.load(vq_dir)
    _, t5_params = checkpoint.load(t5_dir)
    return T2IBundle(gpt, gpt_params, vq, vq_params, t5, t5_params, load_tokenizer(t5_dir / "tokenizer.json"))


# ---- captions ------------------------------------------------------------------------------------

_URL = re.compile(r"(?:\bhttps?://|\bwww\.)\S+", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """LlamaGen's caption cleaning, a SUBSET of PixArt-alpha's ``clean_caption`` (which LlamaGen
    applies before T5): unescape HTML entities (twice, for double-escaped ``&amp;amp;``), strip URLs
    (``http(s)://...`` and ``www....`` up to the next whitespace), lower-case, collapse runs of
    whitespace (``&nbsp;`` included) to one space, strip the ends.

    Not done (PixArt does them too): ftfy text fixing, HTML-tag removal, @nicknames, CJK ranges,
    dash/quote normalisation, file names, IP addresses, hashtags, long number runs and the other
    shop/stock-photo boilerplate patterns. So captions with such content may tokenize differently
    from LlamaGen's."""
    text = html.unescape(html.unescape(str(text)))
    text = _URL.sub(" ", text)
    return _SPACE.sub(" ", text.lower()).strip()


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"texts must be a non-empty list of prompt strings, got {texts!r:.80}")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"prompt {i} must be a non-empty string, got {t!r}")
    return list(texts)


def captions(bundle: T2IBundle, texts: list[str], clean: bool = True) -> Caption:
    """Prompts -> ``Caption(features [B, L, d_model] float32, mask [B, L] bool)``, ``L = max_length``,
    left-padded as LlamaGen lays them out. ``clean``: apply ``clean_caption`` first (LlamaGen does);
    a prompt cleaned down to nothing still encodes (as T5's ``</s>`` alone)."""
    from sjd_jax.core.text import caption_features

    texts = _check_texts(texts)
    if clean:
        texts = [clean_caption(t) for t in texts]
    feats, mask = caption_features(bundle.t5_params, bundle.t5_config, bundle.tokenizer, texts)
    return Caption(feats, mask)


# ---- generation ----------------------------------------------------------------------------------

def sampling_options(bundle: T2IBundle, **sampling) -> dict:
    """``DEFAULTS`` updated with ``sampling``. Two defaults are capped to fit small models (a
    no-op for LlamaGen's 16384 codes and >= 256 tokens): ``top_k`` (1000) at the vocabulary size,
    where it filters nothing either way, and ``window`` (``generate``'s 16) at the image's tokens."""
    c = bundle.gpt_config
    opts = dict(DEFAULTS, top_k=min(DEFAULTS["top_k"], c.vocab_size))
    if sampling.get("method", "sjd") != "ar":
        opts["window"] = min(16, c.num_image_tokens)
    opts.update(sampling)
    return opts


def decode_images(bundle: T2IBundle, tokens) -> np.ndarray:
    """Image tokens ``[B, N]`` -> uint8 images ``[B, H, W, 3]`` (``H = W = bundle.image_size``)."""
    from sjd_jax.parallel.distributed import gather
    from sjd_jax.core.vq import decode_tokens, to_uint8

    tokens = jnp.asarray(gather(tokens))  # off a mesh (if any; multi-host safe): the VQ sits on device 0
    return np.asarray(to_uint8(decode_tokens(bundle.vq_params, bundle.vq_config, tokens,
                                             bundle.gpt_config.grid_size)))


def text_to_image(bundle: T2IBundle, texts: list[str], key, *, clean: bool = True, mesh=None, **sampling):
    """Prompts -> (uint8 images ``[B, H, W, 3]`` numpy, the sampler's ``GenerateOutput``).

    ``key``: int seed or PRNG key; row b uses ``fold_in(key, b)`` (or pass ``example_ids``), so a
    prompt's image does not depend on what else is in the batch. ``sampling``: any ``generate``
    option (method, window, cfg_scale, temperature, top_k, top_p, coupling, init, tree, lantern,
    example_ids, ...) over ``DEFAULTS`` (see ``sampling_options``). ``mesh``: run the GPT on it."""
    from sjd_jax.tuning.auto import generate  # (method/window "auto": the pipelines' default)

    cond = captions(bundle, texts, clean=clean)
    from sjd_jax.parallel.distributed import gather_output

    out = gather_output(generate(bundle.gpt_params, bundle.gpt_config, cond, key, mesh=mesh,
                                 **sampling_options(bundle, **sampling)))
    return decode_images(bundle, out.tokens), out


# ---- the family entry: checkpoint kind "t5" (its GPT and VQ are kinds "gpt" and "vq"), --------------
# generate --model llamagen-t2i-xl

def load_model(family, model: str, ckpt, *, mesh=None, t5=None, param_dtype: str = "auto"):
    """``pipelines.TextModel`` of a LlamaGen-T2I directory (``ckpt/gpt``, ``ckpt/vq``, the T5
    encoder in ``t5`` or ``ckpt/t5``)."""
    from sjd_jax.families.pipelines import TextModel
    from sjd_jax.core.vq import codebook_vectors

    b = load(ckpt, t5_dir=t5, mesh=mesh, param_dtype=param_dtype)

    def run(texts, key, **sampling):
        return text_to_image(b, texts, key, mesh=mesh, **sampling)

    knobs = {k: v for k, v in sampling_options(b).items() if k in family.defaults}
    return TextModel(model, family.name, knobs, b.gpt_config, (b.image_size, b.image_size),
                     codebook_vectors(b.vq_params, b.vq_config), run, b.param_dtype, b.gpt_params)


register(Family("llamagen-t2i", "text", kinds=(Kind("t5", T5Config, abstract_t5_params, replicated=True),),
                models={"llamagen-t2i-xl": {}}, defaults=DEFAULTS, load=load_model, load_options=("t5", "param_dtype"),
                converters={"llamagen-t2i": "sjd_jax.convert.cli:convert_llamagen_t2i",
                            "t5-encoder": "sjd_jax.convert.cli:convert_t5"},
                # stage 2 (512 px) by default, stage 1 (256 px) by name; the grid comes from the file name
                pretrained=tuple(Pretrained(name, "llamagen-t2i-xl",
                                            (HubStep("llamagen-t2i", "peizesun/llamagen_t2i", (gpt,), out="gpt"),
                                             HubStep("llamagen-vq", "peizesun/llamagen_t2i", ("vq_ds16_t2i.pt",), out="vq"),
                                             HubStep("t5-encoder", "google/flan-t5-xl", out="t5")))
                                 for name, gpt in (("llamagen-t2i-xl", "t2i_XL_stage2_512.pt"),
                                                   ("llamagen-t2i-xl-256", "t2i_XL_stage1_256.pt")))))

__all__ = ["DEFAULTS", "T2IBundle", "captions", "clean_caption", "decode_images", "load", "load_model",
           "sampling_options", "text_to_image"]

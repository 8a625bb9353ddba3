"""Emu3-Gen text-to-image: prompt formatting, image layout, CFG against a negative prompt, decoding
through Emu3's vision tokenizer.

Prompt (BAAI's processor, generation mode): ``<bos> + text + POSITIVE_PROMPT + <|image start|> +
"{h}*{w}" + <|image token|>``; the negative prompt is formatted the same way and is CFG's
unconditional branch (``GPTConfig.cfg_negative_prompt``: prompt ids ``[B, 2, C]``, each branch
left-padded on its own). Emu3 applies CFG to log-softmaxed logits (HF's unbatched CFG processor):
that differs from raw-logit CFG by a per-row constant, so the same p (tested).

Image (720 px: 90 x 90 codes): ``h`` rows of ``w`` visual tokens each followed by ``<|extra_200|>``
(end of line, forced: ``GPTConfig.row_end_token``), then end of frame, image end and eos (not
sampled). Free positions may only take visual tokens (``image_token_range``; the layout constraint
of BAAI's prefix-constrained logits helper). Visual token ``<|visual token{i:06d}|>`` is code ``i``.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import Prompt
from sjd_jax.core.vq.emu3 import Emu3VQConfig
from sjd_jax.families import Family, HubStep, Kind, Pretrained, register
from sjd_jax.families.prompting import PipelineConfig, load_tokenizer, pad_rows

# BAAI Emu3 README's generation example (sampling defaults: cfg 3.0, top-k 2048).
POSITIVE_PROMPT = " masterpiece, film grained, best quality."
NEGATIVE_PROMPT = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
                   "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
                   "username, blurry.")
DEFAULTS = dict(cfg_scale=3.0, top_k=2048, top_p=1.0, temperature=1.0)
SPECIAL_NAMES = dict(bos_id="<|extra_203|>", eos_id="<|extra_204|>", pad_id="<|endoftext|>", eol_id="<|extra_200|>",
                     eof_id="<|extra_201|>", boi_id="<|image start|>", eoi_id="<|image end|>",
                     img_id="<|image token|>")
_VISUAL = re.compile(r"<\|visual token(\d{6})\|>")


@dataclasses.dataclass(frozen=True)
class Emu3Config(PipelineConfig):
    KIND = "emu3"

    gpt: GPTConfig  # cls_token_num is the (padded) prompt length of the last call
    vq: Emu3VQConfig
    latent: tuple[int, int]  # (h, w) codes
    visual_start: int  # id of <|visual token000000|>; code i is visual_start + i
    bos_id: int
    eos_id: int
    pad_id: int
    eol_id: int
    eof_id: int
    boi_id: int
    eoi_id: int
    img_id: int
    max_positions: int

    def __post_init__(self):
        object.__setattr__(self, "latent", tuple(int(x) for x in self.latent))

    @property
    def image_size(self) -> tuple[int, int]:
        return self.latent[0] * self.vq.downsample, self.latent[1] * self.vq.downsample


def make_config(gpt: GPTConfig, vq: Emu3VQConfig, vocabulary: dict, latent: tuple[int, int],
                max_positions: int) -> Emu3Config:
    """The pipeline config of Emu3's LLM (``sjd_jax.convert.emu3.emu3_config``) and vision tokenizer for
    images of ``latent = (h, w)`` codes; special and visual ids read by name from ``vocabulary``."""
    missing = [n for n in SPECIAL_NAMES.values() if n not in vocabulary]
    if missing:
        raise ValueError(f"the vocabulary lacks {missing}: not an Emu3 tokenizer/vocabulary_map")
    codes = {int(m.group(1)): int(i) for name, i in vocabulary.items() if (m := _VISUAL.fullmatch(name))}
    if len(codes) != vq.codebook_size or sorted(codes) != list(range(vq.codebook_size)):
        raise ValueError(f"the vocabulary has {len(codes)} visual tokens; the vision tokenizer has "
                         f"{vq.codebook_size} codes")
    start = codes[0]
    if any(codes[i] != start + i for i in codes):
        raise ValueError("visual token ids are not contiguous in code order")
    h, w = (int(x) for x in latent)
    gpt = gpt.replace(grid_size=(h, w + 1), row_end_token=int(vocabulary[SPECIAL_NAMES["eol_id"]]),
                      image_token_range=(start, start + vq.codebook_size), cfg_negative_prompt=True,
                      cls_token_num=4)  # set per call
    return Emu3Config(gpt=gpt, vq=vq, latent=(h, w), visual_start=start, max_positions=int(max_positions),
                      **{k: int(vocabulary[n]) for k, n in SPECIAL_NAMES.items()})


def defaults(config: Emu3Config) -> dict:
    """``DEFAULTS`` with top-k capped at the number of codes (tiny test models)."""
    return {**DEFAULTS, "top_k": min(DEFAULTS["top_k"], config.vq.codebook_size)}


def prompt_ids(tokenizer, config: Emu3Config, text: str, positive: bool = True) -> list[int]:
    """``<bos> + tokens(text [+ POSITIVE_PROMPT]) + <|image start|> + tokens("{h}*{w}") + <|image token|>``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"prompt must be a non-empty string, got {text!r}")
    enc = lambda s: list(tokenizer.encode(s, add_special_tokens=False).ids)  # noqa: E731
    h, w = config.latent
    return [config.bos_id, *enc(text + (POSITIVE_PROMPT if positive else "")), config.boi_id,
            *enc(f"{h}*{w}"), config.img_id]


def pad_prompts(config: Emu3Config, rows: list[list[int]], negatives: list[list[int]], multiple: int = 16) -> Prompt:
    """Prompt and negative-prompt rows -> ``Prompt(ids [B, 2, C], mask [B, 2, C])``, each left-padded."""
    if not rows or len(rows) != len(negatives):
        raise ValueError("need one negative prompt per prompt")
    ids, mask = pad_rows(config, [r for pair in zip(rows, negatives) for r in pair], multiple=multiple)
    return Prompt(jnp.asarray(ids.reshape(len(rows), 2, -1)), jnp.asarray(mask.reshape(len(rows), 2, -1)))


def generate_tokens(params, config: Emu3Config, prompts: Prompt, key, mesh=None, **sampling):
    """Image tokens ``[B, h * (w + 1)]`` (end-of-line columns included); defaults ``defaults(config)``."""
    from sjd_jax.tuning.auto import generate  # (method/window "auto": the pipelines' default)

    for k, v in defaults(config).items():
        sampling.setdefault(k, v)
    return generate(params["gpt"], config.with_prompt_length(prompts.ids.shape[-1]), prompts, key, mesh=mesh,
                    **sampling)


def codes_of(config: Emu3Config, tokens) -> np.ndarray:
    """Sampler tokens -> codes ``[B, h * w]`` (end-of-line columns dropped)."""
    h, w = config.latent
    t = np.asarray(tokens).reshape(-1, h, w + 1)[:, :, :w].reshape(-1, h * w) - config.visual_start
    if (t < 0).any() or (t >= config.vq.codebook_size).any():
        raise ValueError("a token at a code position is not a visual token")
    return t


def full_image_tokens(config: Emu3Config, tokens) -> np.ndarray:
    """Sampler tokens -> the image section as Emu3 writes it: rows + EOL, then EOF, image end, EOS."""
    tokens = np.asarray(tokens)
    tail = np.broadcast_to(np.asarray([config.eof_id, config.eoi_id, config.eos_id]), (tokens.shape[0], 3))
    return np.concatenate([tokens, tail], axis=1)


def decode_images(params, config: Emu3Config, tokens) -> np.ndarray:
    """Sampler tokens -> uint8 images ``[B, H, W, 3]`` (frame 0 of the vision tokenizer's clip)."""
    from sjd_jax.core.vq import to_uint8
    from sjd_jax.core.vq.emu3 import decode_codes

    return to_uint8(decode_codes(params["vq"], config.vq, jnp.asarray(codes_of(config, tokens)), config.latent))


def text_to_image(params, config: Emu3Config, tokenizer, texts: list[str], key, *, negative: str = NEGATIVE_PROMPT,
                  positive: bool = True, mesh=None, **sampling):
    """Prompts -> (uint8 images ``[B, H, W, 3]``, the sampler's ``GenerateOutput``)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    rows = [prompt_ids(tokenizer, config, t, positive) for t in texts]
    neg = prompt_ids(tokenizer, config, negative, positive=False)
    out = generate_tokens(params, config, pad_prompts(config, rows, [neg] * len(rows)), key, mesh=mesh, **sampling)
    from sjd_jax.parallel.distributed import gather_output

    out = gather_output(out)
    return decode_images(params, config, out.tokens), out


def abstract_emu3_params(config: Emu3Config):
    from sjd_jax.core.model import abstract_params
    from sjd_jax.core.vq.emu3 import abstract_emu3_vq_params

    return {"gpt": abstract_params(config.gpt), "vq": abstract_emu3_vq_params(config.vq)}


# ---- the family entry: checkpoint kind "emu3", generate --model emu3-gen --------------------------

def load_model(family, model: str, ckpt, *, mesh=None, param_dtype: str = "auto"):
    """``pipelines.TextModel`` of a converted Emu3-Gen checkpoint directory."""
    from sjd_jax.io import checkpoint
    from sjd_jax.core import precision
    from sjd_jax.families.pipelines import TextModel

    checkpoint.require_kind(ckpt, "emu3", family.name)
    config, params = checkpoint.load(ckpt, mesh=mesh, param_dtype=param_dtype)
    tok = load_tokenizer(ckpt)

    def run(texts, key, **sampling):
        return text_to_image(params, config, tok, texts, key, mesh=mesh, **sampling)

    return TextModel(model, family.name, defaults(config), config.gpt, config.image_size, None, run,
                     precision.dtype_of(params["gpt"]), params["gpt"])


register(Family("emu3", "text", kinds=(Kind("emu3", Emu3Config, abstract_emu3_params),),
                models={"emu3-gen": {}}, defaults=DEFAULTS, load=load_model,
                load_options=("param_dtype",),
                converters={"emu3": "sjd_jax.convert.cli:convert_emu3"},
                # the HF snapshot holds LLM + vision tokenizer + tokenizer.json; float32 as released
                pretrained=(Pretrained("emu3-gen", "emu3-gen", (HubStep("emu3", "BAAI/Emu3-Gen-hf"),)),)))

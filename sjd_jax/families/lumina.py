"""Lumina-mGPT / Anole (Chameleon family) text-to-image: prompt formatting, image token layout,
CFG in Lumina's form, code <-> BPE mapping and decoding through Chameleon's VQGAN.

Layout of a generated image (Lumina-mGPT ``item_processor`` / ``inference_solver``): ``<racm3:break>``
(image start), two size tokens ``<reserved0{8800 + h/32}>``, ``<reserved0{8800 + w/32}>``, then
``h/16`` rows of ``w/16`` image codes each followed by a newline ``<reserved08799>``, then ``<eoss>``
(image end) and ``<reserved08706>``. The start and size tokens are deterministic for a requested size
(Lumina samples them with text top-k 10; for a requested size this conditions on it): sjd-jax puts
them at the end of the prompt; the sampler generates the rows, newlines forced
(``GPTConfig.row_end_token``) and free positions restricted to the image codes
(``GPTConfig.image_token_range``, Lumina's ``MultiModalLogitsProcessor``).

Prompt: ``[BOS] + tokens("Generate an image of {W}x{H} according to the following prompt:\n{text}")
+ <reserved08706>`` followed by the image prefix. CFG (Lumina's image-start-triggered processor):
raw logits, ``uncond + cfg * (cond - uncond)``, the unconditional branch a separate sequence that
starts at ``<racm3:break>`` with its own positions from 0 (``GPTConfig.cfg_uncond_suffix = 3``).

Anole (``layout="anole"``, Chameleon's own image span): ``[BOS] + tokens(text) + <racm3:break>``,
then ``h/16 * w/16`` codes with no newlines and no size tokens; CFG's unconditional branch is
``<racm3:break>`` alone.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import Prompt
from sjd_jax.core.vq import VQConfig
from sjd_jax.families import Family, HubStep, Kind, Pretrained, register
from sjd_jax.families.prompting import PipelineConfig, load_tokenizer, pad_prompts

BOI, EOI, NEWLINE, END_OF_TURN = 8197, 8196, 8803, 8710  # <racm3:break>, <eoss>, <reserved08799>, <reserved08706>
SIZE_BASE = 8804  # <reserved0{8800 + n}> has id 8804 + n
_IMG_NAME = re.compile(r"IMGIMG([A-J]+)Z")


def grid_of(height: int, width: int | None = None) -> tuple[int, int]:
    """Pixels -> the sampler's grid ``(rows, codes per row + 1)`` (16x down; sizes multiples of 32)."""
    width = height if width is None else width
    if height % 32 or width % 32 or min(height, width) < 32:
        raise ValueError(f"Lumina-mGPT image sizes are positive multiples of 32, got {height}x{width}")
    return height // 16, width // 16 + 1


def image_prefix(height: int, width: int | None = None) -> list[int]:
    """The deterministic tokens before the first code: image start, height and width size tokens."""
    width = height if width is None else width
    grid_of(height, width)
    return [BOI, SIZE_BASE + height // 32, SIZE_BASE + width // 32]


def full_image_tokens(rows_tokens: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """Sampler output ``[B, rows * (w + 1)]`` -> the whole image span as Lumina writes it:
    prefix, rows with their newlines, image end."""
    rows_tokens = np.asarray(rows_tokens)
    B = rows_tokens.shape[0]
    pre = np.broadcast_to(np.asarray(image_prefix(height, width)), (B, 3))
    return np.concatenate([pre, rows_tokens, np.full((B, 1), EOI)], axis=1)


def strip_row_ends(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``[B, rows * (w + 1)]`` -> the codes' BPE ids ``[B, rows * w]`` (row-end column dropped)."""
    h, w1 = grid
    t = np.asarray(tokens).reshape(-1, h, w1)
    return t[:, :, :-1].reshape(t.shape[0], h * (w1 - 1))


def code_to_bpe(vocabulary_map: dict) -> np.ndarray:
    """``[num_codes]`` BPE id of each VQGAN code, from Chameleon's token names (``IMGIMG`` + the
    code's decimal digits written as letters A-J + ``Z``). The ids are not an offset: read them."""
    pairs = {}
    for name, bpe in vocabulary_map.items():
        m = _IMG_NAME.fullmatch(name)
        if m:
            code = int("".join(str(ord(ch) - ord("A")) for ch in m.group(1)))
            if code in pairs:
                raise ValueError(f"two image tokens for code {code}")
            pairs[code] = int(bpe)
    if not pairs:
        raise ValueError("vocabulary_map has no IMGIMG...Z image tokens")
    n = max(pairs) + 1
    if len(pairs) != n:
        raise ValueError(f"image codes are not contiguous: {n - len(pairs)} of 0..{n - 1} missing")
    return np.asarray([pairs[c] for c in range(n)], np.int32)


def bpe_to_code(bpe_ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """BPE ids -> VQGAN codes (``table`` from ``code_to_bpe``); an id that is not an image token is
    an error."""
    lut = np.full(int(table.max()) + 1, -1, np.int64)
    lut[table] = np.arange(table.size)
    ids = np.asarray(bpe_ids)
    codes = np.where((ids >= 0) & (ids < lut.size), lut[np.clip(ids, 0, lut.size - 1)], -1)
    if (codes < 0).any():
        raise ValueError(f"token id {int(ids[codes < 0].flat[0])} is not an image code")
    return codes


# ---- a converted checkpoint: config, prompts, generation, decoding -------------------------------

PROMPT_TEMPLATE = "Generate an image of {width}x{height} according to the following prompt:\n{prompt}"
LAYOUTS = ("lumina", "anole")
# Sampling defaults: Lumina's create_logits_processor / SJD's Lumina-mGPT script (cfg 3, image top-k
# 2000; Lumina's README uses cfg 4). Chameleon tokens by name (ids read from the vocabulary).
DEFAULTS = dict(cfg_scale=3.0, top_k=2000, top_p=1.0, temperature=1.0)
SPECIAL_NAMES = dict(bos_id="<s>", boi_id="<racm3:break>", eoi_id="<eoss>", newline_id="<reserved08799>",
                     sep_id="<reserved08706>", size_base="<reserved08800>")


@dataclasses.dataclass(frozen=True)
class LuminaConfig(PipelineConfig):
    KIND = "lumina"

    gpt: GPTConfig  # cls_token_num is the prompt length of the last call (set per call)
    vq: VQConfig
    layout: str  # "lumina" | "anole"
    latent: tuple[int, int]  # (h, w) codes of the image
    code_bpe: tuple[int, ...]  # BPE id of each VQGAN code
    bos_id: int
    boi_id: int
    eoi_id: int
    newline_id: int
    sep_id: int
    size_base: int  # id of <reserved08800>: size token n is size_base + n
    pad_id: int  # left padding of prompts (masked; any id)
    max_positions: int  # LLM context: prompt + image tokens must fit

    def __post_init__(self):
        object.__setattr__(self, "latent", tuple(int(x) for x in self.latent))
        object.__setattr__(self, "code_bpe", tuple(int(x) for x in self.code_bpe))
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if len(self.code_bpe) != self.vq.codebook_size:
            raise ValueError(f"{len(self.code_bpe)} image tokens for a codebook of {self.vq.codebook_size}")

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.latent[0] * self.vq.downsample, self.latent[1] * self.vq.downsample

    def image_prefix(self) -> list[int]:
        """Tokens between the prompt and the first code (deterministic for the checkpoint's size)."""
        if self.layout == "anole":
            return [self.boi_id]
        return [self.boi_id, self.size_base + self.latent[0] // 2, self.size_base + self.latent[1] // 2]


def make_config(gpt: GPTConfig, vq: VQConfig, vocabulary: dict, latent: tuple[int, int], layout: str,
                max_positions: int) -> LuminaConfig:
    """The pipeline config of a Chameleon-family LLM (``sjd_jax.convert.chameleon.chameleon_config``) and
    its VQGAN, for images of ``latent = (h, w)`` codes; special ids read from ``vocabulary``
    (token name -> id, e.g. the HF config's ``vocabulary_map``)."""
    h, w = (int(x) for x in latent)
    if layout == "lumina" and (h % 2 or w % 2 or min(h, w) < 2):
        raise ValueError(f"Lumina-mGPT latent sizes are even (pixels multiples of 32 with Chameleon's VQGAN), "
                         f"got {h}x{w} codes")
    missing = [n for k, n in SPECIAL_NAMES.items() if n not in vocabulary
               and (layout == "lumina" or k in ("bos_id", "boi_id", "eoi_id"))]
    if missing:
        raise ValueError(f"the vocabulary lacks {missing}: not a Chameleon tokenizer/vocabulary_map")
    ids = {k: int(vocabulary.get(n, -1)) for k, n in SPECIAL_NAMES.items()}
    if layout == "lumina":
        for n in {h // 2, w // 2}:
            if vocabulary.get(f"<reserved0{8800 + n}>") != ids["size_base"] + n:
                raise ValueError(f"size token <reserved0{8800 + n}> is not <reserved08800> + {n} in this vocabulary")
    table = code_to_bpe(vocabulary)
    lo, hi = int(table.min()), int(table.max()) + 1
    if hi - lo != table.size:
        raise ValueError(f"image tokens are not one contiguous id range ({table.size} codes in ids {lo}..{hi - 1})")
    if table.size != vq.codebook_size:
        raise ValueError(f"{table.size} image tokens in the vocabulary but the VQGAN has {vq.codebook_size} codes")
    grid = (h, w + 1) if layout == "lumina" else (h, w)
    gpt = gpt.replace(grid_size=grid, image_token_range=(lo, hi), cls_token_num=4,  # set per call
                      row_end_token=ids["newline_id"] if layout == "lumina" else None,
                      cfg_uncond_suffix=3 if layout == "lumina" else 1)
    pad = int(vocabulary.get("<pad>", ids["bos_id"]))
    return LuminaConfig(gpt=gpt, vq=vq, layout=layout, latent=(h, w), code_bpe=tuple(table.tolist()),
                        pad_id=pad, max_positions=int(max_positions), **ids)


def prompt_ids(tokenizer, config: LuminaConfig, text: str, template: bool = True) -> list[int]:
    """One prompt's ids: ``[BOS] + tokens(templated text) + [<reserved08706>] + image prefix``
    (Anole: ``[BOS] + tokens(text) + [<racm3:break>]``)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"prompt must be a non-empty string, got {text!r}")
    H, W = config.image_size
    if config.layout == "lumina" and template:
        text = PROMPT_TEMPLATE.format(width=W, height=H, prompt=text)
    ids = list(tokenizer.encode(text).ids)
    if not ids or ids[0] != config.bos_id:
        ids = [config.bos_id, *ids]
    sep = [config.sep_id] if config.layout == "lumina" else []
    return [*ids, *sep, *config.image_prefix()]


def defaults(config: LuminaConfig) -> dict:
    """``DEFAULTS`` with image top-k capped at the number of image codes (tiny test models)."""
    return {**DEFAULTS, "top_k": min(DEFAULTS["top_k"], len(config.code_bpe))}


def generate_tokens(params, config: LuminaConfig, prompts: Prompt, key, mesh=None, **sampling):
    """Image-span tokens ``[B, rows * (w + 1)]`` (Lumina: newline columns included) for padded
    prompts; ``sampling`` as in ``sjd_jax.generate``, defaults ``defaults(config)``."""
    from sjd_jax.tuning.auto import generate  # (method/window "auto": the pipelines' default)

    for k, v in defaults(config).items():
        sampling.setdefault(k, v)
    gpt = config.with_prompt_length(prompts.ids.shape[1])
    return generate(params["gpt"], gpt, prompts, key, mesh=mesh, **sampling)


def codes_of(config: LuminaConfig, tokens) -> np.ndarray:
    """Sampler tokens -> VQGAN codes ``[B, h * w]`` (row ends dropped, BPE ids mapped by name)."""
    tokens = np.asarray(tokens)
    if config.layout == "lumina":
        tokens = strip_row_ends(tokens, config.gpt.grid_size)
    return bpe_to_code(tokens, np.asarray(config.code_bpe))


def decode_images(params, config: LuminaConfig, tokens) -> np.ndarray:
    """Sampler tokens ``[B, N]`` -> uint8 images ``[B, H, W, 3]``; as Lumina's decoder: clamp to
    [-1, 1], ``(x + 1) / 2 * 255`` truncated (not rounded)."""
    from sjd_jax.core.vq import decode_tokens

    x = decode_tokens(params["vq"], config.vq, jnp.asarray(codes_of(config, tokens)), config.latent)
    x = np.clip(np.asarray(x, np.float32), -1.0, 1.0)
    return ((x + 1.0) / 2.0 * 255.0).astype(np.uint8)


def text_to_image(params, config: LuminaConfig, tokenizer, texts: list[str], key, *, template: bool = True,
                  mesh=None, **sampling):
    """Prompts -> (uint8 images ``[B, H, W, 3]``, the sampler's ``GenerateOutput``)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    prompts = pad_prompts(config, [prompt_ids(tokenizer, config, t, template) for t in texts])
    out = generate_tokens(params, config, prompts, key, mesh=mesh, **sampling)
    from sjd_jax.parallel.distributed import gather_output

    out = gather_output(out)
    return decode_images(params, config, out.tokens), out


def abstract_lumina_params(config: LuminaConfig):
    from sjd_jax.core.model import abstract_params
    from sjd_jax.core.vq import abstract_vq_params

    return {"gpt": abstract_params(config.gpt), "vq": abstract_vq_params(config.vq)}


# ---- the family entries: checkpoint kind "lumina" (both layouts), generate --model ---------------

def load_model(family, model: str, ckpt, *, mesh=None, param_dtype: str = "auto"):
    """``pipelines.TextModel`` of a converted Lumina-mGPT / Anole checkpoint directory; the model's
    ``layout`` and ``size`` (pixels, or None: any) must be the checkpoint's."""
    from sjd_jax.io import checkpoint
    from sjd_jax.core import precision
    from sjd_jax.families.pipelines import TextModel

    spec = family.models[model]
    checkpoint.require_kind(ckpt, "lumina", family.name)
    config, params = checkpoint.load(ckpt, mesh=mesh, param_dtype=param_dtype)
    if config.layout != spec["layout"]:
        raise ValueError(f"{ckpt} is a {config.layout} checkpoint; --model {model} needs "
                         f"sjd-jax convert --family {family.name}")
    if spec["size"] is not None and config.image_size != (spec["size"], spec["size"]):
        H, W = config.image_size
        raise ValueError(f"{ckpt} was converted for {H}x{W} px; --model {model} is {spec['size']} px "
                         f"(convert again with --image-size {spec['size']}, or pick the matching --model)")
    tok = load_tokenizer(ckpt)

    def run(texts, key, **sampling):
        return text_to_image(params, config, tok, texts, key, mesh=mesh, **sampling)

    return TextModel(model, family.name, defaults(config), config.gpt, config.image_size, None, run,
                     precision.dtype_of(params["gpt"]), params["gpt"])


# Chameleon's VQGAN (not in the Lumina / Anole-hf repos): Meta's release, mirrored with Anole's weights
VQGAN = "hub:GAIR/Anole-7b-v0.1:tokenizer/vqgan.ckpt"
# tokenizer.json: the 768 px repo ships one (the same Chameleon tokenizer for every size)
TOKENIZER = "hub:Alpha-VLLM/Lumina-mGPT-7B-768:tokenizer.json"

register(Family("lumina-mgpt", "text", kinds=(Kind("lumina", LuminaConfig, abstract_lumina_params),),
                models={f"lumina-mgpt-7b-{px}": dict(layout="lumina", size=px) for px in (512, 768, 1024)},
                defaults=DEFAULTS, load=load_model, load_options=("param_dtype",),
                converters={"lumina-mgpt": "sjd_jax.convert.cli:convert_lumina_mgpt"},
                pretrained=tuple(Pretrained(f"lumina-mgpt-7b-{px}", f"lumina-mgpt-7b-{px}",
                                            (HubStep("lumina-mgpt", f"Alpha-VLLM/Lumina-mGPT-7B-{px}", dtype="bfloat16",
                                                     flags={"--vqgan": VQGAN, "--tokenizer": TOKENIZER,
                                                            "--image-size": str(px)}),))
                                 for px in (512, 768, 1024))))
# Anole: Chameleon's own image span, the same checkpoint kind (written with layout "anole")
register(Family("anole", "text", models={"anole-7b": dict(layout="anole", size=None)}, defaults=DEFAULTS,
                load=load_model, load_options=("param_dtype",),
                converters={"anole": "sjd_jax.convert.cli:convert_anole"},
                pretrained=(Pretrained("anole-7b", "anole-7b", (HubStep("anole", "leloy/Anole-7b-v0.1-hf", dtype="bfloat16",
                                                                        flags={"--vqgan": VQGAN}),)),)))

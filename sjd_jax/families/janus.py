"""Janus-Pro text-to-image generation: prompt text -> image tokens (SJD or any sampler) -> pixels.

A converted Janus-Pro checkpoint (``sjd-jax convert --family janus-pro``) holds the generation path
only: the Llama LLM with its text embeddings, the image-token embedding (``generation_embeddings``
followed by ``generation_aligner``, folded into one ``[K, dim]`` table at conversion: the aligner is
a per-token function of the id), the generation head and the VQ-16 decoder, plus the checkpoint's
``tokenizer.json``. CFG is Janus': raw-logit guidance against the same prompt with every token but
BOS and the image-start token replaced by the pad token.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import Prompt
from sjd_jax.core.vq import VQConfig
from sjd_jax.families import Family, HubStep, Kind, Pretrained, register
from sjd_jax.families.prompting import PipelineConfig, load_tokenizer, pad_prompts

# DeepSeek's chat format for image generation (Janus-Pro, empty system prompt); the image-start
# token is appended by id, BOS by the tokenizer (or here, if its post-processor does not add it).
PROMPT_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"


@dataclasses.dataclass(frozen=True)
class JanusConfig(PipelineConfig):
    KIND = "janus"

    gpt: GPTConfig  # cls_token_num is the prompt length of the last call (set per call)
    vq: VQConfig
    bos_id: int
    boi_id: int  # <begin_of_image>
    pad_id: int
    max_positions: int  # LLM context: prompt + image tokens must fit

    @property
    def image_size(self) -> int:
        return self.gpt.grid_size[0] * self.vq.downsample


def prompt_ids(tokenizer, config: JanusConfig, text: str, template: bool = True) -> list[int]:
    """Token ids of one prompt: [BOS] + tokens of the (templated) text + [BOI]."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"prompt must be a non-empty string, got {text!r}")
    ids = tokenizer.encode(PROMPT_TEMPLATE.format(prompt=text) if template else text).ids
    if not ids or ids[0] != config.bos_id:
        ids = [config.bos_id, *ids]
    return [*ids, config.boi_id]


def generate_tokens(params, config: JanusConfig, prompts: Prompt, key, **sampling):
    """Image tokens for padded prompts; ``sampling`` as in ``sjd_jax.generate`` (method, window,
    cfg_scale (Janus default 5), temperature, top_k, top_p)."""
    from sjd_jax.tuning.auto import generate  # (method/window "auto": the pipelines' default)

    sampling.setdefault("cfg_scale", 5.0)
    gpt = config.with_prompt_length(prompts.ids.shape[1])
    return generate(params["gpt"], gpt, prompts, key, **sampling)


def decode_images(params, config: JanusConfig, tokens) -> np.ndarray:
    """``tokens [B, N]`` -> uint8 images ``[B, H, W, 3]``."""
    from sjd_jax.core.vq import decode_tokens, to_uint8

    return np.asarray(to_uint8(decode_tokens(params["vq"], config.vq, jnp.asarray(tokens),
                                             config.gpt.grid_size)))


def text_to_image(params, config: JanusConfig, tokenizer, texts: list[str], key, *,
                  template: bool = True, **sampling):
    """Prompts -> (uint8 images ``[B, H, W, 3]``, the sampler's ``GenerateOutput`` with host arrays;
    ``mesh=`` in ``sampling`` runs the LLM on it)."""
    from sjd_jax.parallel.distributed import gather_output

    prompts = pad_prompts(config, [prompt_ids(tokenizer, config, t, template) for t in texts])
    out = gather_output(generate_tokens(params, config, prompts, key, **sampling))
    return decode_images(params, config, out.tokens), out


def abstract_janus_params(config: JanusConfig):
    from sjd_jax.core.model import abstract_params
    from sjd_jax.core.vq import abstract_vq_params

    return {"gpt": abstract_params(config.gpt), "vq": abstract_vq_params(config.vq)}


# ---- the family entry: checkpoint kind "janus", generate --model janus-pro-{1b,7b} ---------------

DEFAULTS = dict(cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0)


def load_model(family, model: str, ckpt, *, mesh=None, param_dtype: str = "auto"):
    """``pipelines.TextModel`` of a converted Janus-Pro checkpoint directory."""
    from sjd_jax.io import checkpoint
    from sjd_jax.core import precision
    from sjd_jax.families.pipelines import TextModel
    from sjd_jax.core.vq import codebook_vectors

    checkpoint.require_kind(ckpt, "janus", family.name)
    config, params = checkpoint.load(ckpt, mesh=mesh, param_dtype=param_dtype)
    tok = load_tokenizer(ckpt)

    def run(texts, key, **sampling):
        return text_to_image(params, config, tok, texts, key, mesh=mesh, **sampling)

    return TextModel(model, family.name, dict(family.defaults), config.gpt, (config.image_size, config.image_size),
                     codebook_vectors(params["vq"], config.vq), run, precision.dtype_of(params["gpt"]),
                     params["gpt"])


register(Family("janus-pro", "text", kinds=(Kind("janus", JanusConfig, abstract_janus_params),),
                models={"janus-pro-1b": {}, "janus-pro-7b": {}}, defaults=DEFAULTS, load=load_model,
                load_options=("param_dtype",),
                converters={"janus-pro": "sjd_jax.convert.cli:convert_janus"},
                pretrained=tuple(Pretrained(f"janus-pro-{s}", f"janus-pro-{s}",  # released in bfloat16
                                            (HubStep("janus-pro", f"deepseek-community/Janus-Pro-{s.upper()}",
                                                     dtype="bfloat16"),)) for s in ("1b", "7b"))))

__all__ = ["DEFAULTS", "JanusConfig", "PROMPT_TEMPLATE", "abstract_janus_params", "decode_images",
           "generate_tokens", "load_model", "load_tokenizer", "pad_prompts", "prompt_ids", "text_to_image"]

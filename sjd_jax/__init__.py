"""sjd-jax: Speculative Jacobi Decoding for auto-regressive text-to-image models in JAX/Flax."""

from .cache import KVCache, init_cache
from .checkpoint import load, save
from .config import GPTConfig
from .model import (Caption, Prompt, abstract_params, embed_cond, embed_tokens, forward, init_params,
                    param_count, teacher_forced_logits)
from .sampling import GenerateOutput, SamplerSpec, generate
from . import sharding  # noqa: E402  (sjd_jax.sharding.make_mesh, RULES)

__version__ = "0.1.0"

__all__ = [
    "Caption", "GPTConfig", "Prompt", "GenerateOutput", "KVCache", "SamplerSpec", "abstract_params",
    "embed_cond", "embed_tokens", "forward", "generate", "init_cache", "init_params",
    "load", "param_count", "save", "sharding", "teacher_forced_logits",
]

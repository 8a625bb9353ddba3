"""sjd-jax: Speculative Jacobi Decoding for auto-regressive text-to-image models in JAX/Flax."""

from .cache import KVCache, init_cache
from .checkpoint import load, save
from .config import GPTConfig
from .model import (Caption, Prompt, abstract_params, embed_cond, embed_tokens, forward, init_params,
                    param_count, teacher_forced_logits)
from .sampling import GenerateOutput, SamplerOptions, SamplerSpec, generate
from . import sharding  # noqa: E402  (sjd_jax.sharding.make_mesh, RULES)

__version__ = "0.1.0"

__all__ = [
    "Caption", "GPTConfig", "Prompt", "GenerateOutput", "KVCache", "SamplerOptions", "SamplerSpec", "abstract_params",
    "embed_cond", "embed_tokens", "forward", "generate", "init_cache", "init_params",
    "load", "param_count", "save", "sharding", "teacher_forced_logits",
]

# Modules that moved into sjd_jax.families: ``from sjd_jax import janus`` keeps working.
_MOVED = ("emu3", "janus", "llamagen_t2i", "lumina", "prompting")


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return importlib.import_module(f"{__name__}.families.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

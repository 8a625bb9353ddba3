"""sjd-jax: Speculative Jacobi Decoding for auto-regressive text-to-image models in JAX/Flax.

The package by role: ``core`` (the model), ``sampling`` (the samplers), ``families`` (model families
as plug-ins), ``parallel`` (meshes, multi-host, memory), ``io`` (files and checkpoints), ``cli``
(the ``sjd-jax`` commands), ``fashion`` (the bundled model's trainer and evaluator).
"""

from sjd_jax.core.cache import KVCache, init_cache
from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import (Caption, Prompt, abstract_params, embed_cond, embed_tokens, forward, init_params,
                                param_count, teacher_forced_logits)
from sjd_jax.io.checkpoint import load, save
from sjd_jax.families.loader import from_pretrained
from sjd_jax.parallel import sharding  # sjd_jax.sharding.make_mesh, RULES
from sjd_jax.sampling import GenerateOutput, SamplerOptions, SamplerSpec
from sjd_jax.tuning.auto import generate, generate_stream  # the samplers, plus method/window "auto"

__version__ = "0.1.0"

__all__ = [
    "Caption", "GPTConfig", "Prompt", "GenerateOutput", "KVCache", "SamplerOptions", "SamplerSpec", "abstract_params",
    "embed_cond", "embed_tokens", "forward", "from_pretrained", "generate", "generate_stream", "init_cache", "init_params",
    "load", "param_count", "save", "sharding", "teacher_forced_logits",
]

# Modules by their names before the package was laid out by role: ``from sjd_jax import
# checkpoint``, ``sjd_jax.exactness.check`` and ``from sjd_jax.config import GPTConfig`` keep working
# (loaded on first use).
MOVED = {
    "atomic": "io.atomic", "cache": "core.cache", "checkpoint": "io.checkpoint", "config": "core.config",
    "distributed": "parallel.distributed", "emu3": "families.emu3", "exactness": "sampling.exactness",
    "imaging": "io.imaging", "integrity": "io.integrity", "janus": "families.janus",
    "llamagen_t2i": "families.llamagen_t2i", "lumina": "families.lumina", "memory": "parallel.memory",
    "model": "core.model", "pipelines": "families.pipelines", "presets": "families.presets",
    "prompting": "families.prompting", "rope": "core.rope", "streaming": "io.streaming", "text": "core.text",
    "vq": "core.vq",
}


def __getattr__(name: str):
    if name in MOVED:
        import importlib

        return importlib.import_module(f"{__name__}.{MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _install_old_names() -> None:
    """``import sjd_jax.exactness`` / ``from sjd_jax.vq.model import ...``: an old dotted name is
    the new module itself (one object, registered under both names)."""
    import importlib
    import importlib.abc
    import importlib.util
    import sys

    class OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):
            parts = fullname.split(".")
            if len(parts) > 1 and parts[0] == __name__ and parts[1] in MOVED:
                return importlib.util.spec_from_loader(fullname, self)
            return None

        def create_module(self, spec):
            parts = spec.name.split(".")
            return importlib.import_module(".".join([__name__, MOVED[parts[1]], *parts[2:]]))

        def exec_module(self, module):
            pass

    if not any(type(f).__name__ == "OldNames" for f in sys.meta_path):
        sys.meta_path.insert(0, OldNames())  # before the path finder: never a second copy of a module


_install_old_names()

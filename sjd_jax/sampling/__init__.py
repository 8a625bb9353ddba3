"""Samplers: plain AR, greedy Jacobi, SJD and its lossless successors in one jit-compiled loop.

``SamplerOptions`` (what to run) + ``Knobs`` (traced numbers) -> ``resolve`` -> ``SamplerSpec``
(static, validated) -> ``compile`` (executables) -> ``GenerateOutput``; ``generate`` does all of it.
``generate_stream`` samples an iterable of conditions in batches (continuous batching by default).
"""

from sjd_jax.sampling.batching import Item, ScheduleStats, generate_stream
from sjd_jax.sampling.compiled import Executables, compile  # noqa: A004
from sjd_jax.sampling.drafting import DRAFT_INITS, DraftContext
from sjd_jax.sampling.generate import generate
from sjd_jax.sampling.options import Knobs, SamplerOptions, SamplerSpec, resolve
from sjd_jax.sampling.processors import filter_logits, guided_logits, target_probs
from sjd_jax.sampling.state import GenerateOutput, SamplerState
from sjd_jax.sampling.stats import acceptance_stats
from sjd_jax.sampling.verify import Rules

__all__ = ["DRAFT_INITS", "DraftContext", "Executables", "GenerateOutput", "Item", "Knobs", "Rules", "SamplerOptions",
           "SamplerSpec", "SamplerState", "ScheduleStats", "acceptance_stats", "compile", "filter_logits", "generate",
           "generate_stream", "guided_logits", "resolve", "target_probs"]

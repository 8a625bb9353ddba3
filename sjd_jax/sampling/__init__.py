"""Samplers: plain AR, greedy Jacobi, SJD and its lossless successors in one jit-compiled loop.

``SamplerOptions`` (what to run) + ``Knobs`` (traced numbers) -> ``resolve`` -> ``SamplerSpec``
(static, validated) -> ``compile`` (executables) -> ``GenerateOutput``; ``generate`` does all of it.
"""

from .compiled import Executables, compile  # noqa: A004
from .drafting import DRAFT_INITS, DraftContext
from .generate import generate
from .options import Knobs, SamplerOptions, SamplerSpec, resolve
from .processors import filter_logits, guided_logits, target_probs
from .state import GenerateOutput, SamplerState
from .stats import acceptance_stats
from .verify import Rules

__all__ = ["DRAFT_INITS", "DraftContext", "Executables", "GenerateOutput", "Knobs", "Rules", "SamplerOptions",
           "SamplerSpec", "SamplerState", "acceptance_stats", "compile", "filter_logits", "generate",
           "guided_logits", "resolve", "target_probs"]

"""Samplers: plain AR, greedy Jacobi and Speculative Jacobi Decoding in one jit-compiled loop."""

from .generate import generate
from .loop import DraftContext, GenerateOutput, SamplerSpec
from .processors import filter_logits, guided_logits, target_probs

__all__ = ["DraftContext", "generate", "GenerateOutput", "SamplerSpec", "filter_logits", "guided_logits", "target_probs"]

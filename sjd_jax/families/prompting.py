"""Pieces shared by the prompt-token pipelines (Janus-Pro, Lumina-mGPT / Anole, Emu3): their config
base (serialisation, per-call prompt length), left padding of prompt id rows and the checkpoint's
tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig, from_dict
from sjd_jax.core.model import Prompt


class PipelineConfig:
    """Base of a frozen pipeline-config dataclass with fields ``gpt`` (``cls_token_num`` is the
    padded prompt length of the last call), ``vq``, ``pad_id`` and ``max_positions``."""

    KIND = ""  # checkpoint kind, for messages

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """From a checkpoint's config.json entry: fields type-checked, ``gpt`` and ``vq`` read as
        their annotated config classes (``config.from_dict``)."""
        return from_dict(cls, d, cls.KIND)

    def with_prompt_length(self, length: int) -> GPTConfig:
        """The GPT config for prompts padded to ``length`` tokens (one compile per length)."""
        return self.gpt.replace(cls_token_num=int(length))


def pad_rows(config: PipelineConfig, rows: list[list[int]], length: int | None = None,
             multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id rows to ``length`` (default: the longest, rounded up to ``multiple`` so that
    nearby prompt lengths share one compile) -> (ids [R, L] int32, mask [R, L] bool). Padding never
    changes the result (masked keys, RoPE positions that count real tokens only)."""
    if not rows:
        raise ValueError("no prompts given")
    longest = max(len(r) for r in rows)
    if length is None:
        length = -(-longest // multiple) * multiple
    N = config.gpt.num_image_tokens
    if longest > length or longest + N > config.max_positions:
        raise ValueError(f"prompt too long: {longest} tokens + {N} image tokens exceed "
                         f"{'the padded length ' + str(length) if longest > length else 'the model context ' + str(config.max_positions)}")
    length = min(length, config.max_positions - N)
    ids = np.full((len(rows), length), config.pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for b, r in enumerate(rows):
        ids[b, length - len(r):] = r
        mask[b, length - len(r):] = True
    return ids, mask


def pad_prompts(config: PipelineConfig, rows: list[list[int]], length: int | None = None,
                multiple: int = 16) -> Prompt:
    """``pad_rows`` as the sampler's ``Prompt(ids [B, L], mask [B, L])``."""
    ids, mask = pad_rows(config, rows, length, multiple)
    return Prompt(jnp.asarray(ids), jnp.asarray(mask))


def load_tokenizer(path):
    """The ``tokenizers.Tokenizer`` of a converted checkpoint directory (or a tokenizer.json file)."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{file}: no tokenizer.json (convert with the checkpoint's tokenizer.json "
                         "beside its weights, or tokenize yourself and pass ids)")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:
        raise ValueError(f"{file}: not a valid tokenizers file ({e})") from e

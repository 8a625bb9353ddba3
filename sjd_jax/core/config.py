"""Model configuration: one frozen (hashable) dataclass, usable as a static jit argument."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Literal

# Sizes past these are refused: nothing real comes near, and a config that does (a damaged or
# hand-edited config.json) would otherwise allocate by them before any memory check can run.
MAX_IMAGE_TOKENS = 1 << 20  # image tokens of one image (Emu3 at 720 px: 8190)
MAX_VOCAB = 1 << 26


def check_fields(cls, d: dict, what: str) -> None:
    """A config dict read from disk has only ``cls``'s dataclass fields (else: a newer writer)."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} config field(s) {unknown}: written by a newer sjd-jax?")


def from_dict(cls, d, what: str):
    """The config dataclass ``cls`` from a dict read from disk (a checkpoint's config.json): unknown
    fields, a value of the wrong JSON type (``"dim": "768"``), a non-finite float and every range
    check of ``cls`` are one ``ValueError`` naming the field. Nested config dataclasses are read
    the same way; JSON lists become tuples."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} config must be a JSON object, got a {type(d).__name__}")
    check_fields(cls, d, what)
    hints = typing.get_type_hints(cls)
    kw = {k: _typed(hints[k], v, what, k) for k, v in d.items()}
    try:
        return cls(**kw)
    except TypeError as e:  # a required field is missing
        raise ValueError(f"{what} config: {e}") from None


def _typed(tp, v, what: str, key: str):
    """``v``, field ``key`` of a ``what`` config, checked against the annotation ``tp`` (and
    converted: lists -> tuples, ints -> floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _typed(a, v, what, key)
            except ValueError:
                continue
    elif origin is Literal:
        if v in args:
            return v
    elif origin is tuple or tp is tuple:
        try:
            if isinstance(v, (list, tuple)):
                if len(args) == 2 and args[1] is Ellipsis:
                    return tuple(_typed(args[0], x, what, key) for x in v)
                if not args:
                    return tuple(v)
                if len(v) == len(args):
                    return tuple(_typed(a, x, what, key) for a, x in zip(args, v))
        except ValueError:
            pass  # an item of the wrong type: the message names the list's type
    elif dataclasses.is_dataclass(tp):
        return from_dict(tp, v, f"{what} {key}")
    elif tp is bool:
        if isinstance(v, bool):
            return v
    elif tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    elif tp is str:
        if isinstance(v, str):
            return v
    else:  # Any, callables, dicts: no narrower check
        return v
    raise ValueError(f"{what} config field {key!r} must be {_type_name(tp)}, got {v!r}")


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        if args[-1:] == (Ellipsis,):
            return f"a list whose items are each {_type_name(args[0])}"
        return f"a list of {len(args)} items, each " + " / ".join(sorted({_type_name(a) for a in args}))
    if dataclasses.is_dataclass(tp):
        return "a JSON object"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a finite number",
            str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of k that is >= n."""
    return n if n % k == 0 else n + k - (n % k)


# LlamaGen GPT sizes: (dim, n_layer, n_head). head_dim = dim / n_head (100 for 3B).
_LLAMAGEN_SIZES = {
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1280, 36, 20),
    "XXL": (1536, 48, 24),
    "3B": (3200, 24, 32),
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """A Llama-family decoder over a prefix of condition positions and an image-token grid.

    Sequence layout (absolute positions): ``[0, C)`` condition positions (class embedding, caption
    features or, for Janus-style models, prompt text tokens), then ``[C, C + N)`` image tokens,
    ``N = grid_size[0] * grid_size[1]``. The output at position ``C - 1 + i`` predicts image token i.
    """

    vocab_size: int = 16384
    grid_size: tuple[int, int] = (16, 16)
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: multi-head attention (n_kv_head = n_head)
    num_classes: int | None = 1000  # class-conditional; id `num_classes` is the CFG null class
    # (ignored when caption_dim is set)
    cls_token_num: int = 1
    caption_dim: int | None = None  # text-conditional (caption features) when set
    # Prompt-token-conditional (Janus): the condition is C text-token ids embedded by a text table of
    # this size. The unconditional CFG prompt replaces every token except `cfg_keep_ids` by `cfg_pad_id`.
    text_vocab_size: int | None = None
    # Chameleon-style: prompt and image tokens share one vocabulary and one embedding table
    # (``tok_embeddings``; then text_vocab_size must equal vocab_size and there is no text table)
    shared_embeddings: bool = False
    cfg_pad_id: int = 0
    cfg_keep_ids: tuple[int, ...] = ()
    # Lumina-mGPT's CFG instead: the unconditional branch is only the last `cfg_uncond_suffix` prompt
    # tokens (its image start + size tokens), a separate sequence with positions from 0 (the rest of
    # the prompt is masked out of those rows; with 1D RoPE positions count real tokens only).
    cfg_uncond_suffix: int | None = None
    # Emu3's CFG instead: the condition is ids [B, 2, C], each prompt with its own negative prompt
    # (both left-padded to C); the unconditional rows run the negative prompt.
    cfg_negative_prompt: bool = False
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    intermediate_size: int | None = None  # explicit SwiGLU width (HF Llama); overrides the rule above
    head_hidden: int | None = None  # Janus generation head: Linear(dim->head_hidden)+GELU+Linear, biased
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: Literal["2d", "1d"] = "2d"
    # LlamaGen rotates interleaved pairs (x[2i], x[2i+1]); HF Llama-style checkpoints rotate halves.
    rope_interleaved: bool = True
    qk_norm: bool = False  # Chameleon-style LayerNorm over head_dim on q and k (before RoPE)
    # its epsilon: HF's ChameleonLayerNorm always uses 1e-5, whatever the config's rms_norm_eps
    qk_norm_eps: float = 1e-5
    # per-head width when it is not dim / n_head (HF Llama-family ``head_dim``): q/k/v project to
    # n_head * attn_head_dim features and the output projection maps those back to dim
    attn_head_dim: int | None = None
    # Structure tokens (Lumina-mGPT / Emu3 layouts): the last column of every grid row is this token,
    # forced (the sampler drafts it deterministically, so it is always accepted). grid_size then
    # counts it: (rows, codes per row + 1).
    row_end_token: int | None = None
    # Token ids [lo, hi) allowed at the free image positions (e.g. Chameleon's image codes); the rest
    # of the vocabulary gets probability 0 there (applied after CFG, before temperature/top-k/top-p).
    image_token_range: tuple[int, int] | None = None
    # compute dtype; checkpoint.load makes it bfloat16 when it restores bfloat16 params (core.precision)
    dtype: str = "float32"

    def __post_init__(self):
        if isinstance(self.grid_size, int):
            object.__setattr__(self, "grid_size", (self.grid_size, self.grid_size))
        else:
            object.__setattr__(self, "grid_size", tuple(int(g) for g in self.grid_size))
        object.__setattr__(self, "cfg_keep_ids", tuple(int(i) for i in self.cfg_keep_ids))
        if self.caption_dim is not None or self.text_vocab_size is not None:
            object.__setattr__(self, "num_classes", None)  # no class table (null = uncond condition)
        problems = []
        if self.caption_dim is not None and self.text_vocab_size is not None:
            problems.append("set at most one of caption_dim and text_vocab_size")
        if self.shared_embeddings and self.text_vocab_size != self.vocab_size:
            problems.append("shared_embeddings needs text_vocab_size == vocab_size (one vocabulary)")
        if min(self.dim, self.n_head, self.kv_heads, self.attn_head_dim or 1) < 1:
            # the divisibility checks below would divide by zero
            raise ValueError(f"invalid GPTConfig: dim {self.dim}, n_head {self.n_head}, n_kv_head "
                             f"{self.n_kv_head} and attn_head_dim {self.attn_head_dim} must be positive")
        if self.attn_head_dim is None and self.dim % self.n_head:
            problems.append(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            problems.append(f"n_head {self.n_head} is not divisible by n_kv_head {self.kv_heads}")
        if self.head_dim % (4 if self.rope_type == "2d" else 2):
            problems.append(f"head_dim {self.head_dim} must be divisible by "
                            f"{4 if self.rope_type == '2d' else 2} for {self.rope_type} RoPE")
        if not self.qk_norm_eps > 0:
            problems.append(f"qk_norm_eps {self.qk_norm_eps} must be positive")
        if self.cond_kind == "class" and self.num_classes is None:
            problems.append("set num_classes (class-conditional), caption_dim (caption features) "
                            "or text_vocab_size (prompt tokens)")
        if self.cond_kind == "class" and self.cls_token_num != 1:
            problems.append("class-conditional models use exactly one condition token (cls_token_num=1)")
        if min(self.grid_size) < 1 or self.vocab_size < 2 or self.cls_token_num < 1:
            problems.append("grid_size, vocab_size and cls_token_num must be positive")
        elif self.num_image_tokens > MAX_IMAGE_TOKENS or self.vocab_size > MAX_VOCAB:
            problems.append(f"grid {self.grid_size} ({self.num_image_tokens} image tokens) or vocab_size "
                            f"{self.vocab_size} beyond any model (at most {MAX_IMAGE_TOKENS} tokens, "
                            f"{MAX_VOCAB} ids)")
        sizes = dict(n_layer=self.n_layer, multiple_of=self.multiple_of, num_classes=self.num_classes,
                     caption_dim=self.caption_dim, text_vocab_size=self.text_vocab_size,
                     intermediate_size=self.intermediate_size, head_hidden=self.head_hidden)
        bad = [k for k, v in sizes.items() if v is not None and v < 1]
        if bad:
            problems.append(f"{', '.join(bad)} must be positive")
        if not (self.norm_eps > 0 and self.rope_theta > 0 and (self.ffn_dim_multiplier or 1) > 0):
            problems.append("norm_eps, rope_theta and ffn_dim_multiplier must be positive")
        if self.cfg_uncond_suffix is not None and not (
                self.cond_kind == "tokens" and 1 <= self.cfg_uncond_suffix <= self.cls_token_num
                and self.rope_type == "1d"):
            problems.append("cfg_uncond_suffix needs a prompt-token model with 1d RoPE and "
                            "1 <= cfg_uncond_suffix <= cls_token_num")
        if self.cfg_negative_prompt and (self.cond_kind != "tokens" or self.cfg_uncond_suffix is not None):
            problems.append("cfg_negative_prompt needs a prompt-token model (and excludes cfg_uncond_suffix)")
        if self.row_end_token is not None and not (0 <= self.row_end_token < self.vocab_size
                                                   and self.grid_size[1] >= 2):
            problems.append("row_end_token must be a token id and rows need >= 2 columns")
        if self.image_token_range is not None:
            object.__setattr__(self, "image_token_range", tuple(int(x) for x in self.image_token_range))
            lo, hi = self.image_token_range
            if not 0 <= lo < hi <= self.vocab_size:
                problems.append(f"image_token_range {self.image_token_range} must satisfy 0 <= lo < hi <= vocab_size")
        if self.rope_type not in ("2d", "1d"):
            problems.append(f"unknown rope_type {self.rope_type!r}")
        if problems:
            raise ValueError("invalid GPTConfig: " + "; ".join(problems))

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head if self.attn_head_dim is None else self.attn_head_dim

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def seq_len(self) -> int:
        """Positions the KV cache must hold: C condition + N - 1 fed image tokens."""
        return self.cls_token_num + self.num_image_tokens - 1

    def forced_tokens(self):
        """``[N]`` int32 numpy: the forced token of each image position, -1 where sampled."""
        import numpy as np

        forced = np.full(self.grid_size, -1, np.int32)
        if self.row_end_token is not None:
            forced[:, -1] = self.row_end_token
        return forced.reshape(-1)

    def allowed_tokens(self):
        """``[V]`` bool numpy of the ids allowed at free positions, or None (all)."""
        import numpy as np

        if self.image_token_range is None:
            return None
        allowed = np.zeros(self.vocab_size, bool)
        allowed[self.image_token_range[0]:self.image_token_range[1]] = True
        return allowed

    @property
    def ffn_hidden(self) -> int:
        """LlamaGen's SwiGLU rule: int(2 * 4 * dim / 3), optionally scaled, rounded up to multiple_of."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def text_conditional(self) -> bool:
        """Conditioned on caption features (LlamaGen T2I)."""
        return self.caption_dim is not None

    @property
    def cond_kind(self) -> str:
        """"class" (ids [B]), "caption" (features [B, C, caption_dim]) or "tokens" (ids [B, C])."""
        if self.caption_dim is not None:
            return "caption"
        return "tokens" if self.text_vocab_size is not None else "class"

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def llamagen(cls, name: str, **overrides) -> "GPTConfig":
        """LlamaGen GPT presets: B, L, XL, XXL, 3B (``GPT-`` prefix optional).

        Defaults are the class-conditional 256 px models (16x16 grid, 1000 classes). For text-to-image
        pass ``caption_dim=2048, cls_token_num=120, num_classes=None`` (and ``grid_size=32`` at 512 px).
        """
        key = name.upper().removeprefix("GPT-")
        if key not in _LLAMAGEN_SIZES:
            raise ValueError(f"unknown LlamaGen preset {name!r}; choose one of "
                             f"{', '.join('GPT-' + k for k in _LLAMAGEN_SIZES)}")
        dim, n_layer, n_head = _LLAMAGEN_SIZES[key]
        if overrides.get("caption_dim") is not None:
            overrides.setdefault("num_classes", None)
            overrides.setdefault("cls_token_num", 120)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {', '.join(unknown)}")
        return cls(dim=dim, n_layer=n_layer, n_head=n_head, **overrides)

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

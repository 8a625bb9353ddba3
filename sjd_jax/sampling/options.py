"""What a sampler run is: the options a user chooses, the traced knobs, and ``resolve``.

* ``SamplerOptions`` — frozen and hashable: the method and how it drafts (window, coupling, init,
  tree, q storage, chunking, lantern, CFG on/off, research ``Rules``). Recipes return one.
* ``Knobs`` — a pytree of the numeric sampling arguments (cfg scale, temperature, top-k, top-p,
  lantern delta; and the progress listener's id), traced: changing a value never recompiles.
* ``resolve(config, options, knobs, ...)`` — the one place that validates every setting and derives
  what follows from them (ar means window 1, the automatic tree, the q-store capacity, the lantern
  table's k): a ``SamplerSpec``, the static key the loop is compiled for.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.struct
import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.sampling.drafting import DRAFT_INITS
from sjd_jax.sampling.qstore import q_capacity
from sjd_jax.sampling.verify import Rules

METHODS = ("ar", "jacobi", "sjd")
COUPLINGS = ("none", "gumbel", "maximal")
INITS = tuple(DRAFT_INITS)  # the built-in inits (plug-ins registered later are in DRAFT_INITS)
# 2^28 float32 = 1 GiB per temporary: one pass on an accelerator for Emu3 up to B * W = 1453
DEFAULT_CHUNK_ELEMENTS = 1 << 28


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """The sampler a user chooses (``sampling.loop`` explains each option; all are lossless except
    ``lantern``). ``tree`` is a (width, depth) pair or "auto" (``recipes.auto_tree`` of the window);
    ``ar`` ignores the window and every drafting option's default."""

    method: Literal["ar", "jacobi", "sjd"] = "sjd"
    window: int = 16
    coupling: Literal["none", "gumbel", "maximal"] = "none"
    init: str = "uniform"
    tree: Any = (1, 0)
    q_storage: Literal["auto", "dense", "compact"] = "auto"
    chunk_elements: int | None = None
    lantern: bool = False  # LOSSY relaxed acceptance; generate needs its neighbour table
    cfg: bool = True  # compute the unconditional rows (cfg_scale itself is a knob)
    rules: Rules = Rules()

    def replace(self, **changes) -> "SamplerOptions":
        return dataclasses.replace(self, **changes)


@flax.struct.dataclass
class Knobs:
    """The traced numeric sampling arguments, with fixed dtypes (so values never retrace)."""

    cfg_scale: Any
    temperature: Any
    top_k: Any
    top_p: Any
    lantern_delta: Any
    progress_id: Any  # which host callback progress reports reach (``progress.listening``)

    @classmethod
    def make(cls, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, lantern_delta=0.0, progress_id=0) -> "Knobs":
        return cls(cfg_scale=jnp.float32(cfg_scale), temperature=jnp.float32(temperature),
                   top_k=jnp.int32(top_k), top_p=jnp.float32(top_p), lantern_delta=jnp.float32(lantern_delta),
                   progress_id=jnp.int32(progress_id))


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Everything static about a sampler run, resolved and validated (hashable: one compile per spec
    and batch shape). Built by ``resolve`` only."""

    config: GPTConfig
    method: str = "sjd"
    window: int = 16  # forward positions per iteration (chain + tree side branches); 1 for ar
    cfg: bool = True
    progress: bool = False  # report (committed tokens, iteration) to the host after each iteration
    coupling: str = "none"
    init: str = "uniform"
    tree_width: int = 1  # K candidates for the window's first draft (1 = no tree)
    tree_depth: int = 0  # D tokens per side branch
    lantern_k: int = 0  # LOSSY relaxed acceptance over k latent neighbours (0 = off)
    # Draft distributions q: 0 = dense [..., V] rows; S > 0 = compact rows of S entries
    # (``qstore``; exact when p has at most S non-zeros, which ``qstore.q_capacity`` ensures).
    q_slots: int = 0
    # Most elements of a [B, t, V] temporary of the target filters and the window's draws: above it
    # they run t < W slots at a time (sequential passes: less memory, more latency).
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    rules: Rules = Rules()
    # Device mesh (``sharding.make_mesh``) or None (one device). Part of the compile key: the
    # sampler pins params, cache and state to ``sharding.RULES`` on it.
    mesh: Any = None

    @property
    def effective_window(self) -> int:  # (the window is resolved: kept for older callers)
        return self.window

    @property
    def branches(self) -> int:
        """Side branches of the draft tree (0 = plain chain)."""
        return self.tree_width - 1 if self.tree_depth > 0 else 0

    @property
    def chain(self) -> int:
        """Chain slots of the window (the rest are tree side branches)."""
        return self.window - self.branches * self.tree_depth

    @property
    def history_rows(self) -> int:
        """Rows of the latest-target history an init reads (0 = none kept)."""
        return self.config.grid_size[1] + self.chain if DRAFT_INITS[self.init].history else 0

    def tree_structure(self):
        """(offsets [W], ancestor mask [W, W]) of the window, or (None, None) for a plain chain."""
        if not self.branches:
            return None, None
        W, Wc, D = self.window, self.chain, self.tree_depth
        offsets = np.concatenate([np.arange(Wc), np.tile(np.arange(1, D + 1), self.branches)])
        mask = np.zeros((W, W), bool)
        mask[:Wc, :Wc] = np.tril(np.ones((Wc, Wc), bool))
        for k in range(self.branches):
            for d in range(D):
                s = Wc + k * D + d
                mask[s, 0] = True
                mask[s, Wc + k * D: s + 1] = True
        return offsets.astype(np.int32), mask


def auto_tree(window: int) -> tuple[int, int]:
    """The draft tree of ``tree="auto"``: SJD-PAC's 4 x 3 from window 48, 2 x 2 from 5 (on the
    bundled model 2 x 2 beat 4 x 3 and 3 x 2 at windows 16 and 32), none below."""
    return (4, 3) if window >= 48 else (2, 2) if window >= 5 else (1, 0)


def resolve(config: GPTConfig, options: SamplerOptions, knobs: dict | Knobs, *, neighbours=None,
            mesh=None, progress: bool = False) -> SamplerSpec:
    """Validate every setting (one ``ValueError`` each) and derive the static ``SamplerSpec``.
    ``knobs``: concrete values (the q-store capacity depends on top-k and the temperature);
    ``neighbours``: lantern's ``[V, k]`` table when ``options.lantern``."""
    if not isinstance(options, SamplerOptions):
        raise ValueError(f"options must be a SamplerOptions, got {type(options).__name__}")
    o = options
    k = knobs if isinstance(knobs, dict) else {f.name: np.asarray(getattr(knobs, f.name)).item()
                                                for f in dataclasses.fields(knobs)}
    ar = o.method == "ar"
    window = 1 if ar else o.window  # ar has one token per forward: the window is ignored
    check_sampling(config, o.method, window, k["cfg_scale"], k["temperature"], k["top_k"], k["top_p"], o.cfg)
    tree = auto_tree(window) if o.tree == "auto" else o.tree
    if not (isinstance(tree, (tuple, list)) and len(tree) == 2):
        raise ValueError(f"tree must be a (width, depth) pair or 'auto', got {o.tree!r}")
    lantern_k = check_lantern(config, o.lantern, neighbours)
    delta = float(k.get("lantern_delta", 0.0))
    check_drafting(config, o.method, window, o.coupling, o.init, int(tree[0]), int(tree[1]), lantern_k, delta)
    check_chunk_elements(o.chunk_elements)
    if not isinstance(o.rules, Rules):
        raise ValueError(f"rules must be a sampling.verify.Rules, got {type(o.rules).__name__}")
    o.rules.check()
    q_storage = o.q_storage
    if o.rules.draft is not None:  # a rule's q is an arbitrary [V] row: only dense storage holds it
        if q_storage == "compact":
            raise ValueError("a custom draft_rule returns dense q rows: use q_storage='dense' or 'auto'")
        q_storage = "dense"
    q_slots = q_capacity(config.vocab_size, o.method, k["temperature"], k["top_k"], q_storage, int(tree[0]))
    return SamplerSpec(config=config, method=o.method, window=int(window), cfg=bool(o.cfg), progress=bool(progress),
                       coupling=o.coupling, init=o.init, tree_width=int(tree[0]), tree_depth=int(tree[1]),
                       lantern_k=lantern_k, q_slots=q_slots, rules=o.rules, mesh=mesh,
                       chunk_elements=DEFAULT_CHUNK_ELEMENTS if o.chunk_elements is None else int(o.chunk_elements))


# ---- checks (each one clear ValueError) --------------------------------------------------------


def _int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_sampling(config: GPTConfig, method: str, window: int, cfg_scale: float, temperature: float,
                   top_k: int, top_p: float, cfg: bool) -> None:
    N, V = config.num_image_tokens, config.vocab_size
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not _int(window) or not 1 <= window <= N:
        raise ValueError(f"window must be an integer in [1, {N}] (image tokens), got {window!r}")
    for name, val in (("cfg_scale", cfg_scale), ("temperature", temperature), ("top_p", top_p)):
        if not np.isfinite(np.asarray(val, np.float64)).all() or np.ndim(val) != 0:
            raise ValueError(f"{name} must be a finite scalar, got {val!r}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not _int(top_k) or not 0 <= top_k <= V:
        raise ValueError(f"top_k must be an integer in [0, {V}] (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not cfg and cfg_scale != 1.0:
        raise ValueError(f"cfg=False computes no unconditional rows, so cfg_scale must be 1.0, got {cfg_scale}")


def check_chunk_elements(chunk_elements) -> None:
    """``chunk_elements``: None (the default) or the largest [B, t, V] temporary in elements."""
    if chunk_elements is not None and (not _int(chunk_elements) or chunk_elements < 1):
        raise ValueError(f"chunk_elements must be a positive integer, got {chunk_elements!r}")


def check_lantern(config: GPTConfig, lantern: bool, neighbours) -> int:
    """lantern's neighbour table ``[V, k]`` of token ids -> k (0 when lantern is off)."""
    if not lantern:
        if neighbours is not None:
            raise ValueError("a lantern neighbour table was given but lantern is off")
        return 0
    V = config.vocab_size
    if neighbours is None:
        raise ValueError("lantern needs a neighbour table (sampling.lantern.codebook_neighbours)")
    nb = np.asarray(neighbours)
    if nb.ndim != 2 or nb.shape[0] != V or not np.issubdtype(nb.dtype, np.integer) or nb.min() < 0 or \
            nb.max() >= V:
        raise ValueError(f"lantern neighbours must be token ids of shape [{V}, k], got {nb.dtype} {nb.shape}")
    if nb.shape[1] == 0:
        raise ValueError("lantern neighbours table has k = 0 columns")
    return int(nb.shape[1])


def check_drafting(config: GPTConfig, method: str, window: int, coupling: str = "none",
                   init: str = "uniform", tree_width: int = 1, tree_depth: int = 0,
                   lantern_k: int = 0, lantern_delta: float = 0.0) -> None:
    """Draft options of the Jacobi-family samplers (see ``sampling.loop``)."""
    V = config.vocab_size
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(COUPLINGS)}")
    if init not in DRAFT_INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(DRAFT_INITS)}")
    if not (_int(tree_width) and _int(tree_depth)) or tree_width < 1 or tree_depth < 0:
        raise ValueError(f"tree must be width >= 1 and depth >= 0 integers, got {tree_width!r}x{tree_depth!r}")
    if (tree_width > 1) != (tree_depth > 0):
        raise ValueError(f"a draft tree needs both width > 1 and depth > 0, got {tree_width}x{tree_depth}")
    if not _int(lantern_k) or not 0 <= lantern_k < V:
        raise ValueError(f"lantern_k must be an integer in [0, {V - 1}] (0 = off), got {lantern_k!r}")
    if not np.isfinite(lantern_delta) or lantern_delta < 0:
        raise ValueError(f"lantern_delta must be a finite number >= 0, got {lantern_delta!r}")
    if method == "ar":
        if (coupling, init, tree_width, lantern_k) != ("none", "uniform", 1, 0):
            raise ValueError("ar drafts nothing: coupling, init, tree and lantern apply to jacobi and sjd")
        return
    if tree_width > V:
        raise ValueError(f"tree width {tree_width} exceeds the vocabulary ({V})")
    if tree_width > 1 and window < 1 + tree_width * tree_depth:
        raise ValueError(f"a {tree_width}x{tree_depth} tree needs window >= {1 + tree_width * tree_depth} "
                         f"(its chain must reach the tree depth), got {window}")
    if lantern_k and tree_width > 1:
        raise ValueError("lantern (lossy relaxed acceptance) is not combined with draft trees")

"""The exact-distribution check: does a sampler draw exactly the model's joint distribution?

On a tiny model every image token sequence can be enumerated (V^N of them), so the exact joint is
a product of teacher-forced conditionals. The check samples M images per class with ``generate``
(any method, drafting option or custom ``accept_rule`` / ``draft_rule``) and compares the counts
with that joint by two criteria, both of which a lossless sampler passes and a wrong rule fails:

* a chi-square goodness of fit (cells with expected count < 5 pooled) with p-value > ``alpha``;
* total variation below the 99.9% quantile of the TV of exact multinomial samples of size M.

With fixed seeds the outcome is deterministic; ``alpha`` is the chance that a correct sampler fails
on an arbitrary seed. The target p is computed by an independent numpy reference (``target_np``:
CFG on raw logits, temperature, top-k with ties to the lower id, top-p), not by the sampler's code.

    config, params = exactness.tiny_model()
    for r in exactness.check(params, config, classes=(0, 1), method="sjd", window=3, cfg_scale=2.0,
                             top_k=3, draft_rule=my_rule):
        print(r)          # class, chi-square p-value, TV, TV bound, passed
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from sjd_jax.core.config import GPTConfig
from sjd_jax.core.model import init_params, teacher_forced_logits


def scaled_params(config: GPTConfig, seed: int = 0, scale: float = 1.0, head_scale: float = 1.0):
    """Random params with every weight matrix multiplied by ``scale`` (and the output head also by
    ``head_scale``), so that next-token distributions are peaked and depend on the context."""
    params = init_params(config, jax.random.key(seed))

    def f(path, x):
        name = jax.tree_util.keystr(path)
        if x.ndim < 2 or "uncond_embedding" in name:
            return x
        return x * scale * (head_scale if "'output'" in name else 1.0)

    return jax.tree_util.tree_map_with_path(f, params)


def tiny_model(vocab_size: int = 4, grid: tuple[int, int] = (2, 2), num_classes: int = 2, seed: int = 7):
    """(config, params) of a class-conditional model small enough to enumerate (V^N sequences;
    defaults: 4^4 = 256), with peaked, context-dependent conditionals."""
    config = GPTConfig(vocab_size=vocab_size, grid_size=grid, dim=16, n_layer=2, n_head=2, num_classes=num_classes)
    return config, scaled_params(config, seed=seed, scale=6.0, head_scale=2.0)


def target_np(lc, lu, cfg_scale, temperature, top_k, top_p):
    """Independent numpy reference of p: CFG on raw logits, temperature, top-k, top-p (float64).
    ``lc``/``lu``: conditional / unconditional logits ``[..., V]`` (``lu`` None: no CFG)."""
    l = np.asarray(lc, np.float64)  # float64 from the logits on, CFG included
    if lu is not None:
        lu = np.asarray(lu, np.float64)
        l = lu + cfg_scale * (l - lu)
    l = l / temperature
    if top_k:  # exactly k: ties with the k-th value go to the lower ids (stable order)
        keep = np.zeros(l.shape, bool)
        np.put_along_axis(keep, np.argsort(-l, axis=-1, kind="stable")[..., :top_k], True, -1)
        l = np.where(keep, l, -np.inf)
    p = np.exp(l - l.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if top_p < 1:
        order = np.argsort(-p, axis=-1, kind="stable")
        ps = np.take_along_axis(p, order, -1)
        before = np.cumsum(ps, -1) - ps
        keep_sorted = before < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return p


def all_sequences(config: GPTConfig) -> np.ndarray:
    """Every image token sequence of the config, ``[V^N, N]`` int32 (raster order)."""
    V, N = config.vocab_size, config.num_image_tokens
    if V ** N > 1 << 16:
        raise ValueError(f"{V}^{N} sequences are too many to enumerate; use a smaller tiny model")
    return np.array(list(itertools.product(range(V), repeat=N)), np.int32)


def sequence_index(tokens, vocab_size: int) -> np.ndarray:
    """Row of ``all_sequences`` of each sampled sequence ``tokens: [M, N]`` -> ``[M]``."""
    tokens = np.asarray(tokens)
    return (tokens * vocab_size ** np.arange(tokens.shape[1] - 1, -1, -1)).sum(-1)


def prefix_logits(logits, seqs, rtol: float = 1e-4) -> np.ndarray:
    """Teacher-forced logits ``[S, N, V]`` of the enumerated sequences ``seqs`` ``[S, N]`` as float64,
    one conditional per prefix: position t of every sequence is taken from the first sequence that
    shares its prefix ``seqs[:, :t]``.

    The model runs in float32, and XLA may round the same prefix's logits differently in different
    rows of one batch (jax 0.12's CPU backend does, by about 1e-6); a joint multiplied out of such
    rows mixes slightly different conditionals and sums to 1 only within ~1e-7. With one conditional
    per prefix the joint is a distribution to float64 rounding (the 1e-9 checks). Rows of one prefix
    that differ by more than ``rtol`` of the largest logit mean a later token changed an earlier
    conditional (a non-causal model): ValueError."""
    logits, seqs = np.asarray(logits, np.float64), np.asarray(seqs)
    out = np.empty_like(logits)
    base = int(seqs.max()) + 1
    for t in range(seqs.shape[1]):
        key = sequence_index(seqs[:, :t], base) if t else np.zeros(len(seqs), np.int64)
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        out[:, t] = logits[first[inverse.reshape(-1)], t]
    err = np.abs(out - logits).max()
    if err > rtol * max(1.0, np.abs(logits).max()):
        raise ValueError(f"logits of one prefix differ by {err:.3g} between sequences: the model is not causal")
    return out


def exact_joint(params, config: GPTConfig, cls: int, cfg_scale: float = 1.0, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, cfg: bool = False) -> np.ndarray:
    """Probability of each of the V^N sequences under the target p (class ``cls``), ``[V^N]``."""
    if config.forced_tokens().max() >= 0 or config.allowed_tokens() is not None:
        raise ValueError("exact_joint covers models without structure tokens (forced ids, id ranges)")
    seqs = all_sequences(config)
    tf = lambda c: prefix_logits(teacher_forced_logits(params, config, jnp.full((len(seqs),), c),  # noqa: E731
                                                       jnp.asarray(seqs)), seqs)
    p = target_np(tf(cls), tf(config.num_classes) if cfg else None, cfg_scale, temperature, top_k, top_p)
    joint = np.take_along_axis(p, seqs[..., None], -1)[..., 0].prod(-1)  # [V^N]
    assert abs(joint.sum() - 1) < 1e-9
    return joint


def tv_bound(joint, m: int, q: float = 0.999, draws: int = 2000, seed: int = 123) -> float:
    """The ``q`` quantile of the total variation between ``m`` exact multinomial samples and ``joint``."""
    sims = np.random.default_rng(seed).multinomial(m, joint, size=draws) / m
    return float(np.quantile(0.5 * np.abs(sims - joint).sum(-1), q))


def chi2_sf(stat: float, dof: int) -> float:
    """Chi-square survival function (upper tail), float64 via the regularised gamma function."""
    with jax.enable_x64(True):
        return float(jax.scipy.special.gammaincc(dof / 2.0, jnp.float64(stat) / 2.0))


def fit_counts(counts, joint) -> tuple[float, float, float]:
    """(chi-square p-value, TV, TV bound) of observed cell counts ``[cells]`` against ``joint``."""
    counts = np.asarray(counts, np.float64)
    m = counts.sum()
    exp = joint * m
    big = exp >= 5
    if big.sum() < 10:
        raise ValueError("degenerate target: fewer than 10 cells with an expected count >= 5")
    obs_b = np.append(counts[big], counts[~big].sum())
    exp_b = np.append(exp[big], exp[~big].sum())
    if exp_b[-1] == 0:
        obs_b, exp_b = obs_b[:-1], exp_b[:-1]
    stat = float(((obs_b - exp_b) ** 2 / exp_b).sum())
    tv = 0.5 * np.abs(counts / m - joint).sum()
    return chi2_sf(stat, len(obs_b) - 1), float(tv), tv_bound(joint, int(m))


@dataclasses.dataclass(frozen=True)
class Result:
    cls: int
    pvalue: float  # chi-square goodness of fit
    tv: float  # total variation to the exact joint
    tv_bound: float  # 99.9% quantile of the TV of exact samples of the same size
    passed: bool  # pvalue > alpha and tv < tv_bound
    mean_nfe: float  # forwards per image (< N: drafts were accepted, the rule under test ran)

    def __str__(self):
        verdict = "PASS" if self.passed else "FAIL"
        return (f"class {self.cls}: chi-square p = {self.pvalue:.3g}, TV = {self.tv:.4f} (bound "
                f"{self.tv_bound:.4f}), NFE {self.mean_nfe:.2f} -> {verdict}")


def check(params, config: GPTConfig, classes=(0,), samples: int = 50_000, *, alpha: float = 1e-3,
          seed: int = 2024, **generate_kwargs) -> list[Result]:
    """Sample ``samples`` images per class in one batch (classes interleaved, every row with its own
    acceptance) with ``sjd_jax.generate(..., **generate_kwargs)`` and test each class's joint.
    CFG is on when ``cfg_scale`` is given and not 1."""
    from sjd_jax.sampling.generate import generate

    kw = dict(generate_kwargs)
    knobs = {k: kw[k] for k in ("cfg_scale", "temperature", "top_k", "top_p") if k in kw}
    cfg = kw.pop("cfg", knobs.get("cfg_scale", 1.0) != 1.0)
    classes = tuple(int(c) for c in classes)
    cond = jnp.asarray(np.tile(np.asarray(classes, np.int32), samples))
    out = generate(params, config, cond, seed, cfg=cfg, **kw)
    tokens, nfe = np.asarray(out.tokens), np.asarray(out.nfe)
    results = []
    for i, c in enumerate(classes):
        joint = exact_joint(params, config, c, cfg=cfg, **knobs)
        counts = np.bincount(sequence_index(tokens[i::len(classes)], config.vocab_size), minlength=len(joint))
        pval, tv, bound = fit_counts(counts, joint)
        results.append(Result(c, pval, tv, bound, bool(pval > alpha and tv < bound),
                              float(nfe[i::len(classes)].mean())))
    return results

"""Exact-distribution tests: the sampler's empirical joint over all V^N token sequences of a tiny
model against the enumerated exact joint (teacher-forced conditionals, CFG/temperature/top-k/top-p
applied by an independent numpy reference).

Decision rule for every case, with M samples per class:
  * chi-square goodness of fit (cells with expected count < 5 pooled) must have p-value > ALPHA;
  * total variation to the exact joint must be below TV_BOUND, the 99.9% quantile of the TV of
    exact multinomial samples of the same size (simulated, 2000 draws).
Seeds are fixed, so the outcome is deterministic; ALPHA = 1e-3 is the chance that a correct sampler
would fail on an arbitrary seed. Power: the negative control (rejected token redrawn from p instead
of the residual max(0, p - q)) must fail both criteria by a wide margin (p-value < 1e-12).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import sjd_jax as S
from sjd_jax.sampling.generate import generate
from sjd_jax.sampling.loop import SamplerSpec, _generate_jit, make_knobs
from sjd_jax.sampling import keys as K
from tiny import np_target, scaled_params, tiny_config

V, GRID = 4, (2, 2)
N = GRID[0] * GRID[1]
M = 50_000  # samples per class
ALPHA = 1e-3

CONFIG = tiny_config(vocab_size=V, grid_size=GRID, dim=16, n_layer=2, n_head=2, num_classes=2)
ALL_SEQ = np.array(list(itertools.product(range(V), repeat=N)), np.int32)  # [V^N, N]


@pytest.fixture(scope="module")
def params():
    return scaled_params(CONFIG, seed=7, scale=6.0, head_scale=2.0)


def exact_joint(params, cls, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, cfg=False):
    """Probability of each of the V^N sequences, [V^N]."""
    seqs = jnp.asarray(ALL_SEQ)
    lc = np.asarray(S.teacher_forced_logits(params, CONFIG, jnp.full((len(seqs),), cls), seqs))
    lu = np.asarray(S.teacher_forced_logits(params, CONFIG, jnp.full((len(seqs),), CONFIG.num_classes),
                                            seqs)) if cfg else None
    p = np_target(lc, lu, cfg_scale, temperature, top_k, top_p)  # [V^N, N, V]
    probs = np.take_along_axis(p, ALL_SEQ[..., None], -1)[..., 0]
    joint = probs.prod(-1)
    assert abs(joint.sum() - 1) < 1e-9
    return joint


def tv_bound(joint, m, q=0.999, draws=2000):
    rng = np.random.default_rng(123)
    sims = rng.multinomial(m, joint, size=draws) / m
    return float(np.quantile(0.5 * np.abs(sims - joint).sum(-1), q))


def index_of(tokens):
    return (np.asarray(tokens) * V ** np.arange(N - 1, -1, -1)).sum(-1)


def fit(samples, joint):
    counts = np.bincount(index_of(samples), minlength=len(joint)).astype(float)
    m = counts.sum()
    exp = joint * m
    big = exp >= 5
    assert big.sum() >= 10, "degenerate target: too few cells to test"
    obs_b = np.append(counts[big], counts[~big].sum())
    exp_b = np.append(exp[big], exp[~big].sum())
    if exp_b[-1] == 0:
        obs_b, exp_b = obs_b[:-1], exp_b[:-1]
    pval = stats.chisquare(obs_b, exp_b).pvalue
    tv = 0.5 * np.abs(counts / m - joint).sum()
    return pval, tv, tv_bound(joint, int(m))


def test_model_is_peaked_and_context_dependent(params):
    """The test model must make the tests meaningful: peaked, varied conditionals."""
    lc = np.asarray(S.teacher_forced_logits(params, CONFIG, jnp.zeros((len(ALL_SEQ),), jnp.int32),
                                            jnp.asarray(ALL_SEQ)))
    p = np_target(lc, None, 1.0, 1.0, 0, 1.0)
    # last-position conditionals differ strongly across prefixes
    last = p[:, -1]
    assert 0.5 * np.abs(last[:, None] - last[None]).sum(-1).max() > 0.5
    assert p.max() > 0.8  # peaked somewhere
    assert (p.max(-1) < 0.6).mean() > 0.1  # and spread elsewhere


CASES = {
    # name: (method, window, classes, knobs)
    "sjd-window3": ("sjd", 3, (0,), dict()),
    "sjd-window2-temp-topp": ("sjd", 2, (0,), dict(temperature=1.3, top_p=0.9)),
    "sjd-window3-temp0.8": ("sjd", 3, (1,), dict(temperature=0.8)),
    "sjd-cfg-topk-batched-mixed-classes": ("sjd", 4, (0, 1), dict(cfg_scale=2.5, top_k=3)),
    "sjd-cfg-topk-topp-window3": ("sjd", 3, (1,), dict(cfg_scale=1.7, top_k=3, top_p=0.9, temperature=1.3)),
    "ar-cfg-topk (harness control)": ("ar", 1, (0,), dict(cfg_scale=2.5, top_k=3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_distribution(params, name):
    method, window, classes, knobs = CASES[name]
    cfg = "cfg_scale" in knobs
    # rows interleave the classes: a batch of len(classes) * M with each row's own acceptance
    cond = jnp.asarray(np.tile(np.asarray(classes, np.int32), M))
    out = generate(params, CONFIG, cond, jax.random.key(2024), method=method, window=window,
                   cfg=cfg, **knobs)
    tokens = np.asarray(out.tokens)
    assert np.asarray(out.committed).sum(1).tolist() == [N] * len(cond)
    if method == "sjd":
        assert np.asarray(out.nfe).mean() < N  # drafts were accepted: the path under test ran
    for i, cls in enumerate(classes):
        joint = exact_joint(params, cls, cfg=cfg, **knobs)
        pval, tv, bound = fit(tokens[i::len(classes)], joint)
        print(f"{name} class {cls}: chi2 p={pval:.3g} TV={tv:.4f} bound={bound:.4f}")
        assert pval > ALPHA, (pval, tv, bound)
        assert tv < bound, (pval, tv, bound)


def test_negative_control_broken_residual_fails(params):
    """Drawing the rejected token from p instead of max(0, p - q) is not lossless: must fail."""
    knobs = make_knobs(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)
    spec = SamplerSpec(config=CONFIG, method="sjd", window=3, cfg=False, _broken="resample_from_p")
    cond = jnp.zeros((M,), jnp.int32)
    rows = K.row_keys(jax.random.key(2024), jnp.arange(M, dtype=jnp.uint32))
    out = _generate_jit(spec, params, cond, jnp.ones((M, 1), bool), rows, knobs)
    pval, tv, bound = fit(np.asarray(out.tokens), exact_joint(params, 0))
    print(f"negative control: chi2 p={pval:.3g} TV={tv:.4f} bound={bound:.4f}")
    assert pval < 1e-12 and tv > 2 * bound, (pval, tv, bound)

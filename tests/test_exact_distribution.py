"""Exact-distribution tests: the sampler's empirical joint over all V^N token sequences of a tiny
model against the enumerated exact joint (teacher-forced conditionals, CFG/temperature/top-k/top-p
applied by an independent numpy reference).

Decision rule for every case, with M = 30,000 samples per class (50,000 for the structure-token
cases, the negative controls and LANTERN):
  * chi-square goodness of fit (cells with expected count < 5 pooled) must have p-value > ALPHA;
  * total variation to the exact joint must be below TV_BOUND, the 99.9% quantile of the TV of
    exact multinomial samples of the same size (simulated, 2000 draws).
Seeds are fixed, so the outcome is deterministic; ALPHA = 1e-3 is the chance that a correct sampler
would fail on an arbitrary seed. Power: three negative controls — the rejected token redrawn from p
instead of the residual max(0, p - q); maximal coupling keeping an accepted draft's old q (the
released SCD code's bookkeeping, TV 0.03 in a toy study); tree siblings each tested against p
instead of the running residual — must fail both criteria by a wide margin (p-value < 1e-12). At
M = 30,000 the smallest of these errors (keep_old_q, TV 0.04) still fails both: p = 8e-18, TV bound
0.031 (measured once; the suite runs the controls at 50,000).

Two test models: A (V=4, 2x2 grid, 256 sequences) for chains; B (V=3, 2x3 grid, 729 sequences)
so that draft trees with depth 2 or width 3 fit in a window shorter than the image.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import sjd_jax as S
from sjd_jax.sampling import exactness as E
from sjd_jax.sampling.exactness import fit_counts
from sjd_jax.sampling.generate import generate
from sjd_jax.sampling import Rules, compile as compile_sampler, resolve
from sjd_jax.sampling.options import Knobs, SamplerOptions
from sjd_jax.sampling import keys as K
from tiny import np_target, scaled_params, tiny_config

M = 30_000  # samples per class (TV bound about 0.019 on model A's 256 sequences)
# negative controls and LANTERN (a wide margin for the power checks), and the structure-token
# cases (top-k 2 over 81 sequences leaves few cells with an expected count >= 5 at M)
M_FULL = 50_000
ALPHA = 1e-3

CONFIG = tiny_config(vocab_size=4, grid_size=(2, 2), dim=16, n_layer=2, n_head=2, num_classes=2)
CONFIG_B = tiny_config(vocab_size=3, grid_size=(2, 3), dim=16, n_layer=2, n_head=2, num_classes=2)
CONFIGS = {"A": CONFIG, "B": CONFIG_B}


@pytest.fixture(scope="module")
def models():
    return {name: scaled_params(c, seed=7, scale=6.0, head_scale=2.0) for name, c in CONFIGS.items()}


@pytest.fixture(scope="module")
def params(models):
    return models["A"]


def exact_joint(params, cls, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, cfg=False, config=CONFIG):
    """Probability of each of the V^N sequences, [V^N] (``sjd_jax.sampling.exactness``)."""
    return E.exact_joint(params, config, cls, cfg_scale, temperature, top_k, top_p, cfg)


def fit(samples, joint, V=4):
    return fit_counts(np.bincount(E.sequence_index(samples, V), minlength=len(joint)), joint)


def test_model_is_peaked_and_context_dependent(params):
    """The test model must make the tests meaningful: peaked, varied conditionals."""
    ALL_SEQ = E.all_sequences(CONFIG)
    lc = np.asarray(S.teacher_forced_logits(params, CONFIG, jnp.zeros((len(ALL_SEQ),), jnp.int32),
                                            jnp.asarray(ALL_SEQ)))
    p = np_target(lc, None, 1.0, 1.0, 0, 1.0)
    # last-position conditionals differ strongly across prefixes
    last = p[:, -1]
    assert 0.5 * np.abs(last[:, None] - last[None]).sum(-1).max() > 0.5
    assert p.max() > 0.8  # peaked somewhere
    assert (p.max(-1) < 0.6).mean() > 0.1  # and spread elsewhere


CASES = {
    # name: (model, method, window, classes, knobs, drafting options)
    "sjd-window2-temp-topp": ("A", "sjd", 2, (0,), dict(temperature=1.3, top_p=0.9), {}),
    "sjd-window3-temp0.8": ("A", "sjd", 3, (1,), dict(temperature=0.8), {}),
    "sjd-cfg-topk-batched-mixed-classes": ("A", "sjd", 4, (0, 1), dict(cfg_scale=2.5, top_k=3), {}),
    "sjd-cfg-topk-topp-window3": ("A", "sjd", 3, (1,), dict(cfg_scale=1.7, top_k=3, top_p=0.9, temperature=1.3), {}),
    "ar-cfg-topk (harness control)": ("A", "ar", 1, (0,), dict(cfg_scale=2.5, top_k=3), {}),
    "gumbel-cfg-topk-batched": ("A", "sjd", 3, (0, 1), dict(cfg_scale=2.5, top_k=3), dict(coupling="gumbel")),
    "maximal-cfg-topk-batched": ("A", "sjd", 3, (0, 1), dict(cfg_scale=2.5, top_k=3), dict(coupling="maximal")),
    "maximal-temp-topp": ("A", "sjd", 3, (1,), dict(temperature=1.3, top_p=0.9), dict(coupling="maximal")),
    "horizon-repeat-cfg-topk": ("A", "sjd", 3, (0,), dict(cfg_scale=2.5, top_k=3), dict(init="horizon-repeat")),
    "horizon-sample": ("A", "sjd", 3, (1,), dict(), dict(init="horizon-sample")),
    "vertical-repeat-maximal": ("A", "sjd", 3, (0,), dict(temperature=1.3), dict(init="vertical-repeat", coupling="maximal")),
    "vertical-sample-gumbel-cfg": ("A", "sjd", 3, (1,), dict(cfg_scale=2.0), dict(init="vertical-sample", coupling="gumbel")),
    "tree2x1-cfg-topk-batched": ("A", "sjd", 3, (0, 1), dict(cfg_scale=2.5, top_k=3), dict(tree=(2, 1))),
    "tree2x2-cfg-topk-batched": ("B", "sjd", 5, (0, 1), dict(cfg_scale=2.0, top_k=2), dict(tree=(2, 2))),
    "tree3x1-maximal-cfg-batched": ("B", "sjd", 4, (0, 1), dict(cfg_scale=2.0), dict(tree=(3, 1), coupling="maximal")),
    "tree2x2-gumbel-vertical-temp": ("B", "sjd", 5, (1,), dict(temperature=1.3), dict(tree=(2, 2), coupling="gumbel",
                                                                                    init="vertical-repeat")),
    # compact q storage with 2 entries per q (top-k 2 < V): every kind of stored q in one case each
    "compact-maximal-tree2x1-horizon-sample-cfg-topk2-batched": (
        "A", "sjd", 3, (0, 1), dict(cfg_scale=1.5, temperature=1.5, top_k=2),
        dict(q_storage="compact", coupling="maximal", tree=(2, 1), init="horizon-sample")),
    "compact-gumbel-vertical-sample-temp-topk2": (
        "B", "sjd", 5, (1,), dict(temperature=1.3, top_k=2), dict(q_storage="compact", coupling="gumbel",
                                                                  init="vertical-sample")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_distribution(models, name):
    model, method, window, classes, knobs, options = CASES[name]
    config, params = CONFIGS[model], models[model]
    cfg = "cfg_scale" in knobs
    # rows interleave the classes: a batch of len(classes) * M with each row's own acceptance
    cond = jnp.asarray(np.tile(np.asarray(classes, np.int32), M))
    out = generate(params, config, cond, jax.random.key(2024), method=method, window=window,
                   cfg=cfg, **knobs, **options)
    tokens = np.asarray(out.tokens)
    N = config.num_image_tokens
    assert np.asarray(out.committed).sum(1).tolist() == [N] * len(cond)
    if method == "sjd":
        assert np.asarray(out.nfe).mean() < N  # drafts were accepted: the path under test ran
    if "tree" in options:
        assert np.asarray(out.branch_hits).mean() > 0.1  # side branches were accepted too
    for i, cls in enumerate(classes):
        joint = exact_joint(params, cls, cfg=cfg, config=config, **knobs)
        pval, tv, bound = fit(tokens[i::len(classes)], joint, config.vocab_size)
        print(f"{name} class {cls}: chi2 p={pval:.3g} TV={tv:.4f} bound={bound:.4f}")
        assert pval > ALPHA, (pval, tv, bound)
        assert tv < bound, (pval, tv, bound)


def _from_p(p, q):
    return p


def _old_q(old, new):
    return old


NEGATIVE = {
    # name: (model, options, the wrong rule) — each a plausible-looking but wrong rule, supplied
    # through the loop's rule hooks (``sampling.verify.Rules``)
    "resample_from_p": ("A", dict(window=3), Rules(residual=_from_p)),  # rejected token drawn from p
    "keep_old_q": ("A", dict(window=3, coupling="maximal"), Rules(kept_q=_old_q)),  # SCD's released code
    "sibling_vs_p": ("B", dict(window=4, tree=(3, 1)), Rules(sibling_residual=_from_p)),  # siblings vs p
}


@pytest.mark.slow
@pytest.mark.parametrize("broken", sorted(NEGATIVE))
def test_negative_control_fails(models, broken):
    """A deliberately wrong rule is not lossless: the test must detect it."""
    model, options, rules = NEGATIVE[broken]
    config, params = CONFIGS[model], models[model]
    knobs = Knobs.make(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)
    spec = resolve(config, SamplerOptions(method="sjd", cfg=False, rules=rules, q_storage="dense", **options), knobs)
    cond = jnp.zeros((M_FULL,), jnp.int32)
    rows = K.row_keys(jax.random.key(2024), jnp.arange(M_FULL, dtype=jnp.uint32))
    mask = jnp.ones((M_FULL, 1), bool)
    out = compile_sampler(spec, cond, mask, rows).run(params, cond, mask, rows, knobs)
    pval, tv, bound = fit(np.asarray(out.tokens), exact_joint(params, 0, config=config), config.vocab_size)
    print(f"negative control {broken}: chi2 p={pval:.3g} TV={tv:.4f} bound={bound:.4f}")
    assert pval < 1e-12 and tv > 1.3 * bound, (pval, tv, bound)


@pytest.mark.slow
def test_lantern_relaxed_acceptance_is_opt_in_and_lossy(params):
    """LANTERN acceptance (k latent neighbours, mass budget delta): delta = 0 is exactly SJD (same
    tokens for the same key); delta > 0 accepts more drafts and is NOT lossless — the exact test
    rejects it, which is why it is off by default and labelled lossy."""
    from sjd_jax.sampling.lantern import codebook_neighbours

    codebook = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    nb = codebook_neighbours(codebook, 2)
    np.testing.assert_array_equal(nb, [[1, 2], [0, 2], [0, 1], [1, 2]])
    cond = jnp.zeros((M_FULL,), jnp.int32)
    kw = dict(method="sjd", window=3, cfg=False)
    exact = generate(params, CONFIG, cond, jax.random.key(5), **kw)
    zero = generate(params, CONFIG, cond, jax.random.key(5), lantern=(nb, 0.0), **kw)
    np.testing.assert_array_equal(np.asarray(zero.tokens), np.asarray(exact.tokens))
    relaxed = generate(params, CONFIG, cond, jax.random.key(5), lantern=(nb, 0.5), **kw)
    assert np.asarray(relaxed.nfe).mean() < np.asarray(exact.nfe).mean() - 0.05
    pval, tv, bound = fit(np.asarray(relaxed.tokens), exact_joint(params, 0))
    print(f"lantern delta 0.5: chi2 p={pval:.3g} TV={tv:.4f} bound={bound:.4f}")
    assert pval < 1e-6 and tv > bound, (pval, tv, bound)


# ---- structure tokens (Lumina / Emu3 layouts) ----------------------------------------------------
# Model S: V = 4, rows of 2 codes + a forced row-end token 3, codes restricted to ids [0, 3):
# positions 2 and 5 are forced, the 4 free positions take 3 values each (81 sequences).
CONFIG_S = tiny_config(vocab_size=4, grid_size=(2, 3), dim=16, n_layer=2, n_head=2, num_classes=2,
                       row_end_token=3, image_token_range=(0, 3))
FREE_S = np.flatnonzero(CONFIG_S.forced_tokens() < 0)


def layout_seqs(config, codes=3):
    """(forced [N], free positions, every layout-consistent sequence [codes^free, N])."""
    forced = config.forced_tokens()
    free = np.flatnonzero(forced < 0)
    seqs = np.tile(forced, (codes ** free.size, 1))
    seqs[:, free] = np.array(list(itertools.product(range(codes), repeat=free.size)))
    return forced, free, seqs


def fit_layout(p, seqs, forced, free, tokens, label, codes=3):
    """p [S, N, V] over ``seqs`` (forced positions set one-hot here) vs the free codes of the
    sampled ``tokens`` [M, N]: chi-square and TV decision, printed with ``label``."""
    p[:, forced >= 0] = np.eye(p.shape[-1])[forced[forced >= 0]]
    joint = np.take_along_axis(p, seqs[..., None], -1)[..., 0].prod(-1)
    assert abs(joint.sum() - 1) < 1e-9
    idx = (tokens[:, free] * codes ** np.arange(free.size - 1, -1, -1)).sum(-1)
    pval, tv, bound = fit_counts(np.bincount(idx, minlength=len(joint)).astype(float), joint)
    print(f"{label}: chi2 p={pval:.3g} TV={tv:.4f} bound={bound:.4f}")
    assert pval > ALPHA and tv < bound, (pval, tv, bound)


def structured_joint(params, cls, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, cfg=False):
    """Exact probabilities of the 81 sequences consistent with the layout, and the sequences."""
    forced, _, seqs = layout_seqs(CONFIG_S)
    tf = lambda c: E.prefix_logits(S.teacher_forced_logits(params, CONFIG_S, jnp.full((len(seqs),), c),  # noqa: E731
                                                           jnp.asarray(seqs)), seqs)  # float64, one per prefix
    lc = tf(cls)
    l = tf(CONFIG_S.num_classes) + cfg_scale * (lc - tf(CONFIG_S.num_classes)) if cfg else lc
    l[..., 3] = -np.inf  # codes only at free positions (independent reference of the range mask)
    p = np_target(l, None, 1.0, temperature, top_k, top_p)
    p[:, forced >= 0] = np.eye(4)[forced[forced >= 0]]  # forced positions: one-hot
    joint = np.take_along_axis(p, seqs[..., None], -1)[..., 0].prod(-1)
    assert abs(joint.sum() - 1) < 1e-9
    return joint, seqs


STRUCT_CASES = {
    "sjd-cfg-topk-batched": (4, (0, 1), dict(cfg_scale=2.5, top_k=2), {}),
    "gumbel-vertical-repeat-temp": (5, (1,), dict(temperature=1.3), dict(coupling="gumbel", init="vertical-repeat")),
    "tree2x1-maximal-cfg": (4, (0,), dict(cfg_scale=2.0), dict(tree=(2, 1), coupling="maximal")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STRUCT_CASES))
def test_exact_distribution_with_structure_tokens(name):
    window, classes, knobs, options = STRUCT_CASES[name]
    params = scaled_params(CONFIG_S, seed=7, scale=6.0, head_scale=2.0)
    cfg = "cfg_scale" in knobs
    cond = jnp.asarray(np.tile(np.asarray(classes, np.int32), M_FULL))
    out = generate(params, CONFIG_S, cond, jax.random.key(77), method="sjd", window=window, cfg=cfg,
                   **knobs, **options)
    tokens = np.asarray(out.tokens)
    forced = CONFIG_S.forced_tokens()
    assert (tokens[:, forced >= 0] == 3).all() and (tokens[:, FREE_S] < 3).all()
    for i, cls in enumerate(classes):
        joint, _ = structured_joint(params, cls, cfg=cfg, **knobs)
        idx = (tokens[i::len(classes)][:, FREE_S] * 3 ** np.arange(FREE_S.size - 1, -1, -1)).sum(-1)
        pval, tv, bound = fit_counts(np.bincount(idx, minlength=len(joint)).astype(float), joint)
        print(f"structure {name} class {cls}: chi2 p={pval:.3g} TV={tv:.4f} bound={bound:.4f}")
        assert pval > ALPHA and tv < bound, (pval, tv, bound)


def test_forced_tokens_never_cost_a_rejection():
    """Rows of one free code + a forced row end (3 rows): every iteration commits at least one free
    position and the forced token after it, so NFE <= 1 + 3 for every row, whatever the draws. If
    forced positions were drafted at random (uniform over the codes, which excludes the row-end
    id), nearly every forced draft would be rejected and NFE would reach 6."""
    config = tiny_config(vocab_size=4, grid_size=(3, 2), dim=16, n_layer=2, n_head=2, num_classes=2,
                         row_end_token=3, image_token_range=(0, 3))
    params = scaled_params(config, seed=3, scale=6.0, head_scale=2.0)
    cond = jnp.asarray(np.arange(256) % 2, jnp.int32)
    for options in ({}, dict(init="horizon-sample", coupling="maximal")):
        out = generate(params, config, cond, jax.random.key(1), method="sjd", window=6, cfg_scale=2.0, **options)
        nfe = np.asarray(out.nfe)
        assert nfe.max() <= 4, (options, np.bincount(nfe))
        assert (np.asarray(out.tokens)[:, 1::2] == 3).all()


# ---- Chameleon-style model (Lumina-mGPT): prompt tokens in the shared vocabulary, q/k-norm, 1D
# rotate-half RoPE, Lumina's CFG (the unconditional branch is only the last 2 prompt tokens, a
# sequence of its own), forced row ends and an image-code range. V = 5: codes 0..2, row end 3,
# prompt-only token 4; 2 rows x (2 codes + row end) = 81 layout-consistent sequences.
CONFIG_L = S.GPTConfig(vocab_size=5, text_vocab_size=5, shared_embeddings=True, grid_size=(2, 3), dim=16,
                       n_layer=2, n_head=2, cls_token_num=4, rope_type="1d", rope_interleaved=False, qk_norm=True,
                       row_end_token=3, image_token_range=(0, 3), cfg_uncond_suffix=2)
PROMPTS_L = (np.array([[4, 1, 4, 2], [0, 4, 0, 2]], np.int32),  # row 2 left-padded by one
             np.array([[True] * 4, [False, True, True, True]]))


@pytest.mark.slow
def test_exact_distribution_chameleon_style_with_lumina_cfg():
    params = scaled_params(CONFIG_L, seed=5, scale=6.0, head_scale=2.0)
    knobs = dict(cfg_scale=2.5, top_k=2)
    ids, mask = PROMPTS_L
    forced, free, seqs = layout_seqs(CONFIG_L)
    out = generate(params, CONFIG_L, S.Prompt(jnp.asarray(np.tile(ids, (M, 1))), jnp.asarray(np.tile(mask, (M, 1)))),
                   jax.random.key(8), method="sjd", window=4, coupling="gumbel", **knobs)
    tokens = np.asarray(out.tokens)
    assert (tokens[:, forced >= 0] == 3).all() and (tokens[:, free] < 3).all()
    assert np.asarray(out.nfe).max() <= 5  # 4 free codes: forced row ends never cost a step
    for b in range(2):
        prompt = S.Prompt(jnp.asarray(np.repeat(ids[b:b + 1], len(seqs), 0)),
                          jnp.asarray(np.repeat(mask[b:b + 1], len(seqs), 0)))
        tf = lambda null: E.prefix_logits(S.teacher_forced_logits(  # noqa: E731
            params, CONFIG_L, prompt, jnp.asarray(seqs), null=np.full(len(seqs), null)), seqs)
        lc, lu = tf(False), tf(True)
        # the unconditional branch is the 2-token sequence alone (its own positions from 0)
        short = S.teacher_forced_logits(params, CONFIG_L.replace(cls_token_num=2, cfg_uncond_suffix=None),
                                        S.Prompt(jnp.asarray(np.repeat(ids[b:b + 1, -2:], len(seqs), 0)),
                                                 jnp.ones((len(seqs), 2), bool)), jnp.asarray(seqs))
        np.testing.assert_allclose(lu, np.asarray(short), atol=1e-5)
        l = lu + knobs["cfg_scale"] * (lc - lu)
        l[..., 3:] = -np.inf
        p = np_target(l, None, 1.0, 1.0, knobs["top_k"], 1.0)
        fit_layout(p, seqs, forced, free, tokens[b::2], f"chameleon-style lumina cfg prompt {b}")


# ---- Emu3-style model: Llama (GQA, RoPE theta 1e6), one vocabulary, a negative prompt per row as
# CFG's unconditional branch, CFG in Emu3's log-softmax form (HF's unbatched CFG processor), row ends.
CONFIG_E = S.GPTConfig(vocab_size=5, text_vocab_size=5, shared_embeddings=True, grid_size=(2, 3), dim=16,
                       n_layer=2, n_head=4, n_kv_head=2, cls_token_num=3, rope_type="1d", rope_interleaved=False,
                       rope_theta=1e6, row_end_token=3, image_token_range=(0, 3), cfg_negative_prompt=True)
PROMPTS_E = (np.array([[[4, 1, 2], [0, 4, 2]], [[1, 4, 4], [0, 0, 4]]], np.int32),  # [B, 2 (prompt, negative), C]
             np.array([[[True] * 3, [False, True, True]], [[True] * 3, [False, False, True]]]))


def _log_softmax(x):
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


@pytest.mark.slow
def test_exact_distribution_emu3_style_negative_prompt_log_softmax_cfg():
    """Emu3's CFG, ``lsm(u) + s (lsm(c) - lsm(u))`` over the whole vocabulary, then the layout mask
    and top-k, differs from raw-logit CFG by a per-row constant: the same p. Checked exactly on
    the enumerated conditionals and by sampling (SJD-PAC-style tree + maximal coupling)."""
    params = scaled_params(CONFIG_E, seed=9, scale=6.0, head_scale=2.0)
    ids, mask = PROMPTS_E
    forced, free, seqs = layout_seqs(CONFIG_E)
    s, k = 3.0, 2
    out = generate(params, CONFIG_E, S.Prompt(jnp.asarray(np.tile(ids, (M, 1, 1))), jnp.asarray(np.tile(mask, (M, 1, 1)))),
                   jax.random.key(12), method="sjd", window=4, coupling="maximal", tree=(2, 1), cfg_scale=s, top_k=k)
    tokens = np.asarray(out.tokens)
    assert (tokens[:, forced >= 0] == 3).all() and (tokens[:, free] < 3).all()
    for b in range(2):
        prompt = S.Prompt(jnp.asarray(np.repeat(ids[b:b + 1], len(seqs), 0)), jnp.asarray(np.repeat(mask[b:b + 1], len(seqs), 0)))
        tf = lambda null: E.prefix_logits(S.teacher_forced_logits(  # noqa: E731
            params, CONFIG_E, prompt, jnp.asarray(seqs), null=np.full(len(seqs), null)), seqs)
        lc, lu = tf(False), tf(True)
        # the unconditional branch is the negative prompt alone (left padding ignored)
        neg = CONFIG_E.replace(cfg_negative_prompt=False)
        alone = S.teacher_forced_logits(params, neg, S.Prompt(jnp.asarray(np.repeat(ids[b:b + 1, 1], len(seqs), 0)),
                                                              jnp.asarray(np.repeat(mask[b:b + 1, 1], len(seqs), 0))),
                                        jnp.asarray(seqs))
        np.testing.assert_allclose(lu, np.asarray(alone), atol=1e-5)
        l = _log_softmax(lu) + s * (_log_softmax(lc) - _log_softmax(lu))  # Emu3 / HF form
        l[..., 3:] = -np.inf
        p = np_target(l, None, 1.0, 1.0, k, 1.0)
        raw = lu + s * (lc - lu)
        raw[..., 3:] = -np.inf
        np.testing.assert_allclose(p, np_target(raw, None, 1.0, 1.0, k, 1.0), atol=1e-12)  # same p
        fit_layout(p, seqs, forced, free, tokens[b::2], f"emu3-style negative prompt prompt {b}")


# ---- research hooks: custom acceptance and draft rules (sjd_jax.sampling.exactness.check) ------------------
def _default_accept(u, px, qx):
    return u * qx < px


def _horizon_repeat(ctx):  # init="horizon-repeat" written as a draft rule: copy the last known token
    last = jnp.take_along_axis(ctx.tokens, ctx.known_end[:, None], axis=1)
    vals = jnp.broadcast_to(last, ctx.token.shape)
    return vals, jax.nn.one_hot(vals, ctx.p_last.shape[-1])


def _mixture_q(ctx):  # half a copy of the last known token, half this iteration's last target p
    V = ctx.p_last.shape[-1]
    last = jnp.take_along_axis(ctx.tokens, ctx.known_end[:, None], axis=1)
    return 0.5 * jax.nn.one_hot(last, V) + 0.5 * ctx.p_last[:, None, :] + jnp.zeros(ctx.token.shape + (V,))


def _mixture(ctx):
    q = _mixture_q(ctx)
    return jax.vmap(jax.vmap(jax.random.categorical))(ctx.key, jnp.log(q)), q


def _mixture_wrong_q(ctx):  # draws from the mixture but reports q = p_last: not lossless
    vals, _ = _mixture(ctx)
    return vals, jnp.broadcast_to(ctx.p_last[:, None, :], ctx.token.shape + ctx.p_last.shape[-1:])


def test_custom_rules_equal_to_builtin_ones_give_the_same_tokens(models):
    """The hooks are wired everywhere the built-in rules act: ``u * q < p`` as a custom acceptance
    rule (chain, tree siblings, deeper levels, maximal coupling's kept drafts) and horizon-repeat as a
    custom draft rule (over ``init="uniform"``: an ignored hook would draft uniformly instead) give the
    built-in horizon-repeat tokens exactly. (That a wrong acceptance rule is caught:
    tests/test_notebook_research.py.)"""
    cond = jnp.asarray(np.arange(256) % 2, jnp.int32)
    kw = dict(method="sjd", window=5, cfg_scale=2.0, top_k=2, tree=(2, 2), coupling="maximal")
    ref = generate(models["B"], CONFIG_B, cond, jax.random.key(3), init="horizon-repeat", **kw)
    out = generate(models["B"], CONFIG_B, cond, jax.random.key(3), init="uniform", accept_rule=_default_accept,
                   draft_rule=_horizon_repeat, **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(out.nfe), np.asarray(ref.nfe))
    assert np.asarray(ref.branch_hits).sum() > 0


@pytest.mark.slow
def test_custom_draft_rule_exact_distribution(models):
    """A new lossless draft rule (a mixture of copying and sampling p, with its true q) passes the
    exact check batched with CFG, top-k and a tree; the same draws reported with a wrong q fail."""
    kw = dict(method="sjd", window=3, cfg_scale=2.5, top_k=3, tree=(2, 1))
    for r in E.check(models["A"], CONFIG, classes=(0, 1), samples=M, draft_rule=_mixture, **kw):
        print("mixture draft rule", r)
        assert r.passed and r.mean_nfe < CONFIG.num_image_tokens, r
    bad = E.check(models["A"], CONFIG, classes=(0,), samples=10_000, draft_rule=_mixture_wrong_q, **kw)[0]
    print("mixture draft rule, wrong q", bad)
    assert bad.pvalue < 1e-12 and bad.tv > 1.3 * bad.tv_bound, bad


def test_chi_square_p_value_equals_scipy():
    rng = np.random.default_rng(0)
    joint = rng.dirichlet(np.ones(40))
    counts = rng.multinomial(3000, rng.dirichlet(np.ones(40) * 30))
    pval, tv, _ = E.fit_counts(counts, joint)
    exp = joint * 3000
    big = exp >= 5
    ref = stats.chisquare(np.append(counts[big], counts[~big].sum()), np.append(exp[big], exp[~big].sum())).pvalue
    np.testing.assert_allclose(pval, ref, rtol=1e-9)
    assert tv == pytest.approx(0.5 * np.abs(counts / 3000 - joint).sum())


def test_custom_rule_errors(params):
    cond = jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match="draft_rule must be a function"):
        generate(params, CONFIG, cond, 0, window=3, draft_rule="uniform")
    with pytest.raises(ValueError, match="dense q rows"):
        generate(params, CONFIG, cond, 0, window=3, draft_rule=_mixture, top_k=2, q_storage="compact")
    with pytest.raises(ValueError, match="draft_rule must return tokens"):
        generate(params, CONFIG, cond, 0, window=3, draft_rule=lambda ctx: (ctx.token, ctx.p_last))

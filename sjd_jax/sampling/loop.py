"""AR / greedy-Jacobi / SJD in one jit-compiled ``lax.while_loop`` with per-row committed lengths.

Notation (per row): ``n`` image tokens are committed; the KV cache holds the condition and tokens
``< n - 1``. A window of W positions feeds token ``n - 1`` and drafts for tokens ``n .. n + W - 2``;
output slot j is p for token ``n + j``. The draft in slot ``i >= 1`` (token ``n + i - 1``, drawn from
q_i) is verified against output slot ``i - 1``: accept iff ``u < p(x) / q(x)``. The first rejected
draft is replaced by a draw from ``norm(max(0, p - q))``; if every draft passes, a bonus token is
drawn from the last slot's p. Later slots' draws from their (current) p become the next drafts with
q = that p; positions beyond the window get uniform random drafts with q = 1/V.

``ar`` is this loop with W = 1 (no drafts: one token per forward). ``jacobi`` is this loop with a
one-hot argmax p: it accepts a draft iff it equals the argmax, so it reproduces greedy AR exactly.
Each row keeps its own n, drafts and acceptance (lossless batching); the loop ends when all rows
are done. Rows that are done still ride along in the (static-shape) forward but change nothing.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from .. import model as gpt
from ..cache import KVCache, init_cache
from ..config import GPTConfig
from . import keys as K
from .processors import target_probs

TRACE_COUNT = 0  # incremented each time the sampler is traced (tests assert no recompiles)
PROGRESS_HOOKS: list = []  # host callbacks f(committed_tokens, iteration); the last one is called


def _report_progress(done, it):
    if PROGRESS_HOOKS:
        PROGRESS_HOOKS[-1](int(done), int(it))


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Everything static about a generate call (hashable; one compile per spec and batch shape)."""

    config: GPTConfig
    method: str = "sjd"
    window: int = 16
    cfg: bool = True  # compute unconditional rows (cfg_scale itself is traced)
    progress: bool = False  # report (committed tokens, iteration) to the host after each iteration
    # Test hook for the negative control only: a deliberately wrong rule must fail the
    # exact-distribution test. "resample_from_p": draw the rejected token from p, not the residual.
    _broken: str = ""

    @property
    def effective_window(self) -> int:
        return 1 if self.method == "ar" else self.window


def make_knobs(cfg_scale, temperature, top_k, top_p) -> dict:
    """The traced numeric sampling arguments, with fixed dtypes (so values never retrace)."""
    return dict(cfg_scale=jnp.float32(cfg_scale), temperature=jnp.float32(temperature),
                top_k=jnp.int32(top_k), top_p=jnp.float32(top_p))


@flax.struct.dataclass
class GenerateOutput:
    tokens: jax.Array  # [B, N] int32 image tokens
    nfe: jax.Array  # [B] int32 model forwards while the row was active (prefill included)
    iterations: jax.Array  # [] int32 loop iterations run (total forwards = iterations + 1)
    committed: jax.Array  # [B, N] int32: tokens committed by forward k (k = 0 is the prefill)

    @property
    def total_nfe(self):
        return self.iterations + 1


def acceptance_stats(nfe, committed, num_tokens: int, window: int) -> dict:
    """Host-side summary of ``GenerateOutput`` rows (``nfe [B]``, ``committed [B, N]``, rows may be
    concatenated across batches): mean NFE, step compression vs AR, tokens committed per loop
    iteration (prefill excluded) and their histogram over 0..window."""
    import numpy as np

    nfe = np.asarray(nfe)
    committed = np.asarray(committed)[:, 1:]
    per_iter = committed[committed > 0]
    return {"nfe_mean": float(nfe.mean()), "step_compression": float(num_tokens / nfe.mean()),
            "mean_accepted_per_iteration": float(per_iter.mean()) if per_iter.size else 0.0,
            "accepted_histogram": np.bincount(per_iter, minlength=window + 1).tolist()}


@flax.struct.dataclass
class _State:
    it: jax.Array  # [] int32 iteration id (prefill = 0)
    n: jax.Array  # [B] committed image tokens
    buf: jax.Array  # [B, N + 2W] committed tokens at [0, n), current drafts at [n, n + W - 1)
    q: jax.Array  # [B, W, V] draft distributions by window slot (slot 0 unused)
    cache: KVCache  # rows [cond; uncond] when cfg
    nfe: jax.Array  # [B]
    committed: jax.Array  # [B, N]


def _gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x: [B, W, ...], idx: [B] -> x[b, idx[b]]: [B, ...]."""
    return jax.vmap(lambda xb, i: xb[i])(x, idx)


def _slice_rows(buf: jax.Array, start: jax.Array, size: int) -> jax.Array:
    return jax.vmap(lambda b, s: jax.lax.dynamic_slice(b, (s,), (size,)))(buf, start)


def _update_rows(buf: jax.Array, vals: jax.Array, start: jax.Array) -> jax.Array:
    return jax.vmap(lambda b, v, s: jax.lax.dynamic_update_slice(b, v, (s,)))(buf, vals, start)


def _generate_impl(spec: SamplerSpec, params, cond, prefix_mask, rows, knobs):
    global TRACE_COUNT
    TRACE_COUNT += 1
    c: GPTConfig = spec.config
    W, N, V, C = spec.effective_window, c.num_image_tokens, c.vocab_size, c.cls_token_num
    B = rows.shape[0]
    greedy_method = spec.method == "jacobi"
    temperature = jnp.where(greedy_method, 0.0, knobs["temperature"])

    def double(x):  # cond rows then uncond rows, sharing tokens and lengths
        return jnp.concatenate([x, x], axis=0) if spec.cfg else x

    def probs(logits):  # logits: [B or 2B, T, V] -> p [B, T, V]
        l_c, l_u = (logits[:B], logits[B:]) if spec.cfg else (logits, None)
        return target_probs(l_c, l_u, knobs["cfg_scale"], temperature, knobs["top_k"], knobs["top_p"])

    def log(p):
        return jnp.log(jnp.maximum(p, 0.0))  # zeros -> -inf: never drawn

    # ---- prefill: condition positions, then token 0 from the last condition output ----------
    null = jnp.concatenate([jnp.zeros((B,), bool), jnp.ones((B,), bool)]) if spec.cfg else \
        jnp.zeros((B,), bool)
    x = gpt.embed_cond(params, c, double(cond), null)
    cache = init_cache(c, x.shape[0], double(prefix_mask))
    logits, cache = gpt.forward(params, c, x, cache)
    p0 = probs(logits[:, -1:])  # [B, 1, V]
    zeros_b = jnp.zeros((B, 1), jnp.int32)
    tok0 = K.categorical(K.slot_keys(rows, K.SAMPLE, zeros_b, 0), log(p0))  # [B, 1]
    init_idx = jnp.arange(1, N + 2 * W, dtype=jnp.int32)[None, :].repeat(B, 0)
    buf = jnp.concatenate([tok0, K.randint(K.slot_keys(rows, K.INIT, init_idx, 0), V)], axis=1)
    state = _State(it=jnp.int32(0), n=jnp.ones((B,), jnp.int32), buf=buf,
                   q=jnp.full((B, W, V), 1.0 / V, jnp.float32), cache=cache,
                   nfe=jnp.ones((B,), jnp.int32),
                   committed=jnp.zeros((B, N), jnp.int32).at[:, 0].set(1))

    slots = jnp.arange(W, dtype=jnp.int32)

    def body(s: _State) -> _State:
        it = s.it + 1
        n = s.n
        active = n < N
        win = _slice_rows(s.buf, n - 1, W)  # [B, W]: token n-1, then drafts for n .. n+W-2
        cache = s.cache.with_length(double(C + n - 1))
        logits, cache = gpt.forward(params, c, gpt.embed_tokens(params, c, double(win)), cache)
        p = probs(logits)  # [B, W, V]: slot j is p for token n + j
        tok = n[:, None] + slots[None, :]  # [B, W] token index of each output slot

        # Verify drafts (slot i >= 1) against slot i - 1: accept iff u < p(x) / q(x).
        d = win[:, 1:]  # [B, W-1]
        p_d = jnp.take_along_axis(p[:, :-1], d[..., None], axis=-1)[..., 0]
        q_d = jnp.take_along_axis(s.q[:, 1:], d[..., None], axis=-1)[..., 0]
        u = K.uniform(K.slot_keys(rows, K.ACCEPT, tok[:, :-1], it))
        acc = (u * q_d < p_d) & (tok[:, :-1] < N)
        L = jnp.sum(jnp.cumprod(acc.astype(jnp.int32), axis=1), axis=1)  # leading accepted drafts
        n_valid = jnp.clip(N - n, 0, W - 1)
        rejected = L < n_valid  # the draft in slot L + 1 was rejected

        draws = K.categorical(K.slot_keys(rows, K.SAMPLE, tok, it), log(p))  # [B, W] x_j ~ p_j
        p_L = _gather_rows(p, L)
        q_L1 = _gather_rows(s.q, jnp.minimum(L + 1, W - 1))
        resid = jnp.maximum(p_L - q_L1, 0.0)
        if spec._broken == "resample_from_p":
            resid = p_L
        resid = jnp.where(jnp.sum(resid, -1, keepdims=True) > 0, resid, p_L)  # fp guard
        fix = K.categorical(K.slot_keys(rows, K.RESIDUAL, (n + L)[:, None], it), log(resid)[:, None])[:, 0]
        draft_next = jnp.concatenate([d, jnp.zeros((B, 1), jnp.int32)], axis=1)  # draft for token n+j
        y = jnp.where(slots[None] < L[:, None], draft_next,
                      jnp.where((slots[None] == L[:, None]) & rejected[:, None], fix[:, None], draws))
        a = jnp.where(active, L + (n + L < N), 0)  # accepted drafts + corrected/bonus token
        n_new = n + a

        # Next drafts: window slot i is token n_new + i - 1 = output slot a + i - 1 of this window.
        # Covered slots keep this iteration's draw with q = p; the rest are uniform random drafts.
        init = K.randint(K.slot_keys(rows, K.INIT, tok + W, it), V)  # tokens n+W .. n+2W-1
        buf = jnp.where(active[:, None], _update_rows(s.buf, jnp.concatenate([y, init], 1), n), s.buf)
        src = a[:, None] + slots[None, :] - 1
        q_new = jnp.take_along_axis(p, jnp.clip(src, 0, W - 1)[..., None], axis=1)
        q_new = jnp.where((src <= W - 1)[..., None], q_new, 1.0 / V)
        q_new = jnp.where(active[:, None, None], q_new, s.q)
        committed = s.committed.at[:, jnp.minimum(it, N - 1)].set(
            jnp.where(active, a, s.committed[:, jnp.minimum(it, N - 1)]))
        if spec.progress:
            jax.debug.callback(_report_progress, jnp.sum(jnp.minimum(n_new, N)), it)
        return _State(it=it, n=n_new, buf=buf, q=q_new, cache=cache, nfe=s.nfe + active,
                      committed=committed)

    def cond_fn(s: _State):
        return jnp.any(s.n < N) & (s.it < N)

    s = jax.lax.while_loop(cond_fn, body, state)
    return GenerateOutput(tokens=s.buf[:, :N], nfe=s.nfe, iterations=s.it, committed=s.committed)


_generate_jit = jax.jit(_generate_impl, static_argnums=0)

"""Sharding on a (data, model) mesh of 8 CPU devices (conftest sets JAX_NUM_CPU_DEVICES=8).

Parity of sharded vs single-device logits, tokens independent of the device count and mesh shape,
sharded checkpoint restore, the memory plan's arithmetic against jax's own shard shapes, and the
streamed batch generation: resume, rank-0-only writing (two real processes), CLI errors.
"""

import json
import os
import socket
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import sjd_jax as S
from sjd_jax.io import checkpoint
from sjd_jax.parallel import distributed
from sjd_jax.parallel import sharding as shd
from sjd_jax.sampling import generate
from sjd_jax.sampling import Knobs, SamplerOptions, compile as compile_sampler, resolve
from sjd_jax.sampling.generate import place_inputs
from tiny import scaled_params

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake CPU) devices")

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
# GQA: 8 query heads, 4 KV heads (model=8 cannot split the KV heads: they fall back to replicated)
GQA = dict(vocab_size=64, grid_size=(4, 4), dim=64, n_layer=2, n_head=8, n_kv_head=4, num_classes=5,
           multiple_of=32)
CONFIGS = {
    "gqa-class-2d": S.GPTConfig(**GQA),
    "gqa-prompt-qknorm-1d": S.GPTConfig(**{**GQA, "num_classes": None, "text_vocab_size": 16,
                                           "cls_token_num": 3, "rope_type": "1d", "rope_interleaved": False,
                                           "qk_norm": True, "head_hidden": 48}),
}


def mesh_of(d, m):
    return shd.make_mesh({"data": d, "model": m})


def _cond(config, B):
    if config.cond_kind == "tokens":
        ids = (jnp.arange(B * config.cls_token_num, dtype=jnp.int32) % config.text_vocab_size).reshape(B, -1)
        return S.Prompt(ids, jnp.ones(ids.shape, bool).at[0, 0].set(False))  # one left-padded prompt
    return jnp.arange(B, dtype=jnp.int32) % config.num_classes


@pytest.fixture(scope="module")
def models():
    return {k: scaled_params(c, seed=1, scale=3.0) for k, c in CONFIGS.items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sharded_teacher_forced_logits_match_single_device(models, name):
    config, params = CONFIGS[name], models[name]
    B = 8
    cond = _cond(config, B)
    tokens = jax.random.randint(jax.random.key(2), (B, config.num_image_tokens), 0, config.vocab_size)
    ref = np.asarray(S.teacher_forced_logits(params, config, cond, tokens))
    for d, m in MESHES:
        mesh = mesh_of(d, m)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = S.teacher_forced_logits(params, config, cond, tokens, mesh=mesh)
        err = float(np.abs(np.asarray(out) - ref).max())
        assert err <= 1e-5, f"{name} mesh ({d}, {m}): max |diff| {err}"
        assert out.sharding.spec[0] == ("data" if d > 1 else None)
        assert out.sharding.spec[-1] == "model" if m > 1 else len(out.sharding.spec) <= 1
        # the KV heads (4) split over model <= 4; model = 8 replicates them and says so
        kv_fallback = [w for w in caught if "kv_heads, size 4" in str(w.message)]
        assert bool(kv_fallback) == (m == 8), [str(w.message) for w in caught]


def test_param_shardings_follow_the_rules():
    config = CONFIGS["gqa-prompt-qknorm-1d"]
    params = S.init_params(config, jax.random.key(0))
    specs = shd.param_specs(params, {"data": 4, "model": 2})
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(
        specs, is_leaf=lambda x: isinstance(x, P))}
    lay = "['params']['layers_0']"
    assert flat[f"{lay}['attention']['wqkv']['kernel']"] == P(None, "model")
    assert flat[f"{lay}['attention']['wo']['kernel']"] == P("model")
    assert flat[f"{lay}['attention']['q_norm']['scale']"] == P("model")
    assert flat[f"{lay}['attention']['k_norm']['bias']"] == P("model")
    assert flat[f"{lay}['feed_forward']['w1']['kernel']"] == P(None, "model")
    assert flat[f"{lay}['feed_forward']['w2']['kernel']"] == P("model")
    assert flat[f"{lay}['attention_norm']['weight']"] == P()
    assert flat["['params']['tok_embeddings']['embedding']"] == P("model")
    assert flat["['params']['output']['kernel']"] == P(None, "model")
    assert flat["['params']['head_proj']['bias']"] == P("model")
    # a parameter without a rule is an error, not silently replicated
    with pytest.raises(ValueError, match="no sharding rule for parameter"):
        shd.param_logical_axes({"params": {"mystery": {"kernel": jnp.zeros((4, 4))}}})


def test_parse_mesh_and_fallback():
    assert shd.parse_mesh(None, 8) == {"data": 8, "model": 1}
    assert shd.parse_mesh("data=4,model=2", 8) == {"data": 4, "model": 2}
    assert shd.parse_mesh("model=4", 8) == {"data": 2, "model": 4}
    assert shd.parse_mesh("data=2", 8) == {"data": 2, "model": 4}
    assert shd.parse_mesh("data=-1,model=2", 8) == {"data": 4, "model": 2}
    assert shd.parse_mesh("data=3,model=2", 8) == {"data": 3, "model": 2}  # a subset of the devices
    assert shd.make_mesh({"data": 3, "model": 2}).devices.size == 6
    for bad, match in [("data=4,model=4", "needs 16 devices"), ("data=3", "not divisible"),
                       ("pipe=2", "axes: data, model"), ("data=x", "not an integer"), ("data=0", "positive"),
                       ("data=-1,model=-1", "at most one")]:
        with pytest.raises(ValueError, match=match):
            shd.parse_mesh(bad, 8)
    with pytest.warns(UserWarning, match="not divisible by mesh axis model=4; replicating"):
        assert shd.spec_for((6, 10), ("batch", "vocab"), {"data": 2, "model": 4}, "test-array") == P("data")


RUNS = {  # method -> (generate kwargs, meshes); None = one device, no mesh
    "ar": (dict(method="ar"), [None, (2, 1), (8, 1), (2, 4)]),
    # 1, 2, 8 devices (4 devices: the two-process job below, 2 x 2 devices against one process)
    "sjd": (dict(method="sjd", window=5), [None, (2, 1), (8, 1), (4, 2), (1, 8)]),
    "sjd-pac-gumbel-tree": (dict(method="sjd", window=7, coupling="gumbel", tree=(2, 2), init="vertical-repeat"),
                            [None, (8, 1), (4, 2)]),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_generate_tokens_identical_across_device_counts(models, run):
    kwargs, meshes = RUNS[run]
    config, params = CONFIGS["gqa-class-2d"], models["gqa-class-2d"]
    cond = _cond(config, 8)
    ref = None
    for mm in meshes:
        mesh = None if mm is None else mesh_of(*mm)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = generate(params, config, cond, 7, cfg_scale=2.5, top_k=20, mesh=mesh, **kwargs)
        got = (np.asarray(out.tokens), np.asarray(out.nfe), np.asarray(out.branch_hits))
        if mesh is not None:
            assert out.tokens.sharding.spec == (P("data") if mm[0] > 1 else P())
        if ref is None:
            ref = got
            assert (got[0] >= 0).all() and (got[0] < config.vocab_size).all()
            continue
        for a, b, what in zip(ref, got, ("tokens", "nfe", "branch hits")):
            np.testing.assert_array_equal(a, b, err_msg=f"{run}: {what} differ on mesh {mm}")
    if run == "sjd-pac-gumbel-tree":
        assert ref[2].sum() > 0  # the tree's K/V moves ran on the sharded cache


def test_sampler_state_shardings_and_donation(models):
    config, params = CONFIGS["gqa-class-2d"], models["gqa-class-2d"]
    mesh = mesh_of(4, 2)
    knobs = Knobs.make(2.0, 1.0, 0, 1.0)
    spec = resolve(config, SamplerOptions(method="sjd", window=5, q_storage="dense"), knobs, mesh=mesh)
    B = 8
    args = place_inputs(mesh, params, _cond(config, B), jnp.ones((B, 1), bool), jax.random.split(jax.random.key(0), B),
                        knobs, None)
    exes = compile_sampler(spec, *args[1:4])
    prefill, loop = exes.prefill, exes.loop
    state = prefill(*args[:5], None)
    assert state.cache.k[0].sharding.spec == P("data", None, "model")  # rows over data, KV heads over model
    assert state.q.sharding.spec == P("data", None, "model")  # draft q over the vocabulary
    assert state.buf.sharding.spec == P("data")
    exe = loop.lower(args[0], state, args[3], args[4], None).compile()
    cache_bytes = sum(x.addressable_shards[0].data.nbytes for x in state.cache.k + state.cache.v)
    # donated state: the loop's output state aliases its input (the cache is updated in place);
    # XLA reports the per-device SPMD program
    assert exe.memory_analysis().alias_size_in_bytes >= cache_bytes
    final, out = loop(args[0], state, args[3], args[4], None)
    assert state.cache.k[0].is_deleted()  # donated
    assert final.cache.k[0].sharding.spec == P("data", None, "model")
    assert out.tokens.sharding.spec == P("data") and out.tokens.shape == (B, config.num_image_tokens)


def test_checkpoint_restores_straight_into_shardings(tmp_path, models):
    config, params = CONFIGS["gqa-prompt-qknorm-1d"], models["gqa-prompt-qknorm-1d"]
    checkpoint.save(tmp_path / "ck", "gpt", config, params)
    mesh = mesh_of(2, 4)
    _, restored = checkpoint.load(tmp_path / "ck", mesh=mesh)
    want = shd.param_shardings(params, mesh)
    for (path, x), sh, ref in zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(want),
                                  jax.tree.leaves(params)):
        assert x.sharding.is_equivalent_to(sh, x.ndim), jax.tree_util.keystr(path)
        assert x.addressable_shards[0].data.shape == sh.shard_shape(x.shape)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))
    with pytest.raises(ValueError, match="sharding or mesh"):
        checkpoint.load(tmp_path / "ck", sharding=want["params"]["norm"]["weight"], mesh=mesh)


def test_memory_plan_arithmetic_matches_jax_shard_shapes(models):
    """per_device_bytes (pure arithmetic, for meshes we do not have) == jax's shard shapes."""
    from sjd_jax.cli.shard_plan import plan

    config, params = CONFIGS["gqa-class-2d"], models["gqa-class-2d"]
    for d, m in [(4, 2), (2, 4)]:
        mesh = mesh_of(d, m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            specs = shd.param_specs(params, mesh)
        for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
            shard = NamedSharding(mesh, s).shard_shape(x.shape)
            assert shd.per_device_bytes(x.shape, x.dtype, s, mesh) == int(np.prod(shard)) * x.dtype.itemsize
        r = plan(config, {"data": d, "model": m}, batch_per_device=2, window=5)
        total = sum(x.nbytes for x in jax.tree.leaves(params))
        assert r["params_gib"]["total"] * 2**30 == total
        assert total / m <= r["params_gib"]["per_device"] * 2**30 < total  # norms/cls table replicated
        # KV cache: rows over data and KV heads over model -> exactly 1 / (d * m) per device
        assert r["kv_cache_gib"]["per_device"] * d * m == pytest.approx(r["kv_cache_gib"]["total"])
        assert r["cfg_rows"] == 2 * 2 * d


def test_shard_plan_cli_reports_the_big_configs(capsys):
    from sjd_jax.cli.shard_plan import main

    assert main(["--config", "llamagen-xl", "--mesh", "data=4,model=4"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["global_batch"] == 32 and r["devices"] == 16
    assert 770e6 < r["params_gib"]["total"] * 2**30 / 4 < 780e6  # LlamaGen GPT-XL: 775M float32 params
    assert r["params_gib"]["per_device"] < r["params_gib"]["total"] / 3.9
    assert r["replicated_fallbacks"] == []
    assert main(["--config", "nope"]) == 2
    assert "unknown model 'nope' (--model)" in capsys.readouterr().err


# ---- streamed batch generation ------------------------------------------------------------------

def _cli(args):
    from sjd_jax.cli.generate import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(args)


BATCH = ["--class", "2", "7", "--n", "3", "--quiet", "--window", "8", "--method", "sjd"]


@pytest.fixture(scope="module")
def grid_tokens():
    """The BATCH items as one grid on one device: item i = class [2, 7][i % 2], example id i."""
    from sjd_jax.families import presets

    b = presets.load("fashion-mnist")
    out = generate(b.gpt_params, b.gpt_config, jnp.asarray([2, 7, 2, 7, 2, 7], jnp.int32), 0, method="sjd",
                   window=8, **b.preset.knobs())
    return np.asarray(out.tokens)


def test_batch_generation_resumes_and_equals_the_grid(tmp_path, capsys, grid_tokens):
    out = tmp_path / "run"
    assert _cli(BATCH + ["--out-dir", str(out), "--batch-per-device", "1", "--mesh", "data=2,model=1",
                         "--schedule", "static"]) == 0
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (6, 256)
    np.testing.assert_array_equal(np.load(out / "labels.npy"), [2, 7, 2, 7, 2, 7])
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(6)]
    parts = sorted((out / "parts").iterdir())
    assert [p.name for p in parts] == ["000000-000001.npz", "000002-000003.npz", "000004-000005.npz"]

    np.testing.assert_array_equal(tokens, grid_tokens)  # the same items as the grid, other batching

    # interrupted run: a chunk's part missing (its PNGs may be there or not), another part damaged
    parts[1].unlink()
    (out / "images" / "000003.png").unlink()
    parts[2].write_bytes(b"not an npz")
    (out / "tokens.npy").unlink()
    capsys.readouterr()
    # resume on another mesh and chunking: only the 4 missing items are generated, tokens unchanged
    assert _cli(BATCH + ["--out-dir", str(out), "--batch-per-device", "2", "--mesh", "data=4,model=2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)  # --quiet --json: the stats object alone on stdout
    assert r["generated_this_run"] == 4 and r["skipped_done"] == 2 and r["out_dir"] == str(out)
    np.testing.assert_array_equal(np.load(out / "tokens.npy"), tokens)
    assert (out / "images" / "000003.png").is_file()
    st = json.loads((out / "stats.json").read_text())
    assert st["generated_this_run"] == 4 and st["skipped_done"] == 2 and st["mesh"] == {"data": 4, "model": 2}
    assert not [p for p in out.rglob(".*tmp*")]  # nothing half-written left behind
    assert st["schedule"]["schedule"] == "continuous"  # the resume ran the default schedule

    # continuous batching from scratch, rows refilled one shard's worth at a time: the same tokens
    out2 = tmp_path / "run2"
    assert _cli(BATCH + ["--out-dir", str(out2), "--batch-per-device", "2", "--mesh", "data=2,model=1",
                         "--schedule", "continuous", "--refill-rows", "2"]) == 0
    np.testing.assert_array_equal(np.load(out2 / "tokens.npy"), tokens)
    ids = np.concatenate([np.load(p)["ids"] for p in (out2 / "parts").iterdir()])
    assert sorted(ids.tolist()) == list(range(6))
    st2 = json.loads((out2 / "stats.json").read_text())["schedule"]
    assert st2["refill_rows"] == 2 and st2["refills"] >= 1 and st2["items"] == 6

    # a complete run: nothing to do; other settings in the same directory are refused
    assert _cli([a for a in BATCH if a != "--quiet"] + ["--out-dir", str(out)]) == 0
    assert "0 generated now, 6 already done" in capsys.readouterr().out
    assert _cli(BATCH + ["--seed", "1", "--out-dir", str(out)]) == 2
    assert "holds a run with other settings (seed differ)" in capsys.readouterr().err


@pytest.mark.parametrize("args,match", [
    (["--batch-per-device", "4"], "need --out-dir"),
    (["--schedule", "static"], "need --out-dir"),
    (["--out-dir", "X", "--mesh", "data=2", "--refill-rows", "1"], "multiple of the mesh's data axis"),
    (["--out-dir", "X", "--batch-per-device", "2", "--refill-rows", "9"], "--refill-rows must be an integer in 1..2"),
    (["--out-dir", "X", "--batch-per-device", "0"], "--batch-per-device must be an integer in 1..1048576, got 0"),
    (["--out-dir", "X", "--mesh", "data=3"], "not divisible"),
    (["--out-dir", "X", "--mesh", "data=4,model=4"], "needs 16 devices"),
    (["--mesh", "tensor=2"], "axes: data, model"),
    (["--out-dir", "X", "--out", "a.png"], "one PNG per item"),
    (["--out-dir", "X", "--cpu-devices", "3"], "already started with 8 devices"),
])
def test_batch_cli_errors(tmp_path, capsys, args, match):
    args = [str(tmp_path / a) if a == "X" else a for a in args]
    assert _cli(["--quiet"] + args) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert not (tmp_path / "X").exists()


def test_cluster_env_detection():
    assert distributed.cluster_env({}) is None
    assert distributed.cluster_env({"SLURM_NTASKS": "1"}) is None
    assert distributed.cluster_env({"JAX_COORDINATOR_ADDRESS": "h:1"}) == "explicit"
    assert distributed.cluster_env({"SLURM_NTASKS": "4"}) == "slurm"
    assert distributed.cluster_env({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"
    assert distributed.cluster_env({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
    assert distributed.cluster_env({"TPU_WORKER_HOSTNAMES": "a"}) is None
    assert distributed.maybe_initialize("off") is False
    with pytest.raises(ValueError, match="--distributed must be"):
        distributed.maybe_initialize("maybe")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(args_of_rank):
    """Run ``sjd-jax generate`` as a real 2-process job (jax.distributed over gloo, 2 CPU devices per
    process = 4 global devices); returns the two logs."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank), PYTHONWARNINGS="ignore")
        cmd = [sys.executable, "-m", "sjd_jax.cli.main", "generate", *args_of_rank(rank)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    return logs


@pytest.mark.slow
def test_two_processes_only_rank0_writes_and_tokens_match(tmp_path, grid_tokens):
    """Batch mode on 2 processes: only process 0 writes, and its tokens equal a single-process run's.
    Each rank gets its own output path: anything rank 1 wrote would show. (Grid mode's gather,
    ``distributed.gather_output``, ran here on two processes too until the suite outgrew its budget;
    it is now exercised on one process only.)"""
    logs = _two_processes(lambda r: [*BATCH, "--no-png", "--batch-per-device", "1", "--out-dir", str(tmp_path / f"rank{r}")])
    assert not (tmp_path / "rank1").exists(), "process 1 wrote files"
    np.testing.assert_array_equal(np.load(tmp_path / "rank0" / "tokens.npy"), grid_tokens)
    st = json.loads((tmp_path / "rank0" / "stats.json").read_text())
    assert st["processes"] == 2 and st["devices"] == 4 and st["mesh"] == {"data": 4, "model": 1}, st
    assert "error" not in logs[0] + logs[1]


@pytest.mark.slow
def test_bench_mesh_cli(tmp_path, capsys):
    from sjd_jax.cli.bench_mesh import main

    out = tmp_path / "bm.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--images", "3", "--global-batch", "2", "--window", "8", "--meshes", "data=1;data=2",
                     "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["mesh"] for r in rows] == [{"data": 1, "model": 1}, {"data": 2, "model": 1}]
    assert all(r["tokens_equal_baseline"] and r["global_batch"] == 2 and r["segments"] >= 2 for r in rows)
    assert all(r["schedule"] == "continuous" and 0 < r["useful_fraction"] <= 1 for r in rows)
    assert rows[0]["speedup_vs_baseline"] == 1.0 and rows[1]["images_per_s"] > 0
    capsys.readouterr()
    assert main(["--meshes", "data=16", "--out", str(out)]) == 2
    assert "needs 16 devices; 8 available" in capsys.readouterr().err
    assert main(["--meshes", "data=4", "--global-batch", "6", "--out", str(out)]) == 2

"""Disk-staged params (sjd_jax.convert.staging): round trip, temp-dir cleanup, bounded anonymous memory."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from sjd_jax.convert.staging import PeakAnon, Staging, as_cpu_arrays, rss_anon, save_bounded
from sjd_jax.convert.tree import paths_of
from sjd_jax import GPTConfig, abstract_params
from sjd_jax.io import checkpoint


def _small():
    return GPTConfig(vocab_size=64, dim=32, n_layer=2, n_head=2, grid_size=(4, 4), num_classes=10)


def _stage_all(st, config, seed=0):
    rng = np.random.default_rng(seed)
    for path, sds in paths_of(abstract_params(config)).items():
        st.put(path, rng.standard_normal(sds.shape, np.float32))
    return st.tree()


def test_round_trip_bit_identical(tmp_path):
    config = _small()
    out = tmp_path / "ckpt"
    with Staging(out=out) as st:
        params = _stage_all(st, config)
        root = st.root
        assert all(isinstance(x, np.memmap) for x in jax.tree.leaves(params))
        save_bounded(out, "gpt", config, params)
        want = jax.tree.map(np.array, params)
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging or temp left
    cfg2, loaded = checkpoint.load(out)
    assert cfg2 == config
    assert jax.tree.structure(loaded) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), b)
    with Staging(out=out) as st:  # refuses to overwrite without force, like checkpoint.save
        with pytest.raises(ValueError, match="exists"):
            save_bounded(out, "gpt", config, _stage_all(st, config))


def test_cpu_arrays_alias_staged_files(tmp_path):
    with Staging(dir=tmp_path) as st:
        m = st.put(("a",), np.arange(4096, dtype=np.float32).reshape(64, 64))
        y = as_cpu_arrays({"a": m})["a"]
        assert y.unsafe_buffer_pointer() == m.ctypes.data  # zero-copy: no anonymous copy
        np.testing.assert_array_equal(np.asarray(y), m)
        del y


def test_temp_dir_removed_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Staging(dir=tmp_path) as st:
            st.put(("x",), np.ones((8, 8)))
            root = st.root
            assert root.exists()
            raise RuntimeError("boom")
    assert not root.exists()
    with pytest.raises(ValueError, match="params do not match"):
        with Staging(dir=tmp_path) as st:
            st.put(("params", "nope"), np.ones(3))
            root = st.root
            save_bounded(tmp_path / "bad", "gpt", _small(), st.tree())
    assert not root.exists() and not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.skipif(not sys.platform.startswith("linux") or rss_anon() == 0, reason="needs /proc RssAnon")
def test_save_bounded_anonymous_memory(tmp_path):
    # ~1 GiB of float32 in many small leaves (largest 32 MiB): checkpoint.save's write budget is
    # 2x the largest leaf, so anonymous growth must stay far below the params size.
    config = GPTConfig(vocab_size=8192, dim=1024, n_layer=19, n_head=8, grid_size=(4, 4), num_classes=10)
    out = tmp_path / "big"
    with Staging(out=out) as st:
        total = 0
        for i, (path, sds) in enumerate(paths_of(abstract_params(config)).items()):
            m = st.alloc(path, sds.shape)
            m[...] = np.float32(i) * np.float32(1e-3)  # cheap content; every page is written
            total += m.nbytes
            del m
            st.seal(path)
        params = st.tree()
        assert total > 0.9 * (1 << 30)
        with PeakAnon() as p:
            save_bounded(out, "gpt", config, params)
        assert p.growth < 0.4 * total, (p.growth >> 20, total >> 20)
        # spot check one leaf from disk
        _, loaded = checkpoint.load(out)
        k = loaded["params"]["layers_7"]["feed_forward"]["w2"]["kernel"]
        np.testing.assert_array_equal(np.asarray(k), params["params"]["layers_7"]["feed_forward"]["w2"]["kernel"])
        del loaded, k, params

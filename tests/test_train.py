"""Fashion-MNIST loader, training smoke tests (loss goes down), exact resume, Fréchet distance."""

import gzip
import json

import jax
import numpy as np
import pytest

from sjd_jax import GPTConfig, load
from sjd_jax.fashion import data
from sjd_jax.fashion.classifier import frechet_distance
from sjd_jax.fashion.train import TrainConfig, batch_indices, train_gpt, train_vq
from sjd_jax.core.vq import VQConfig


@pytest.fixture(scope="module")
def test_split():
    return data.load("test")


def test_loader_shapes_and_labels(test_split):
    x, y = test_split
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    assert np.bincount(y).tolist() == [1000] * 10  # the test split is balanced
    xt, yt = data.load("train")
    assert xt.shape == (60000, 28, 28) and set(np.unique(yt)) == set(range(10))
    m = data.to_model_range(x[:3])
    assert m.shape == (3, 32, 32, 1) and m.min() >= -1 and m.max() <= 1
    assert (m[:, :2] == -1).all() and (m[:, :, -2:] == -1).all()  # zero (black) padding
    np.testing.assert_array_equal(data.from_model_range(m), x[:3])


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        data.load("val")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load("test", tmp_path)
    raw = gzip.open(data.DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").read()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:1000])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(gzip.open(data.DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz").read())
    with pytest.raises(ValueError, match="truncated"):
        data.load("test", tmp_path)


def test_batches_are_a_permutation_per_epoch():
    t = TrainConfig(steps=10, batch=4, seed=3)
    seen = np.concatenate([batch_indices(12, t, s) for s in range(3)])
    assert sorted(seen.tolist()) == list(range(12))
    assert not np.array_equal(batch_indices(12, t, 0), batch_indices(12, t, 3))  # next epoch reshuffles


TINY_VQ = VQConfig(codebook_size=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, in_channels=1,
                   out_channels=1)


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def test_vq_training_lowers_the_loss_and_resumes_exactly(tmp_path, test_split):
    x = data.to_model_range(test_split[0][:256])
    t = TrainConfig(steps=12, batch=16, lr=3e-3, warmup=2, log_every=1, ckpt_every=100)
    full, done = train_vq(tmp_path / "a", TINY_VQ, t, x, quiet=True)
    loss = _losses(tmp_path / "a")
    assert done and len(loss) == 12 and np.mean(loss[-3:]) < 0.7 * np.mean(loss[:3])
    # interrupted after 5 steps, then resumed: bit-identical to the uninterrupted run
    _, done = train_vq(tmp_path / "b", TINY_VQ, t, x, quiet=True, stop_after=5)
    assert not done and not (tmp_path / "b" / "model").exists()
    resumed, done = train_vq(tmp_path / "b", TINY_VQ, t, x, quiet=True)
    assert done
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    config, params = load(tmp_path / "b" / "model")
    assert config == TINY_VQ


def test_gpt_training_lowers_the_loss(tmp_path):
    c = GPTConfig(vocab_size=16, grid_size=4, dim=32, n_layer=1, n_head=2, num_classes=3)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 256).astype(np.int32)
    tokens = (labels[:, None] * 5 + np.arange(16)[None] % 3).astype(np.int32)  # learnable structure
    t = TrainConfig(steps=30, batch=16, lr=1e-2, warmup=2, log_every=1, class_dropout=0.1)
    _, done = train_gpt(tmp_path, c, t, tokens, labels, quiet=True)
    loss = _losses(tmp_path)
    assert done and np.mean(loss[-5:]) < 0.5 * np.mean(loss[:5])
    assert load(tmp_path / "model")[0] == c


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # N(0, I) vs N(m, 4I): |m|^2 + 3 * (1 + 4 - 2 * 2) = |m|^2 + 3
    b = 2 * rng.standard_normal((4000, 3)) + np.array([1.0, 0.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.1)

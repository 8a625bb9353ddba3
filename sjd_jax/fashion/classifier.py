"""A small CNN trained on real Fashion-MNIST: class accuracy of generated samples and a Fréchet
distance on its penultimate (128-d) features."""

from __future__ import annotations

import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, features: bool = False):  # x: [B, 28, 28] uint8
        h = x.astype(jnp.float32)[..., None] / 255.0
        h = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), name="conv1")(h)), (2, 2), (2, 2))
        h = nn.max_pool(nn.relu(nn.Conv(64, (3, 3), name="conv2")(h)), (2, 2), (2, 2))
        f = nn.relu(nn.Dense(128, name="fc1")(h.reshape(h.shape[0], -1)))  # [B, 128]
        return f if features else nn.Dense(10, name="fc2")(f)


def init_params(key):
    return CNN().init(key, jnp.zeros((1, 28, 28), jnp.uint8))


@jax.jit
def logits(params, x):
    return CNN().apply(params, x)


@jax.jit
def features(params, x):
    return CNN().apply(params, x, features=True)


def _batched(fn, params, x, batch=1000):
    return np.concatenate([np.asarray(fn(params, jnp.asarray(x[i:i + batch]))) for i in range(0, len(x), batch)])


def predict(params, images: np.ndarray) -> np.ndarray:
    """uint8 ``[n, 28, 28]`` -> predicted class ``[n]``."""
    return _batched(logits, params, images).argmax(-1)


def embed(params, images: np.ndarray) -> np.ndarray:
    return _batched(features, params, images)


def train(images, labels, *, epochs: int = 3, batch: int = 128, lr: float = 1e-3, seed: int = 0,
          quiet: bool = False):
    from tqdm import tqdm

    params = init_params(jax.random.key(seed))
    opt = optax.adam(lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(CNN().apply(p, x), y).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    n = len(images) // batch
    with tqdm(total=epochs * n, desc="train-classifier", unit="step", file=sys.stderr, disable=quiet) as bar:
        for epoch in range(epochs):
            perm = np.random.default_rng([seed, epoch]).permutation(len(images))
            for i in range(n):
                idx = perm[i * batch:(i + 1) * batch]
                params, opt_state, loss = step(params, opt_state, jnp.asarray(images[idx]), jnp.asarray(labels[idx]))
                if i % 50 == 0:
                    bar.set_postfix(loss=f"{float(loss):.3f}")
                bar.update(1)
    return params


META = {"format": "sjd-jax", "kind": "classifier", "arch": "CNN-32-64-128"}


def save(path, params, force: bool = True) -> None:
    """An sjd-jax params directory (``checkpoint.write``: atomic, with checksums); ``force``
    replaces only a directory sjd-jax wrote."""
    from sjd_jax.io import checkpoint

    checkpoint.write(path, META, params, force=force)


def load(path):
    from sjd_jax.io import checkpoint

    path = Path(path).absolute()
    meta = checkpoint.read_meta(path, kinds=("classifier",))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            jax.eval_shape(init_params, jax.random.key(0)))
    return checkpoint.restore(path, meta, abstract)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a: [n, d]`` and ``b: [m, d]``.

    tr(sqrt(S_a S_b)) = sum sqrt(eig(S_a^1/2 S_b S_a^1/2)) (a symmetric PSD matrix: numpy eigh only).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    sa_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sa_half @ sb @ sa_half), 0, None)).sum()
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross)

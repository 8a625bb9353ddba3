"""Tiny random-weight models shared by the tests."""

import jax.numpy as jnp

import sjd_jax as S
from sjd_jax.sampling.exactness import scaled_params, target_np as np_target  # noqa: F401  (shared by the tests)


def tiny_config(**overrides) -> S.GPTConfig:
    base = dict(vocab_size=32, grid_size=(4, 4), dim=32, n_layer=2, n_head=4, num_classes=3)
    base.update(overrides)
    return S.GPTConfig(**base)


def class_cond(*ids):
    return jnp.asarray(ids, jnp.int32)


def c2i_checkpoints(directory, seed: int = 0):
    """``directory/gpt`` + ``directory/vq``: a tiny class-conditional model in the layout
    ``sjd-jax generate --model llamagen-c2i --ckpt DIR`` reads (random weights)."""
    from pathlib import Path

    import jax

    from sjd_jax.io import checkpoint
    from sjd_jax.core.model import init_params
    from sjd_jax.core.vq import VQConfig
    from sjd_jax.core.vq.model import init_vq_params

    directory = Path(directory)
    gpt = tiny_config()
    vq = VQConfig(codebook_size=gpt.vocab_size, codebook_embed_dim=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                  z_channels=32)
    checkpoint.save(directory / "gpt", "gpt", gpt, init_params(gpt, jax.random.key(seed)))
    checkpoint.save(directory / "vq", "vq", vq, init_vq_params(vq, jax.random.key(seed + 1), image_size=8))
    return directory

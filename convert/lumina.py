"""Lumina-mGPT / Anole checkpoints -> one sjd-jax "lumina" checkpoint (LLM + VQGAN + tokenizer).

Sources: the HF-format Chameleon snapshot (``config.json`` with ``vocabulary_map``, safetensors
shards + index, ``tokenizer.json``) and Chameleon's VQGAN ``vqgan.ckpt`` (Lightning pickle
``{"state_dict": ...}``, read with ``weights_only=True``; also .safetensors with the same names).
The VQGAN's shape (channels, levels, residual blocks, attention levels, codebook) is read from its
tensors, so ``vqgan.yaml`` is not needed.
"""

from __future__ import annotations

import re

from sjd_jax.core.vq import VQConfig

from sjd_jax.convert.sizes import latent_side
from sjd_jax.convert.tree import channel_multiple, count_indexed, shape_of


def vqgan_config(tensors: dict, name: str = "vqgan") -> VQConfig:
    """taming-transformers VQGAN tensors -> VQConfig (plain codebook, attention where the encoder has it)."""
    need = ("encoder.conv_in.weight", "quantize.embedding.weight", "quant_conv.weight", "decoder.conv_in.weight")
    if any(k not in tensors for k in need) or not any(k.startswith("encoder.down.") for k in tensors):
        raise ValueError(f"{name} is not a taming/Chameleon VQGAN state dict (needs {', '.join(need)}, encoder.down.*)")
    levels = count_indexed(tensors, r"encoder\.down\.(\d+)\.", name)
    n_res = count_indexed(tensors, r"encoder\.down\.0\.block\.(\d+)\.", name)
    ch = shape_of(tensors, "encoder.conv_in.weight", 4, name)[0]
    mults = tuple(channel_multiple(tensors, f"encoder.down.{i}.block.0.conv1.weight", ch, name) for i in range(levels))
    attn = tuple(sorted({int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.down\.(\d+)\.attn\.", k))}))
    K, D = shape_of(tensors, "quantize.embedding.weight", 2, name)
    return VQConfig(codebook_size=K, codebook_embed_dim=D, ch=ch, ch_mult=mults, num_res_blocks=n_res,
                    z_channels=shape_of(tensors, "quant_conv.weight", 4, name)[1], codebook_l2_norm=False,
                    attn_levels=attn)


def vocabulary(config: dict, tokenizer_json: dict | None) -> dict:
    """Token name -> id: the config's ``vocabulary_map`` (Lumina ships it), else the tokenizer's
    vocabulary plus its added tokens."""
    vocab = config.get("vocabulary_map")
    if isinstance(vocab, dict) and vocab:
        return {str(k): int(v) for k, v in vocab.items()}
    if tokenizer_json is None:
        raise ValueError("config.json has no vocabulary_map and no tokenizer.json was given: the image "
                         "token ids cannot be read")
    vocab = (tokenizer_json.get("model") or {}).get("vocab")
    vocab = dict(vocab) if isinstance(vocab, dict) else {}
    vocab.update({t["content"]: t["id"] for t in tokenizer_json.get("added_tokens") or []
                  if isinstance(t, dict) and "content" in t and "id" in t})
    return vocab


def latent_of(args, src_name: str, downsample: int) -> tuple[int, int]:
    """Image size from ``--image-size`` or a ``-512``/``-768``/``-1024`` suffix of the snapshot name."""
    if args.image_size is not None:
        side = latent_side(args.image_size, downsample, f"--image-size {args.image_size}")
        return side, side
    m = re.search(r"[-_](\d{2,4})(?:[-_][A-Za-z]+)?$", src_name)
    if not m:
        raise ValueError(f"cannot tell the image size from {src_name!r}; pass --image-size (e.g. 768)")
    side = latent_side(int(m.group(1)), downsample, f"{src_name!r} (size from its name; --image-size overrides it)")
    return side, side

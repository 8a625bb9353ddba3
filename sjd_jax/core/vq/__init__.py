"""VQ image tokenizers."""

from sjd_jax.core.vq.model import (VQConfig, VQModel, abstract_vq_params, codebook_vectors, decode_tokens, encode_images, init_vq_params,
                    to_uint8)

__all__ = ["VQConfig", "VQModel", "abstract_vq_params", "codebook_vectors", "decode_tokens", "encode_images", "init_vq_params", "to_uint8"]

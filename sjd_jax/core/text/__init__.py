"""Text encoders for text-to-image models (T5 for LlamaGen-T2I)."""

from sjd_jax.core.text.t5 import (T5Config, T5Encoder, abstract_t5_params, caption_features, encode, init_t5_params,
                 left_pad_captions, load_tokenizer, relative_buckets, tokenize)

__all__ = ["T5Config", "T5Encoder", "abstract_t5_params", "caption_features", "encode", "init_t5_params",
           "left_pad_captions", "load_tokenizer", "relative_buckets", "tokenize"]

"""The model: configs, the Llama-family transformer, its KV cache and RoPE, input checks, the VQ
decoders (``vq``) and the T5 text encoder (``text``)."""

"""PyTorch/safetensors -> sjd-jax converters. torch is imported lazily, only where a .pt file is read."""

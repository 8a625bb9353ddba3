"""Tiny random checkpoints in the file formats of the real downloads, for offline / CI runs of
``llamagen_janus.ipynb`` (``SJD_JAX_OFFLINE=1``): the notebook's download cell calls these instead
of ``huggingface_hub``, and every later cell (convert, load, generate, decode) runs unchanged.

* ``llamagen_c2i(path)``: a LlamaGen class-to-image GPT as ``torch.save({"model": state_dict})``,
  the container of ``FoundationVision/LlamaGen`` ``c2i_B_256.pt``. GPT-B's width (dim 768, so the
  converter infers 12 heads as for the released file), 1000 classes + the null class, but one layer,
  a 64-code vocabulary and a 4x4 token grid (the ``_64`` file-name suffix: 64 px / 16).
* ``llamagen_vq(path)``: a VQ-16 (5 levels, 16x downsampling) as ``{"model": state_dict, ...}``
  with LlamaGen's key names and its ``codebook_used`` buffer, the layout of ``vq_ds16_c2i.pt``;
  64 codes of 8 dims, 32 base channels.
* ``janus_pro(dir)``: an HF-format snapshot like ``deepseek-community/Janus-Pro-1B``, written by
  transformers' own ``JanusForConditionalGeneration.save_pretrained`` from a tiny random config
  (``config.json``, ``model.safetensors``, ``generation_config.json``) plus a word-level
  ``tokenizer.json`` with Janus' special tokens; a 4x4 grid of a 64-code VQ-16 (64 px images).

Random weights say nothing about acceptance rates or image quality: these only exercise the code.
Needs torch and transformers (the project's test extra).
"""

from __future__ import annotations

import json
from pathlib import Path

GRID = 4  # image tokens per side (64 px with a VQ-16)
CODES = 64  # VQ codebook size = GPT image vocabulary
VQ_MULT = (1, 1, 2, 2, 4)  # LlamaGen's VQ-16 levels (Janus-Pro uses the same tokenizer)
# Janus special tokens (ids in the tiny text vocabulary)
PAD, BOS, EOS, IMAGE, UNK, BOI = 0, 1, 2, 3, 4, 5
WORDS = ("<|User|>: <|Assistant|>: a an the of in on under with and red blue green yellow white black "
         "big small fox cat dog bird house tree car moon sun snow rain sky sea forest mountain city "
         "river flower painting photo of portrait").split()


def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def llamagen_c2i(path, seed: int = 0, n_layer: int = 1) -> Path:
    """Write a tiny LlamaGen c2i GPT checkpoint (``{"model": state_dict}``) to ``path``; its name
    should end in ``_64.pt`` so that the converter reads the 4x4 grid from it."""
    import torch

    from sjd_jax import GPTConfig

    c = GPTConfig(vocab_size=CODES, grid_size=GRID, dim=768, n_layer=n_layer, n_head=12, num_classes=1000)
    g = _gen(seed)

    def r(*shape, std=None):  # 1/sqrt(fan-in) scale (std given for embeddings)
        return torch.randn(*shape, generator=g) * (std if std is not None else shape[-1] ** -0.5)

    sd = {"cls_embedding.embedding_table.weight": r(c.num_classes + 1, c.dim, std=1.0),
          "tok_embeddings.weight": r(c.vocab_size, c.dim, std=1.0),
          "norm.weight": 1 + 0.1 * r(c.dim, std=1.0), "output.weight": r(c.vocab_size, c.dim)}
    for i in range(c.n_layer):
        p = f"layers.{i}."
        sd.update({p + "attention.wqkv.weight": r(3 * c.dim, c.dim), p + "attention.wo.weight": r(c.dim, c.dim),
                   p + "feed_forward.w1.weight": r(c.ffn_hidden, c.dim),
                   p + "feed_forward.w3.weight": r(c.ffn_hidden, c.dim),
                   p + "feed_forward.w2.weight": r(c.dim, c.ffn_hidden),
                   p + "attention_norm.weight": 1 + 0.1 * r(c.dim, std=1.0),
                   p + "ffn_norm.weight": 1 + 0.1 * r(c.dim, std=1.0)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd}, path)
    return path


def _vq_model(seed: int):
    """transformers' JanusVQVAE (the VQ-16 architecture LlamaGen and Janus share), random, with an
    l2-normalised codebook and non-trivial norms and biases."""
    import torch
    from transformers.models.janus.configuration_janus import JanusVQVAEConfig
    from transformers.models.janus.modeling_janus import JanusVQVAE

    torch.manual_seed(seed)
    model = JanusVQVAE(JanusVQVAEConfig(embed_dim=8, num_embeddings=CODES, base_channels=32,
                                        channel_multiplier=list(VQ_MULT), num_res_blocks=1, latent_channels=32,
                                        num_patches=GRID)).eval()
    _perturb(model, seed)
    return model


def _perturb(vq, seed: int):
    import torch

    g = _gen(seed + 1)
    with torch.no_grad():
        w = vq.quantize.embedding.weight
        w.copy_(torch.nn.functional.normalize(torch.randn(w.shape, generator=g), dim=-1))
        for p in vq.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def llamagen_vq(path, seed: int = 0) -> Path:
    """Write a tiny LlamaGen VQ-16 checkpoint (``{"model": state_dict, "steps": 0}``, LlamaGen key
    names, with the ``quantize.codebook_used`` buffer) to ``path``."""
    import torch

    from sjd_jax.convert.vq import janus_to_llamagen_key

    sd = {janus_to_llamagen_key(k): v.clone() for k, v in _vq_model(seed).state_dict().items()}
    sd["quantize.codebook_used"] = torch.zeros(65536)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "steps": 0}, path)
    return path


def write_tokenizer(path) -> Path:
    """A word-level ``tokenizer.json`` with Janus' special tokens (BOS added by its post-processor,
    as Janus-Pro's tokenizer does); unknown words map to ``<unk>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": PAD, "<｜begin▁of▁sentence｜>": BOS, "<｜end▁of▁sentence｜>": EOS, "<image>": IMAGE,
             "<unk>": UNK, "<begin_of_image>": BOI}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<｜begin▁of▁sentence｜> $A", special_tokens=[("<｜begin▁of▁sentence｜>", BOS)])
    tok.save(str(path))
    return Path(path)


def janus_pro(directory, seed: int = 0) -> Path:
    """Write a tiny HF-format Janus-Pro snapshot directory (what ``snapshot_download`` of
    ``deepseek-community/Janus-Pro-1B`` gives, at toy sizes) and return it."""
    import torch
    from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration

    directory = Path(directory)
    torch.manual_seed(seed)
    text = dict(model_type="llama", vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
                  projection_dim=64, num_image_tokens=GRID * GRID)
    vq = dict(embed_dim=8, num_embeddings=CODES, base_channels=32, channel_multiplier=list(VQ_MULT),
              num_res_blocks=1, latent_channels=32, projection_dim=64, image_token_embed_dim=64, num_patches=GRID)
    model = JanusForConditionalGeneration(JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                                                      image_token_id=IMAGE)).eval()
    g = _gen(seed + 2)
    with torch.no_grad():  # HF's init (std 0.02) gives near-flat logits; make the generation path matter
        for name, p in model.named_parameters():
            if not name.startswith(("model.language_model", "model.generation_")):
                continue
            if "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (4.0 if "vision_head" in name else 0.6) / p.shape[1] ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    _perturb(model.model.vqmodel, seed)
    model.save_pretrained(directory)
    GenerationConfig(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, guidance_scale=5.0,
                     generation_kwargs={"boi_token_id": BOI}).save_pretrained(directory)
    write_tokenizer(directory / "tokenizer.json")
    return directory


def hub_cache(root, seed: int = 0) -> Path:
    """Fill ``root`` as a Hugging Face hub cache (``HF_HUB_CACHE``) holds the files ``sjd_jax.from_pretrained``
    fetches for ``llamagen-c2i-b-256`` (``FoundationVision/LlamaGen``: ``c2i_B_256.pt``,
    ``vq_ds16_c2i.pt``) and ``janus-pro-1b`` (the ``deepseek-community/Janus-Pro-1B`` snapshot), at the
    toy sizes above: ``models--ORG--NAME/refs/main`` names a commit, ``snapshots/COMMIT/FILE`` links to
    ``blobs/``, as huggingface_hub writes them. With ``HF_HUB_OFFLINE=1`` they load with no network.
    (The GPT's grid comes from the file name: 16x16 tokens for ``_256``.)"""
    import hashlib
    import os
    import shutil
    import tempfile

    root = Path(root)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llamagen_c2i(tmp / "llamagen" / "c2i_B_256.pt", seed)
        llamagen_vq(tmp / "llamagen" / "vq_ds16_c2i.pt", seed)
        janus_pro(tmp / "janus", seed)
        for repo, src in (("FoundationVision/LlamaGen", tmp / "llamagen"),
                          ("deepseek-community/Janus-Pro-1B", tmp / "janus")):
            store = root / ("models--" + repo.replace("/", "--"))
            commit = hashlib.sha1(f"{repo}@{seed}".encode()).hexdigest()
            snap = store / "snapshots" / commit
            (store / "blobs").mkdir(parents=True, exist_ok=True)
            snap.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                blob = store / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
                shutil.copyfile(f, blob)
                link = snap / f.name
                if link.is_symlink() or link.exists():
                    link.unlink()
                os.symlink(os.path.relpath(blob, snap), link)
            (store / "refs").mkdir(exist_ok=True)
            (store / "refs" / "main").write_text(commit)
    return root


def describe(path) -> str:
    """``name  size`` of a file, or of each file of a directory (for the notebook's listing)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return "\n".join(f"{p.relative_to(path.parent)}  {p.stat().st_size / 2**20:.2f} MiB" for p in files)


__all__ = ["describe", "hub_cache", "janus_pro", "llamagen_c2i", "llamagen_vq", "write_tokenizer"]


if __name__ == "__main__":  # python colab/tiny_checkpoints.py OUTDIR
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_checkpoints")
    for p in (llamagen_c2i(out / "c2i_tiny_64.pt"), llamagen_vq(out / "vq_ds16_tiny.pt"),
              janus_pro(out / "Janus-Pro-tiny")):
        print(describe(p))
    print(json.dumps({"grid": GRID, "codes": CODES}))

"""Random-weight checkpoints in the released (torch) layouts, shared by the converter, parity and
pipeline tests: LlamaGen GPT state dicts, HF's JanusVQVAE (= LlamaGen's VQ-16 architecture) and
taming-transformers' VQGAN (Chameleon). A plain module, not a test file: test files import it, never
each other (tests/test_layout.py checks that)."""

import torch

from sjd_jax.core import vq as V

# tiny LlamaGen GPT configs (sjd_jax.GPTConfig keyword arguments)
LLAMAGEN_CASES = {
    "c2i": dict(vocab_size=64, grid_size=(4, 4), dim=64, n_layer=2, n_head=4, num_classes=10),
    "c2i-gqa": dict(vocab_size=64, grid_size=(3, 5), dim=64, n_layer=2, n_head=4, n_kv_head=2, num_classes=10),
    "t2i-padded": dict(vocab_size=64, grid_size=(4, 4), dim=64, n_layer=2, n_head=4, caption_dim=24,
                       cls_token_num=6),
}


def llamagen_state_dict(c, seed=0):
    """A random state dict with LlamaGen's key names and shapes (torch layout) for the GPTConfig ``c``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.2: torch.randn(*s, generator=g) * std  # noqa: E731
    hd, kv = c.head_dim, c.kv_heads
    sd = {"tok_embeddings.weight": r(c.vocab_size, c.dim, std=1.0), "norm.weight": 1 + r(c.dim, std=0.1),
          "output.weight": r(c.vocab_size, c.dim), "freqs_cis": torch.zeros(3)}
    if c.text_conditional:
        sd["cls_embedding.cap_proj.fc1.weight"] = r(c.dim, c.caption_dim)
        sd["cls_embedding.cap_proj.fc2.weight"] = r(c.dim, c.dim)
        sd["cls_embedding.uncond_embedding"] = r(c.cls_token_num, c.caption_dim)
    else:
        sd["cls_embedding.embedding_table.weight"] = r(c.num_classes + 1, c.dim, std=1.0)
    for i in range(c.n_layer):
        p = f"layers.{i}."
        sd[p + "attention.wqkv.weight"] = r((c.n_head + 2 * kv) * hd, c.dim)
        sd[p + "attention.wo.weight"] = r(c.dim, c.dim)
        sd[p + "feed_forward.w1.weight"] = r(c.ffn_hidden, c.dim)
        sd[p + "feed_forward.w3.weight"] = r(c.ffn_hidden, c.dim)
        sd[p + "feed_forward.w2.weight"] = r(c.dim, c.ffn_hidden)
        sd[p + "attention_norm.weight"] = 1 + r(c.dim, std=0.1)
        sd[p + "ffn_norm.weight"] = 1 + r(c.dim, std=0.1)
    return sd


def hf_vq_model(mults, n_res, seed=0, codebook=64, grid=4):
    """(HF ``JanusVQVAE`` with random weights, the matching ``VQConfig``)."""
    from transformers.models.janus.configuration_janus import JanusVQVAEConfig
    from transformers.models.janus.modeling_janus import JanusVQVAE

    torch.manual_seed(seed)
    cfg = JanusVQVAEConfig(embed_dim=8, num_embeddings=codebook, base_channels=32,
                           channel_multiplier=list(mults), num_res_blocks=n_res, latent_channels=32,
                           num_patches=grid)
    model = JanusVQVAE(cfg).eval()
    with torch.no_grad():  # LlamaGen l2-normalises the codebook; make HF's argmin agree
        w = model.quantize.embedding.weight
        w.copy_(torch.nn.functional.normalize(torch.randn_like(w), dim=-1))
        for name, p in model.named_parameters():  # non-trivial norms and biases
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model, V.VQConfig(codebook_size=codebook, ch=32, ch_mult=mults, num_res_blocks=n_res,
                             z_channels=32)


def vq_state_dict(model):
    """A torch module's state dict as numpy arrays."""
    return {k: v.numpy() for k, v in model.state_dict().items()}


def taming_vqgan(attn_resolutions, seed=0):
    """taming-transformers' Encoder/Decoder (the README's test command installs
    ``taming-transformers-rom1504==0.0.6 --no-deps``) with random weights, Chameleon's quant convs and
    codebook: ``(enc, dec, quant_conv, post_quant_conv, codebook, state dict in vqgan.ckpt's names)``."""
    import taming.modules.diffusionmodules.model as taming

    torch.manual_seed(seed)
    kw = dict(ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=attn_resolutions,
              dropout=0.0, in_channels=3, resolution=32, z_channels=32)
    enc = taming.Encoder(**kw, double_z=False).eval()
    dec = taming.Decoder(**kw).eval()
    quant_conv, post_quant_conv = torch.nn.Conv2d(32, 8, 1), torch.nn.Conv2d(8, 32, 1)
    codebook = torch.nn.Embedding(16, 8)
    with torch.no_grad():  # GroupNorm affine away from the identity init, so a mix-up would show
        for m in list(enc.modules()) + list(dec.modules()):
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    sd = {**{f"encoder.{k}": v for k, v in enc.state_dict().items()},
          **{f"decoder.{k}": v for k, v in dec.state_dict().items()},
          **{f"quant_conv.{k}": v for k, v in quant_conv.state_dict().items()},
          **{f"post_quant_conv.{k}": v for k, v in post_quant_conv.state_dict().items()},
          "quantize.embedding.weight": codebook.weight.detach().clone(),
          "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}  # in vqgan.ckpt; skipped
    return enc, dec, quant_conv, post_quant_conv, codebook, sd

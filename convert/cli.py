"""``sjd-jax convert``: checkpoint files users download -> sjd-jax checkpoint directories.

Families and the files each accepts:
  llamagen-c2i  LlamaGen class-to-image GPT: ``c2i_{B,L,XL}_{256,384}.pt`` ({"model": sd}) and
                ``c2i_{XXL,3B}_384.pt`` (raw FSDP state dict); also .safetensors with the same keys.
  llamagen-t2i  LlamaGen text-to-image GPT: ``t2i_XL_stage{1_256,2_512}.pt`` (may pickle ``args``).
  llamagen-vq   LlamaGen VQ: ``vq_ds16_c2i.pt`` / ``vq_ds16_t2i.pt`` / ``vq_ds8_c2i.pt``
                ({"model": sd, ...} with the ``codebook_used`` buffer) and ``model.safetensors``.
  janus-pro     Janus-Pro in HF format (``deepseek-community/Janus-Pro-1B`` / ``-7B``): the snapshot
                directory, or its files: ``config.json``, ``model.safetensors`` or
                ``model-0000i-of-0000n.safetensors`` (+ ``model.safetensors.index.json``),
                optional ``generation_config.json`` and ``tokenizer.json`` (copied into --out).
  t5-encoder    HF T5 / flan-T5 snapshot (``google/flan-t5-xl``): the encoder + ``tokenizer.json``.
  lumina-mgpt   Lumina-mGPT in HF Chameleon format (``Alpha-VLLM/Lumina-mGPT-7B-768`` etc.): the
                snapshot directory (``config.json`` with ``vocabulary_map``, safetensors shards +
                index, ``tokenizer.json``) plus ``--vqgan vqgan.ckpt`` (Chameleon's VQGAN, e.g. from
                ``GAIR/Anole-7b-v0.1/tokenizer/``); image size from the ``-768`` suffix or --image-size.
  anole         Anole / Chameleon in HF format (``leloy/Anole-7b-v0.1-hf``) + ``--vqgan``; 512 px default.
  emu3          Emu3-Gen: ``BAAI/Emu3-Gen-hf`` (LLM + vision tokenizer in one snapshot) or ``BAAI/Emu3-Gen``
                with ``--vq`` the ``BAAI/Emu3-VisionTokenizer`` snapshot; a ``tokenizer.json`` is needed
                (the HF snapshot's, or ``--tokenizer``); 720 px default (--image-size).
The image grid is not stored in GPT weights: it is read from a ``_256``/``_384``/``_512`` file-name
suffix or given with ``--image-size``. ``--param-dtype bfloat16`` stores the transformer's params in
bfloat16 (half the file; VQ and T5 weights stay float32).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from sjd_jax.convert.sizes import MAX_IMAGE_SIZE, latent_side

_CONTAINERS = ("model", "module", "state_dict")  # LlamaGen / DeepSpeed / Lightning
_LLAMAGEN_DIM_TO_HEADS = {768: 12, 1024: 16, 1280: 20, 1536: 24, 3200: 32}


def __getattr__(name: str):
    if name == "FAMILIES":  # every --family name (the registry's converter entries)
        from sjd_jax import families

        return families.converter_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_tensors(path: Path, trust_pickle: bool = False) -> dict:
    """name -> lazy tensor entry (``.shape``, ``.dtype``, ``.numpy()``; read only when converted by
    ``to_numpy``, which knows each entry's name and file).

    PyTorch files: the zip format (``torch.save`` since 1.6) has every member's CRC-32 checked, then
    is memory-mapped; legacy (pickle) files are read into memory. ``trust_pickle``
    (``--trust-pickle``): load with ``weights_only=False``, which runs whatever code the pickle
    holds; only for files from a source you trust."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            f = safe_open(str(path), framework="numpy")
            return {k: _Lazy(f, k, path) for k in f.keys()}
        except Exception as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    import argparse as _argparse

    import torch

    is_zip = _verified_zip(path)
    try:
        # weights_only: never run pickled code. LlamaGen training files also pickle their argparse
        # Namespace; exactly that class is allow-listed. mmap needs the zip format.
        with torch.serialization.safe_globals([_argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle, mmap=is_zip)
    except Exception as e:
        raise ValueError(_load_error(path, e)) from e
    if isinstance(obj, dict):
        for key in _CONTAINERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (optionally under {_CONTAINERS})")
    return {k: _TorchEntry(v, k, path) for k, v in obj.items()}


def _verified_zip(path: Path) -> bool:
    """True for a zip-format file whose members all pass their CRC-32 check (torch itself never
    checks them: a flipped byte would load as a wrong weight); False for a legacy pickle file.
    Costs one sequential read of the file (0.3 s/GiB from the page cache here)."""
    import zipfile
    import zlib

    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            return False
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot be read: damaged zip archive ({e}); the file is truncated or "
                         "corrupt, download it again") from e
    if bad is not None:
        raise ValueError(f"{path}: member {bad} fails its CRC-32 check: the file is corrupt, download it again")
    return True


def _load_error(path: Path, e: Exception) -> str:
    """The one-line reason ``torch.load`` failed, suggesting --trust-pickle only where it helps: a
    weights-only load that refused a pickled class or function (not one that met garbage)."""
    text = str(e)
    if m := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (f"{path}: cannot be read with weights_only=True: it pickles {m.group(1)}; if you trust its "
                "source, pass --trust-pickle (loads it with weights_only=False, which runs the pickle's code)")
    # torch's weights-only message opens with generic advice; the reason follows "WeightsUnpickler error:"
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = (m.group(1) if m else text.strip().splitlines()[0] if text.strip() else "").strip()[:200]
    return (f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {reason}); the file is "
            "damaged or not a torch.save file")


class _TorchEntry:
    """A tensor of a PyTorch file (a view of the mmapped file for the zip format), with its name
    and file for error messages."""

    def __init__(self, t, key, path: Path):
        self.t, self.key, self.path = t, key, path
        self.shape, self.dtype = tuple(t.shape), t.dtype

    def numpy(self) -> np.ndarray:
        return _torch_numpy(self.t)


def _torch_numpy(t) -> np.ndarray:
    """A torch tensor -> numpy, widening the float dtypes numpy lacks (bfloat16, float8: exact)."""
    import torch

    t = t.detach()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()
    elif t.dtype == torch.complex32:
        t = t.to(torch.complex64)
    return t.numpy()


class _Lazy:
    """A safetensors entry read only when converted (shape from the header)."""

    def __init__(self, f, key, path: Path):
        self.f, self.key, self.path = f, key, path
        part = f.get_slice(key)
        self.shape, self.dtype = tuple(part.get_shape()), part.get_dtype()

    def numpy(self):
        if self.dtype == "BF16":  # numpy has no bfloat16 (safetensors' numpy reader refuses it)
            return _bf16_view(self.path, self.key)
        return self.f.get_tensor(self.key)


def _bf16_view(path: Path, key: str) -> np.ndarray:
    """A bfloat16 tensor of a safetensors file as a read-only memmap of ml_dtypes.bfloat16 (jax's
    own bfloat16 type): header = 8-byte little-endian length + JSON with each tensor's offsets."""
    import json

    import ml_dtypes

    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        info = json.loads(fh.read(n))[key]
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - start != 2 * int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{path}: tensor {key} has {end - start} bytes for bf16 shape {shape}")
    if not shape or 0 in shape:
        return np.zeros(shape, ml_dtypes.bfloat16)
    return np.memmap(path, dtype=ml_dtypes.bfloat16, mode="r", offset=8 + n + start, shape=shape)


def to_numpy(x) -> np.ndarray:
    """A tensor (``read_tensors`` entry, torch tensor or array) -> float32 numpy array, same shape.

    ``read_tensors`` entries know their name and file, and are refused here, by both, when complex
    or non-finite (NaN/inf). Bare tensors and arrays (the Python API) get the same checks, by
    tensor name, in ``sjd_jax.convert.tree.assign``; complex ones are returned unchanged for that."""
    entry = x if isinstance(x, (_Lazy, _TorchEntry)) else None
    try:
        raw = x.numpy() if entry is not None else _torch_numpy(x) if hasattr(x, "detach") else np.asarray(x)
    except (TypeError, AttributeError) as e:  # a dtype numpy cannot hold (safetensors: AttributeError)
        where = f"{entry.path}: tensor {entry.key}" if entry is not None else "tensor"
        raise ValueError(f"{where}: unsupported dtype {getattr(x, 'dtype', '?')} ({e})") from e
    if entry is None:
        return raw if np.iscomplexobj(raw) else np.asarray(raw, np.float32)
    from sjd_jax.convert.tree import require_finite  # here: sjd_jax.convert.tree imports jax (slow for --help)

    where = f"{entry.path}: tensor {entry.key}"
    if np.iscomplexobj(raw):
        raise ValueError(f"{where} is complex ({raw.dtype}); model weights are real, refusing to drop "
                         "the imaginary part")
    arr = np.asarray(raw, np.float32)
    require_finite(arr, where)
    return arr


def _grid(args, src: Path) -> int:
    """LlamaGen's grid side (VQ-16 codes) from --image-size or a ``_256``-style file-name suffix."""
    if args.image_size is not None:
        return latent_side(args.image_size, 16, f"--image-size {args.image_size}")
    m = re.search(r"_(\d{2,4})(?:\.\w+)?$", src.name)
    if not m:
        raise ValueError("cannot tell the image size from the file name; pass --image-size")
    return latent_side(int(m.group(1)), 16, f"{src.name} (size from its name; --image-size overrides it)")


def _heads(args, dim: int, src: Path) -> int:
    """--n-head, or the released LlamaGen size's; a positive divisor of dim with head_dim % 4 == 0
    (2D RoPE rotates quarters of each head)."""
    if args.n_head is None:
        if dim not in _LLAMAGEN_DIM_TO_HEADS:
            raise ValueError(f"{src.name}: dim {dim} is not a released LlamaGen size; pass --n-head")
        return _LLAMAGEN_DIM_TO_HEADS[dim]
    n = args.n_head
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= dim or dim % n or (dim // n) % 4:
        raise ValueError(f"--n-head {n}: must divide the model dim {dim} (of {src.name}) into heads of a "
                         f"multiple of 4 features, e.g. {', '.join(str(h) for h in _head_counts(dim)[:6])}")
    return n


def _head_counts(dim: int) -> list[int]:
    return [h for h in range(1, dim + 1) if dim % h == 0 and (dim // h) % 4 == 0][::-1]


def _kv_heads(rows: int, cols: int, n_head: int, dim: int, src: Path) -> int:
    """KV heads from the fused ``wqkv`` weight ``[(n_head + 2 * kv) * head_dim, dim]``."""
    hd = dim // n_head
    fits = {(n_head + 2 * kv) * hd: kv for kv in range(1, n_head + 1) if n_head % kv == 0}
    if cols != dim or rows not in fits:
        raise ValueError(f"{src.name}: layers.0.attention.wqkv.weight has shape {(rows, cols)}; with {n_head} heads "
                         f"of {hd} (dim {dim}) expected ((n_head + 2 * kv) * head_dim, dim) for kv heads dividing "
                         f"n_head: rows one of {sorted(fits)}, {dim} columns")
    return fits[rows]


def gpt_config(tensors: dict, family: str, args, src: Path):
    from sjd_jax import GPTConfig

    from sjd_jax.convert.llamagen import strip_prefix
    from sjd_jax.convert.tree import count_indexed, shape_of

    names = {strip_prefix(k): v for k, v in tensors.items()}
    is_t2i = "cls_embedding.cap_proj.fc1.weight" in names
    is_c2i = "cls_embedding.embedding_table.weight" in names
    if "tok_embeddings.weight" not in names or not (is_t2i or is_c2i):
        raise ValueError(f"{src.name} is not a LlamaGen GPT checkpoint (no tok_embeddings/cls_embedding)")
    if family == "llamagen-c2i" and is_t2i or family == "llamagen-t2i" and is_c2i:
        raise ValueError(f"{src.name} looks like {'llamagen-t2i' if is_t2i else 'llamagen-c2i'}, "
                         f"not --family {family}")
    vocab, dim = shape_of(names, "tok_embeddings.weight", 2, src.name)
    n_layer = count_indexed(names, r"layers\.(\d+)\.", src.name)
    n_head = _heads(args, dim, src)
    kv = _kv_heads(*shape_of(names, "layers.0.attention.wqkv.weight", 2, src.name), n_head, dim, src)
    kw = dict(vocab_size=vocab, dim=dim, n_layer=n_layer, n_head=n_head,
              n_kv_head=None if kv == n_head else kv, grid_size=_grid(args, src))
    if is_t2i:
        C, cap = shape_of(names, "cls_embedding.uncond_embedding", 2, src.name)
        kw.update(caption_dim=cap, cls_token_num=C, num_classes=None)
    else:
        kw.update(num_classes=shape_of(names, "cls_embedding.embedding_table.weight", 2, src.name)[0] - 1)
    return GPTConfig(**kw)


def vq_config(tensors: dict, src: Path):
    from sjd_jax.core.vq import VQConfig

    from sjd_jax.convert.tree import channel_multiple, count_indexed, shape_of

    if "quantize.embedding.weight" not in tensors or "decoder.conv_in.weight" not in tensors:
        raise ValueError(f"{src.name} is not a LlamaGen VQ checkpoint (no quantize/decoder keys)")
    levels = count_indexed(tensors, r"encoder\.conv_blocks\.(\d+)\.", src.name)
    n_res = count_indexed(tensors, r"encoder\.conv_blocks\.0\.res\.(\d+)\.", src.name)
    ch = shape_of(tensors, "encoder.conv_in.weight", 4, src.name)[0]
    mults = tuple(channel_multiple(tensors, f"encoder.conv_blocks.{i}.res.0.conv1.weight", ch, src.name)
                  for i in range(levels))
    K, D = shape_of(tensors, "quantize.embedding.weight", 2, src.name)
    return VQConfig(codebook_size=K, codebook_embed_dim=D, ch=ch, ch_mult=mults, num_res_blocks=n_res,
                    z_channels=shape_of(tensors, "quant_conv.weight", 4, src.name)[1])


def param_dtype(args, family: str, transformer: bool = True) -> str:
    """``--param-dtype`` (default float32, as stored before bfloat16 storage): the dtype the
    transformer's params are stored in. Families without a transformer (VQ, T5 encoders) store
    float32 and refuse bfloat16 (one ValueError)."""
    from sjd_jax.core import precision

    value = getattr(args, "param_dtype", None) or "float32"
    precision.check_param_dtype(value, "--param-dtype", precision.STORED_DTYPES)
    if value != "float32" and not transformer:
        raise ValueError(f"--param-dtype {value}: --family {family} has no transformer; it stores float32")
    return value


def staged_dtype(dtype: str):
    """The numpy dtype of ``param_dtype`` for staging memmaps (ml_dtypes' bfloat16, jax's own)."""
    import ml_dtypes

    return ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32


def read_json(path: Path) -> dict:
    """A JSON object file (one-line ValueError otherwise)."""
    import json

    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return d


def hf_files(srcs: list[Path]) -> dict:
    """An HF snapshot directory or its listed files -> {"config", "generation", "tokenizer", "weights"}."""
    if len(srcs) == 1 and srcs[0].is_dir():
        d = srcs[0]
        weights = sorted(d.glob("*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))
        files = [p for p in (d / "config.json", d / "generation_config.json", d / "tokenizer.json",
                             d / "model.safetensors.index.json") if p.is_file()] + weights
    else:
        files = list(srcs)
    for p in files:
        if not p.is_file():
            raise ValueError(f"{p}: no such file")
    named = {p.name: p for p in files}
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    if "config.json" not in named:
        raise ValueError("HF-format checkpoints need their config.json (give the snapshot directory)")
    if not weights:
        raise ValueError("no weight files (*.safetensors / pytorch_model*.bin) given")
    index = named.get("model.safetensors.index.json") or named.get("pytorch_model.bin.index.json")
    if index is not None:
        want = set(read_json(index).get("weight_map", {}).values())
        missing = sorted(want - {p.name for p in weights})
        if missing:
            raise ValueError(f"shards listed in {index.name} are missing: {missing}")
    return {"config": named["config.json"], "generation": named.get("generation_config.json"),
            "tokenizer": named.get("tokenizer.json"), "weights": weights}


def read_all(paths: list[Path], trust_pickle: bool = False) -> dict:
    tensors: dict = {}
    for p in paths:
        part = read_tensors(p, trust_pickle)
        dup = sorted(set(part) & set(tensors))
        if dup:
            raise ValueError(f"{p.name} repeats tensors from another shard: {dup[:4]}")
        tensors.update(part)
    return tensors


def convert_janus(srcs: list[Path], out: Path, args) -> dict:
    """Janus-Pro HF snapshot -> kind "janus" (generation path + tokenizer.json)."""
    import jax
    from tqdm import tqdm

    from sjd_jax.io import checkpoint

    from sjd_jax.convert.janus import janus_config, janus_params, skipped
    from sjd_jax.convert.tree import host_place

    dtype = param_dtype(args, "janus-pro")
    files = hf_files(srcs)
    vocab = None
    if files["tokenizer"] is not None:  # special tokens live in "added_tokens", the rest in the model vocab
        tj = read_json(files["tokenizer"])
        vocab = (tj.get("model") or {}).get("vocab")
        vocab = dict(vocab) if isinstance(vocab, dict) else {}
        vocab.update({t["content"]: t["id"] for t in tj.get("added_tokens") or []
                      if isinstance(t, dict) and "content" in t and "id" in t})
    config = janus_config(read_json(files["config"]),
                          read_json(files["generation"]) if files["generation"] else {}, vocab)
    tensors = read_all(files["weights"], args.trust_pickle)
    n_skipped = sum(map(skipped, tensors))
    with tqdm(total=len(tensors) - n_skipped, desc="converting janus-pro", unit="tensor",
              file=sys.stderr, disable=args.quiet) as bar:
        params = janus_params(tensors, config, to_numpy, bar, place=host_place(dtype))
    del tensors
    extra = {"tokenizer.json": files["tokenizer"]} if files["tokenizer"] else {}
    checkpoint.save(out, "janus", config, params, force=args.force, extra_files=extra)
    leaves = jax.tree.leaves(params)
    return {"family": "janus-pro", "out": str(out), "kind": "janus", "params": int(sum(x.size for x in leaves)),
            "dtype": dtype, "bytes": int(sum(x.nbytes for x in leaves)), "config": config,
            "note": f"skipped {n_skipped} image-understanding / text-head tensors"}


def convert_t5(srcs: list[Path], out: Path, args) -> dict:
    """HF T5 / flan-T5 snapshot (config.json, safetensors shards, tokenizer.json) -> kind "t5"."""
    import jax

    from sjd_jax.io import checkpoint

    from sjd_jax.convert.t5 import skipped, t5_config, t5_params

    param_dtype(args, "t5-encoder", transformer=False)
    files = hf_files(srcs)
    config = t5_config(read_json(files["config"]))
    tensors = read_all(files["weights"], args.trust_pickle)
    n_skipped = sum(skipped(n) for n in tensors)
    params = t5_params(tensors, config, to_numpy)
    extra = {"tokenizer.json": files["tokenizer"]} if files["tokenizer"] else {}
    checkpoint.save(out, "t5", config, params, force=args.force, extra_files=extra)
    leaves = jax.tree.leaves(params)
    return {"family": "t5-encoder", "out": str(out), "kind": "t5", "params": int(sum(x.size for x in leaves)),
            "dtype": "float32", "bytes": int(sum(x.nbytes for x in leaves)), "config": config,
            "note": f"skipped {n_skipped} decoder / lm_head tensors"
                    + ("" if extra else "; no tokenizer.json given (pass the snapshot directory)")}


def convert_lumina_mgpt(srcs: list[Path], out: Path, args) -> dict:
    """Lumina-mGPT: image size from the snapshot's ``-768``-style name or --image-size."""
    return convert_lumina(srcs, out, args, "lumina", "lumina-mgpt")


def convert_anole(srcs: list[Path], out: Path, args) -> dict:
    """Anole: 512 px unless --image-size."""
    return convert_lumina(srcs, out, args, "anole", "anole", default_size=512)


def convert_lumina(srcs: list[Path], out: Path, args, layout: str, family: str,
                   default_size: int | None = None) -> dict:
    """HF Chameleon snapshot + Chameleon VQGAN -> kind "lumina" (``layout`` lumina or anole), as
    ``--family family``; ``default_size``: pixels when --image-size is not given."""
    import jax
    from tqdm import tqdm

    from sjd_jax.families.lumina import make_config

    from sjd_jax.convert.chameleon import chameleon_config, chameleon_params, skipped
    from sjd_jax.convert.lumina import latent_of, vocabulary, vqgan_config
    from sjd_jax.convert.staging import Staging, save_bounded
    from sjd_jax.convert.vq import vq_params_from_state_dict

    dtype = param_dtype(args, family)
    if args.vqgan is None:
        raise ValueError(f"--family {family} needs --vqgan PATH (Chameleon's vqgan.ckpt, e.g. "
                         "GAIR/Anole-7b-v0.1/tokenizer/vqgan.ckpt)")
    files = hf_files(srcs)
    tok_file = args.tokenizer or files["tokenizer"]
    cfg = read_json(files["config"])
    vocab = vocabulary(cfg, read_json(tok_file) if tok_file else None)
    vq_tensors = read_tensors(Path(args.vqgan), args.trust_pickle)
    vq = vqgan_config(vq_tensors, Path(args.vqgan).name)
    name = srcs[0].name if len(srcs) == 1 and srcs[0].is_dir() else files["config"].parent.name
    if args.image_size is None and default_size is not None:
        args.image_size = default_size
    latent = latent_of(args, name, vq.downsample)
    gpt = chameleon_config(cfg, latent, 1)
    config = make_config(gpt, vq, vocab, latent, layout, int(cfg.get("max_position_embeddings") or 4096))
    _fits_context(config, latent[0] * vq.downsample)
    tensors = read_all(files["weights"], args.trust_pickle)
    n_skipped = sum(map(skipped, tensors))
    extra = {"tokenizer.json": tok_file} if tok_file else {}
    # Bounded memory (Lumina-mGPT-7B is 28 GB of float32): as for Emu3, each converted tensor goes
    # to a disk-backed memmap next to --out and the save reads those pages (sjd_jax.convert.staging).
    with Staging(out=out) as st:
        with tqdm(total=2, desc=f"converting {family}", unit="model", file=sys.stderr, disable=args.quiet) as bar:
            llm = chameleon_params(tensors, config.gpt, to_numpy, place=lambda p, a: st.put(("gpt",) + p, a, staged_dtype(dtype)))
            bar.update()
            del tensors
            vq_params = vq_params_from_state_dict(((k, to_numpy(vq_tensors.pop(k))) for k in list(vq_tensors)),
                                                  vq, taming_names=True)
            vq_params = st.put_tree(("vq",), vq_params)  # the VQGAN (~0.3 GB) is staged too: one save path
            bar.update()
        params = {"gpt": llm, "vq": vq_params}
        save_bounded(out, "lumina", config, params, force=args.force, extra_files=extra)
        leaves = jax.tree.leaves(params)
        n, nbytes = int(sum(x.size for x in leaves)), int(sum(x.nbytes for x in leaves))
        del params, leaves, llm, vq_params
    H, W = config.image_size
    return {"family": family, "out": str(out), "kind": "lumina", "params": n,
            "dtype": dtype, "bytes": nbytes,
            "config": f"{layout} {H}x{W} px, grid {config.gpt.grid_size}, LLM {config.gpt.n_layer}x{config.gpt.dim}, "
                      f"vocab {config.gpt.vocab_size}, VQGAN {vq.codebook_size} codes",
            "note": f"skipped {n_skipped} HF VQ-encoder / rotary tensors"
                    + ("" if extra else "; no tokenizer.json (pass the snapshot directory or --tokenizer)")}


def _fits_context(config, size: int) -> None:
    """Refuse an image size whose image tokens alone overflow the model's context (the converted
    checkpoint could never generate; generation checks prompt + image against the same bound)."""
    n = config.gpt.num_image_tokens
    if n >= config.max_positions:
        raise ValueError(f"image size {size} px needs {n} image positions, more than the model's context "
                         f"(max_position_embeddings {config.max_positions}); pass a smaller --image-size")


def convert_emu3(srcs: list[Path], out: Path, args) -> dict:
    """Emu3-Gen LLM (+ its vision tokenizer, in the snapshot or ``--vq``) -> kind "emu3"."""
    import jax

    from sjd_jax.io import checkpoint
    from sjd_jax.families.emu3 import make_config

    from sjd_jax.convert.emu3 import emu3_config, emu3_params
    from sjd_jax.convert.emu3_vq import emu3_vq_config, emu3_vq_params
    from sjd_jax.convert.lumina import vocabulary
    from sjd_jax.convert.staging import Staging, save_bounded

    dtype = param_dtype(args, "emu3")
    files = hf_files(srcs)
    tok_file = args.tokenizer or files["tokenizer"]
    if tok_file is None:
        raise ValueError("no tokenizer.json: BAAI/Emu3-Gen ships a tiktoken file; pass --tokenizer with the "
                         "tokenizer.json of BAAI/Emu3-Gen-hf")
    cfg = read_json(files["config"])
    vocab = vocabulary(cfg, read_json(tok_file))
    tensors = read_all(files["weights"], args.trust_pickle)
    if any(k.startswith(("model.vqmodel.", "vqmodel.")) for k in tensors):
        if args.vq is not None:
            raise ValueError("the snapshot already holds the vision tokenizer (model.vqmodel.*); drop --vq")
        vq_cfg = cfg
        vq_tensors = {re.sub(r"^(model\.)?vqmodel\.", "", k): v for k, v in tensors.items()
                      if k.startswith(("model.vqmodel.", "vqmodel."))}
    else:
        if args.vq is None:
            raise ValueError("the snapshot has no vision tokenizer: pass --vq with the BAAI/Emu3-VisionTokenizer "
                             "snapshot directory")
        vq_files = hf_files([Path(args.vq)])
        vq_cfg = read_json(vq_files["config"])
        vq_tensors = read_all(vq_files["weights"], args.trust_pickle)
    vq = emu3_vq_config(vq_cfg)
    size = 720 if args.image_size is None else args.image_size
    side = latent_side(size, vq.downsample, f"--image-size {size}" if args.image_size is not None
                       else "the 720 px default")
    latent = (side, side)
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    config = make_config(emu3_config(cfg, (latent[0], latent[1] + 1), 4), vq, vocab, latent,
                         int(text_cfg.get("max_position_embeddings") or 9216))
    _fits_context(config, size)
    # Bounded memory (Emu3-Gen is 34 GB of float32): each converted tensor goes to a disk-backed
    # memmap next to --out, and the save reads those pages (sjd_jax.convert.staging; about 2x the largest
    # tensor of anonymous memory).
    with Staging(out=out) as st:
        params = {"gpt": emu3_params(tensors, config.gpt, to_numpy,
                                     place=lambda p, a: st.put(("gpt",) + p, a, staged_dtype(dtype))),
                  "vq": emu3_vq_params(vq_tensors, vq, to_numpy, place=lambda p, a: st.put(("vq",) + p, a))}
        del tensors, vq_tensors
        save_bounded(out, "emu3", config, params, force=args.force, extra_files={"tokenizer.json": tok_file})
        leaves = jax.tree.leaves(params)
        n, nbytes = int(sum(x.size for x in leaves)), int(sum(x.nbytes for x in leaves))
        del params, leaves
    H, W = config.image_size
    return {"family": "emu3", "out": str(out), "kind": "emu3", "params": n, "dtype": dtype, "bytes": nbytes,
            "config": f"{H}x{W} px, grid {config.gpt.grid_size}, LLM {config.gpt.n_layer}x{config.gpt.dim} "
                      f"({config.gpt.kv_heads} KV heads), vocab {config.gpt.vocab_size}, {vq.codebook_size} codes"}


def convert_llamagen_c2i(srcs: list[Path], out: Path, args) -> dict:
    """LlamaGen class-to-image GPT file -> kind "gpt"."""
    from sjd_jax.convert.llamagen import gpt_params_from_state_dict
    from sjd_jax.convert.tree import host_place

    place = host_place(param_dtype(args, "llamagen-c2i"))
    return _convert_file(srcs, out, args, "llamagen-c2i", "gpt",
                         lambda tensors, src: gpt_config(tensors, "llamagen-c2i", args, src),
                         lambda stream, config: gpt_params_from_state_dict(stream, config, place))


def convert_llamagen_t2i(srcs: list[Path], out: Path, args) -> dict:
    """LlamaGen text-to-image GPT file -> kind "gpt" (with ``caption_dim``)."""
    from sjd_jax.convert.llamagen import gpt_params_from_state_dict
    from sjd_jax.convert.tree import host_place

    place = host_place(param_dtype(args, "llamagen-t2i"))
    return _convert_file(srcs, out, args, "llamagen-t2i", "gpt",
                         lambda tensors, src: gpt_config(tensors, "llamagen-t2i", args, src),
                         lambda stream, config: gpt_params_from_state_dict(stream, config, place))


def convert_llamagen_vq(srcs: list[Path], out: Path, args) -> dict:
    """LlamaGen VQ file -> kind "vq"."""
    from sjd_jax.convert.vq import vq_params_from_state_dict

    param_dtype(args, "llamagen-vq", transformer=False)
    return _convert_file(srcs, out, args, "llamagen-vq", "vq", vq_config, vq_params_from_state_dict)


def _convert_file(srcs: list[Path], out: Path, args, family: str, kind: str, make_config, make_params) -> dict:
    """One LlamaGen-layout file -> a ``kind`` checkpoint: ``make_config(tensors, src)``, then
    ``make_params(stream of (name, array), config)`` fed one tensor at a time."""
    import jax
    from tqdm import tqdm

    from sjd_jax.core import precision
    from sjd_jax.io import checkpoint

    if len(srcs) != 1:
        raise ValueError(f"--family {family} takes exactly one checkpoint file, got {len(srcs)}")
    src = srcs[0]
    tensors = read_tensors(src, args.trust_pickle)
    config = make_config(tensors, src)
    # Stream: each source tensor is read, re-laid out into its final contiguous float32 array and
    # released before the next one, so only the output accumulates (the source stays mmapped).
    stream = ((name, to_numpy(tensors.pop(name)))
              for name in tqdm(list(tensors), desc=f"converting {src.name}", unit="tensor",
                               file=sys.stderr, disable=args.quiet))
    params = make_params(stream, config)
    del tensors
    checkpoint.save(out, kind, config, params, force=args.force)
    leaves = jax.tree.leaves(params)
    return {"family": family, "out": str(out), "kind": kind, "params": int(sum(x.size for x in leaves)),
            "dtype": precision.dtype_of(params), "bytes": int(sum(x.nbytes for x in leaves)), "config": config}


def convert(family: str, srcs, out: Path, args) -> dict:
    """``sjd-jax convert --family family srcs --out out``: after ``out`` is checked, the converter
    entry of ``family`` in the model-family registry (``sjd_jax.families``: "module:function", a
    function ``(srcs, out, args) -> summary dict``; the built-in families' are the functions above)."""
    from sjd_jax import families
    from sjd_jax.io import atomic
    from sjd_jax.io import checkpoint

    run = families.converter(family)  # (unknown family: ValueError naming the known ones)
    out = Path(out)
    # before reading or fetching anything: --out must be new, or (--force) an sjd-jax checkpoint or empty dir
    atomic.check_dir_target(out, args.force, checkpoint.is_checkpoint, "sjd-jax checkpoint")
    srcs = fetch_sources(list(srcs) if isinstance(srcs, (list, tuple)) else [srcs], args)
    return run(srcs, out, args)


def _bounded_int(lo: int, hi: int):
    """argparse type: an integer in [lo, hi] (a usage error, one line, otherwise)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}, got {value}")
        return value

    return parse


def _parser():
    from sjd_jax import families
    from sjd_jax.cli.util import Parser, add_output_flags

    ap = Parser("sjd-jax convert", __doc__)
    ap.add_argument("--family", required=True, help=" | ".join(families.converter_names()))
    ap.add_argument("src", type=Path, nargs="*",
                    help="checkpoint file (.pt/.pth/.bin/.safetensors); janus-pro, t5-encoder, lumina-mgpt, "
                         "anole: snapshot dir or files")
    ap.add_argument("--from-hub", default=None, metavar="REPO[:FILE]",
                    help="instead of SRC: fetch from the Hugging Face hub (pip install 'sjd-jax[hub]'): a file "
                         "(FoundationVision/LlamaGen:c2i_B_256.pt) or an HF-format snapshot "
                         "(deepseek-community/Janus-Pro-1B); HF_HUB_OFFLINE=1 reads the local hub cache only")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--image-size", type=_bounded_int(1, MAX_IMAGE_SIZE), default=None, metavar="PX",
                    help="GPT / lumina-mgpt / anole / emu3: pixels (LlamaGen 256/384/512, Lumina 512/768/1024, Emu3 720)")
    ap.add_argument("--vqgan", type=Path, default=None,
                    help="lumina-mgpt / anole: Chameleon's vqgan.ckpt (a path, or hub:REPO:FILE, e.g. "
                         "hub:GAIR/Anole-7b-v0.1:tokenizer/vqgan.ckpt)")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="lumina-mgpt / anole / emu3: tokenizer.json to use instead of the snapshot's")
    ap.add_argument("--vq", type=Path, default=None, help="emu3: the BAAI/Emu3-VisionTokenizer snapshot dir")
    ap.add_argument("--n-head", type=_bounded_int(1, 1 << 16), default=None,
                    help="GPT only: heads, for non-released sizes (must divide the model dim)")
    ap.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                    help="dtype the transformer's params are stored in (default float32; bfloat16 halves the "
                         "file and loads as bf16 on GPU/TPU; VQ and T5 stay float32)")
    ap.add_argument("--force", action="store_true", help="overwrite --out")
    ap.add_argument("--trust-pickle", action="store_true",
                    help=".pt/.ckpt files: load with weights_only=False (runs the pickle's code; trusted files only)")
    add_output_flags(ap)
    return ap


def parse_args(argv) -> object:
    """The flags of ``sjd-jax convert`` from ``argv`` (a usage error is a ValueError, not an exit)."""
    try:
        return _parser().parse_args(argv)
    except SystemExit:  # the parser printed the one-line usage error
        raise ValueError(f"bad sjd-jax convert arguments: {' '.join(argv)}") from None


def fetch_sources(srcs: list, args) -> list[Path]:
    """The local files to convert: ``srcs``, or ``--from-hub REPO[:FILE]`` fetched now (one of the
    two); ``hub:REPO:FILE`` values of ``--vqgan`` / ``--tokenizer`` / ``--vq`` become fetched paths."""
    from sjd_jax.convert import hub

    from_hub = getattr(args, "from_hub", None)
    if (from_hub is None) == (not srcs):
        raise ValueError("give the checkpoint files (SRC ...) or --from-hub REPO[:FILE], not both or neither")
    if from_hub is not None:
        repo, file = hub.parse_spec(from_hub)
        srcs = hub.fetch(repo, () if file is None else (file,))
    for flag in ("vqgan", "tokenizer", "vq"):
        if getattr(args, flag, None) is not None:
            setattr(args, flag, hub.resolve_flag(getattr(args, flag)))
    return [Path(s) for s in srcs]


def main(argv=None) -> int:
    from sjd_jax.cli.util import USER_ERRORS, run

    # KeyError: a tensor the family's layout needs is missing from the files
    return run(_parser(), argv, _main, errors=USER_ERRORS + (KeyError,))


def _main(args) -> int:
    from sjd_jax.cli.util import Output

    s = convert(args.family, args.src, args.out, args)
    Output(args).result(s, f"wrote {s['out']}: {s['kind']} {s['params'] / 1e6:.2f}M params, {s['dtype']}, "
                           f"{s['bytes'] / 2**20:.1f} MiB\n  {s['config']}"
                           + (f"\n  {s['note']}" if "note" in s else ""))
    return 0

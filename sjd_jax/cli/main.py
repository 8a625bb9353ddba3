"""``sjd-jax`` command line: one subcommand per job."""

from __future__ import annotations

import sys

COMMANDS = {  # name -> (module, function)
    "generate": ("sjd_jax.cli.generate", "main"),
    "eval": ("sjd_jax.fashion.evaluate", "main"),
    "bench": ("sjd_jax.cli.bench", "main"),
    "bench-mesh": ("sjd_jax.cli.bench_mesh", "main"),
    "shard-plan": ("sjd_jax.cli.shard_plan", "main"),
    "convert": ("sjd_jax.convert.cli", "main"),
    "demo": ("sjd_jax.demo.app", "main"),
    "train-vq": ("sjd_jax.fashion.bundled", "main_train_vq"),
    "train-ar": ("sjd_jax.fashion.bundled", "main_train_ar"),
    "train-classifier": ("sjd_jax.fashion.bundled", "main_train_classifier"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sjd-jax {" + ",".join(COMMANDS) + "} [options]\n\n"
              "  generate  sample a class grid from the bundled fashion-mnist model or a converted llamagen-c2i\n"
              "            checkpoint, or prompts from a converted text-to-image checkpoint (lumina-mgpt, anole,\n"
              "            llamagen-t2i, janus-pro, emu3) (PNG); a hub name (janus-pro-1b, llamagen-c2i-b-256, ...)\n"
              "            is fetched from the Hugging Face hub and converted once (pip install 'sjd-jax[hub]')\n"
              "  eval      quality metrics of the bundled model: PSNR, NLL, class accuracy, Frechet distance\n"
              "  bench     AR vs Jacobi-family samplers: NFE, wall time, compile time (JSON)\n"
              "  bench-mesh  throughput of batch generation on device meshes vs one device (JSON)\n"
              "  shard-plan  per-device memory of params, KV cache and state on a planned mesh (JSON)\n"
              "  convert   PyTorch/safetensors checkpoints (local files or --from-hub) -> sjd-jax checkpoint directories\n"
              "  demo      the web demo (Gradio; pip install 'sjd-jax[demo]'): AR vs SJD side by side, live\n"
              "  train-vq  train the Fashion-MNIST VQ tokenizer\n"
              "  train-ar  train the Fashion-MNIST class-conditional GPT over its tokens\n"
              "  train-classifier  train the evaluation CNN on real Fashion-MNIST\n\n"
              "examples:\n"
              "  sjd-jax generate                                    # the bundled model, SJD, all 10 classes\n"
              "  sjd-jax generate --method sjd-pac --window 32 --class 0 7 --n 8\n"
              "  sjd-jax convert --family llamagen-c2i c2i_B_256.pt --out ckpt/c2i_B/gpt   # + llamagen-vq -> ckpt/c2i_B/vq\n"
              "  sjd-jax generate --model llamagen-c2i --ckpt ckpt/c2i_B --class 207 360\n"
              "  sjd-jax generate --model janus-pro-1b --prompt \"a red fox\"   # from the hub, converted once\n"
              "  sjd-jax convert --family janus-pro --from-hub deepseek-community/Janus-Pro-1B --out ckpt/janus\n"
              "  sjd-jax demo                                        # the web demo on http://127.0.0.1:7860\n"
              "  sjd-jax convert --family emu3 Emu3-Gen-hf/ --out ckpt/emu3\n"
              "  sjd-jax generate --model emu3-gen --ckpt ckpt/emu3 --prompt \"a red fox in snow\"\n"
              "  sjd-jax bench --methods sjd,sjd-pac --windows 16,32 --out bench.json\n"
              "  sjd-jax eval --methods ar,sjd-pac --n-per-class 100\n\n"
              "Every command takes --quiet (no progress bars or informational output) and --json (one JSON\n"
              "object with the result on stdout, nothing else); progress and errors go to stderr, and an error\n"
              "is one line with exit status 2. 'sjd-jax COMMAND --help' lists each command's options.\n")
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"sjd-jax: error: unknown command {argv[0]!r}{hint}; choose one of {', '.join(COMMANDS)} "
              f"(see 'sjd-jax --help')", file=sys.stderr)
        return 2
    import importlib

    module, fn = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), fn)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""``sjd-jax demo``: the web demo (Gradio). AR and a Jacobi-family sampler side by side on the same
seed, with NFE, step compression, wall time, the tokens committed per forward and the token grid
coloured by the forward that committed each token; progress is shown while decoding.

Needs gradio (pip install 'sjd-jax[demo]'). The first request compiles each sampler (seconds on a
CPU); later requests with the same method, window and batch reuse it.

examples:
  sjd-jax demo                                       # the bundled fashion-mnist model, http://127.0.0.1:7860
  sjd-jax demo --model llamagen-c2i --ckpt ckpt/c2i_B_256
  sjd-jax demo --model janus-pro-1b --ckpt ckpt/janus_1b --host 0.0.0.0 --concurrency 2
  sjd-jax demo --model janus-pro-1b      # from the Hugging Face hub, converted the first time (sjd-jax[hub])
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sjd_jax.cli import util as cliutil

PROG = "sjd-jax demo"
NEEDS_GRADIO = "sjd-jax demo needs gradio: pip install 'sjd-jax[demo]'"


def parser() -> cliutil.Parser:
    ap = cliutil.Parser(PROG, __doc__)
    ap.add_argument("--model", default="fashion-mnist",
                    help="a bundled model (default fashion-mnist), a converted class-conditional checkpoint model "
                         "(llamagen-c2i, with --ckpt), a text-to-image one (e.g. janus-pro-1b, with --ckpt), or "
                         "a hub name without --ckpt (janus-pro-1b, llamagen-c2i-b-256, ...: README 'Supported "
                         "checkpoints'), fetched and converted the first time")
    ap.add_argument("--ckpt", type=Path, default=None, help="converted checkpoint directory (sjd-jax convert)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    ap.add_argument("--max-batch", type=int, default=8, help="largest batch a request may ask for (default 8)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="requests decoded at the same time (Gradio queue concurrency; default 1); others wait")
    cliutil.add_output_flags(ap)  # --json: one object {url, model, ...} once the page serves
    return ap


def start(session, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, max_batch: int = 8,
          concurrency: int = 1, block: bool = True):
    """Build, queue and launch the page for ``session`` (``session.load``); returns the Blocks
    (``block=False``: serving in the background; ``.close()`` stops it)."""
    from sjd_jax.demo import ui

    demo = ui.build(session, max_batch)
    demo.queue(default_concurrency_limit=concurrency)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                css=ui.CSS, show_error=True, quiet=not block)
    return demo


def _serve(args) -> int:
    from sjd_jax.core.validate import check_int
    from sjd_jax.parallel.memory import MAX_ROWS

    check_int("--port", args.port, 1, 65535)
    check_int("--max-batch", args.max_batch, 1, MAX_ROWS)
    check_int("--concurrency", args.concurrency, 1, 64)
    try:
        import gradio  # noqa: F401  (the extra: checked before any weights load)
    except ImportError:
        print(NEEDS_GRADIO, file=sys.stderr, flush=True)
        return 2
    from sjd_jax.demo import session

    s = session.load(args.model, args.ckpt)
    demo = start(s, host=args.host, port=args.port, share=args.share, max_batch=args.max_batch,
                 concurrency=args.concurrency, block=False)
    url = f"http://{args.host}:{args.port}/"
    cliutil.Output(args).result(
        {"url": url, "share_url": getattr(demo, "share_url", None), "model": s.name, "kind": s.kind,
         "image_tokens": s.num_tokens, "max_batch": args.max_batch, "concurrency": args.concurrency},
        f"{PROG}: {s.name} on {url} (Ctrl-C stops)")
    try:
        while demo.is_running:  # serve until Ctrl-C (gradio's own block_thread prints to stdout)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


def main(argv=None) -> int:
    return cliutil.run(parser(), argv, _serve)

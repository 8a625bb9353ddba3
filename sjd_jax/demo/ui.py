"""The Gradio page: controls on the left; AR and the chosen sampler side by side on the right, each
with its stats line, then the chosen sampler's tokens-per-forward chart and token grid.

One event (``api_name="generate"``), a generator: it yields a progress line while decoding, then
every output. A ``ValueError`` (a bad value, ``runner.validate``) becomes ``gr.Error``: an in-page
message (a client-side error for API callers), never a traceback. Element ids (``elem_id``) are
the browser test's handles: ``generate``, ``status``, ``ar-image``, ``ar-stats``, ``chosen-image``,
``chosen-stats``, ``committed-chart``, ``token-grid``.
"""

from __future__ import annotations

import gradio as gr

from sjd_jax.demo import figures, runner
from sjd_jax.demo.session import Session

CSS = """
#status {min-height: 1.6em}
#ar-stats, #chosen-stats {min-height: 3.2em}
"""
INTRO = ("### Speculative Jacobi Decoding vs auto-regressive decoding\n"
         "Both samplers run on the same seed and knobs. The lossless Jacobi-family samplers draw from "
         "the same distribution as AR while committing several tokens per forward; the chart and the token "
         "grid show which forward committed which token of the first image.")


def controls(session: Session, max_batch: int) -> list:
    """The request's inputs, in ``runner.validate``'s order (cond, method, window, seed, cfg scale,
    temperature, top-k, top-p, batch)."""
    d = session.defaults
    if session.kind == "class":
        cond = gr.Dropdown([(f"{i}: {n}", i) for i, n in enumerate(session.class_names)], value=0,
                           label="class", elem_id="cond")
    else:
        cond = gr.Textbox(value="a red fox in the snow", label="prompt", lines=2, elem_id="cond")
    method = gr.Dropdown(list(runner.METHODS), value="sjd", label="method", elem_id="method",
                         info="compared with AR; auto: the lossless recipe and window predicted fastest")
    window = gr.Textbox(value=str(d["window"]), label="window", elem_id="window",
                        info=f"1..{runner.MAX_WINDOW} or auto")
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
        batch = gr.Slider(1, max_batch, value=1, step=1, label="batch", elem_id="batch")
    with gr.Row():
        cfg = gr.Number(value=d["cfg_scale"], label="cfg scale", elem_id="cfg")
        temperature = gr.Number(value=d["temperature"], label="temperature", elem_id="temperature")
    with gr.Row():
        top_k = gr.Number(value=d["top_k"], precision=0, label="top-k", elem_id="top-k")
        top_p = gr.Number(value=d["top_p"], label="top-p", elem_id="top-p")
    return [cond, method, window, seed, cfg, temperature, top_k, top_p, batch]


def results() -> dict:
    """The outputs, by name."""
    out = {"status": gr.Markdown("", elem_id="status")}
    with gr.Row():
        with gr.Column():
            out["ar_image"] = gr.Image(label="AR", format="png", interactive=False, elem_id="ar-image")
            out["ar_stats"] = gr.Markdown("", elem_id="ar-stats")
        with gr.Column():
            out["chosen_image"] = gr.Image(label="chosen sampler", format="png", interactive=False,
                                           elem_id="chosen-image")
            out["chosen_stats"] = gr.Markdown("", elem_id="chosen-stats")
    with gr.Row():
        out["chart"] = gr.Image(label="tokens committed per forward (first image)", format="png",
                                interactive=False, elem_id="committed-chart")
        out["grid"] = gr.Image(label="token grid by the forward that committed each token (first image)",
                               format="png", interactive=False, elem_id="token-grid")
    return out


def outputs_of(c: runner.Comparison, grid: tuple[int, int]) -> dict:
    """A ``Comparison`` -> the outputs' values, by name (images as uint8 arrays)."""
    ch = c.chosen
    first = ch.committed[0]
    done = (f"done: {ch.label} vs AR at seed {c.request.seed}, {c.request.batch} "
            f"image{'s' * (c.request.batch != 1)}" + (f" · {ch.auto}" if ch.auto else ""))
    return {"status": done, "ar_image": figures.tile(c.ar.images), "ar_stats": c.ar.summary(),
            "chosen_image": figures.tile(ch.images), "chosen_stats": ch.summary(),
            "chart": figures.committed_chart(first, title=f"{ch.label}: tokens committed per forward"),
            "grid": figures.token_grid(first, grid)}


def handler(session: Session, max_batch: int, out: dict):
    """The event's function: a generator over ``out``'s components."""
    def generate(cond, method, window, seed, cfg_scale, temperature, top_k, top_p, batch):
        try:
            req = runner.validate(session, cond=cond, method=method, window=window, seed=seed, cfg_scale=cfg_scale,
                                  temperature=temperature, top_k=top_k, top_p=top_p, batch=batch,
                                  max_batch=max_batch)
            for item in runner.stream(session, req):
                if isinstance(item, str):
                    yield {out["status"]: item}
                else:
                    values = outputs_of(item, session.grid)
                    yield {out[k]: v for k, v in values.items()}
        except ValueError as e:  # a bad value, or one the sampler refused (e.g. a prompt too long)
            raise gr.Error(str(e), duration=None, print_exception=False) from None

    return generate


def build(session: Session, max_batch: int = 8) -> gr.Blocks:
    """The page for ``session``'s model (not queued or launched: ``app.start`` does that)."""
    with gr.Blocks(title=f"sjd-jax demo: {session.name}", analytics_enabled=False) as demo:
        gr.Markdown(INTRO + f"\n\nModel: **{session.name}** ({session.num_tokens} image tokens per image, "
                            f"grid {session.grid[0]}×{session.grid[1]}).")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                inputs = controls(session, max_batch)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                out = results()
        button.click(handler(session, max_batch, out), inputs=inputs, outputs=list(out.values()),
                     api_name="generate", show_progress="minimal")
    return demo

"""``sjd-jax demo``: a Gradio web app comparing AR with a Jacobi-family sampler on the same seed.

``session`` loads a model (the one place that does), ``runner`` validates a request and runs both
samplers (no gradio), ``figures`` draws the per-iteration chart and token grid (numpy / PIL),
``ui`` builds the Gradio page, ``app`` is the command line. Only ``ui`` and ``app`` import gradio,
and only when called: the core package never does.
"""

"""The bundled Fashion-MNIST model's trainer and evaluator: data, training, the classifier, the
model's configs and train commands (``bundled``) and ``sjd-jax eval`` (``evaluate``)."""

"""Automatic sampler choice: which recipe, window and draft init is fastest for this model, on this
device, at this batch (``method="auto"`` / ``window="auto"``, the default of ``sjd-jax generate``
and of the text-to-image pipelines).

* ``cache``: the user's cache directory and the model fingerprint its entries are keyed by.
* ``costs``: seconds per cached forward by window, timed on the current device.
* ``acceptance``: expected forwards per image by (recipe, window, init): shipped with the bundled
  model, calibrated for a converted checkpoint, updated from real runs.
* ``auto``: the cost model that combines the two and picks.
"""

from sjd_jax.tuning.auto import Choice, choose, observe  # noqa: F401

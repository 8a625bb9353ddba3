"""``python -m sjd_jax.cli``: the same as the ``sjd-jax`` command."""

import sys

from sjd_jax.cli.main import main

sys.exit(main())

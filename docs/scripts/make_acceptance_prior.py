"""Rebuild the bundled model's acceptance prior (``sjd_jax/assets/fashion_mnist/acceptance.json``)
from ``sjd-jax bench`` reports of it at CFG 2.0 (``acceptance.prior_from_bench``):

    sjd-jax bench --methods sjd,sjd-gumbel,sjd-ac,sjd-pac --windows 4,8,16 --inits vertical-sample \
        --batches 1 --images 20 --repeat 2 --cfg-scale 2.0 --no-plot --out docs/bench-prior-cpu-b1.json
    sjd-jax bench (the same) --batches 40 --images 40 --out docs/bench-prior-cpu-b40.json
    sjd-jax bench --methods sjd-gumbel-tree --windows 8,16 --inits vertical-sample,horizon-sample (the same) \
        --batches 40 --images 40 --no-auto --out docs/bench-prior-cpu-b40-tree.json
    python docs/scripts/make_acceptance_prior.py docs/bench-prior-cpu-b1.json docs/bench-prior-cpu-b40.json \
        docs/bench-prior-cpu-b40-tree.json \
        docs/bench-cpu.json docs/bench-cpu-w4.json

The per-row NFE of every batch-1 cell come from all reports (a later report's cell replaces an
earlier one: ``bench-cpu.json`` holds the full grid, 20 rows per cell); the loop's overhead per
(rows, recipe, window) and the compile ratios come from the first report that measured them, each
against its own forward timings (so list the reports that timed forwards and compiles first)."""

import json
import sys

from sjd_jax.families import presets
from sjd_jax.io import atomic
from sjd_jax.tuning import acceptance, cache


def main(paths: list[str]) -> None:
    bundle = presets.load("fashion-mnist")
    fp = cache.fingerprint(bundle.gpt_params, bundle.gpt_config)
    prior = acceptance.prior_from_bench([json.load(open(p)) for p in paths], fp)
    text = json.dumps(prior, separators=(",", ":")).replace('{"method"', '\n{"method"') + "\n"
    atomic.write_text(acceptance.PRIOR, text)
    print(f"wrote {acceptance.PRIOR}: {len(prior['cells'])} cells, fingerprint {fp}")


if __name__ == "__main__":
    main(sys.argv[1:])

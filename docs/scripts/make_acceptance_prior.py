"""Rebuild the bundled model's acceptance prior (``sjd_jax/assets/fashion_mnist/acceptance.json``)
from ``sjd-jax bench`` reports of it at batch 1, CFG 2.0 (the default grid, plus windows it lacks):

    sjd-jax bench --out docs/bench-cpu.json
    sjd-jax bench --methods sjd,sjd-gumbel,sjd-ac --windows 4 --cfg-scale 2.0 --out docs/bench-cpu-w4.json --no-plot
    python docs/scripts/make_acceptance_prior.py docs/bench-cpu.json docs/bench-cpu-w4.json

The first report also gives the loop's overhead per iteration (one consistent set of timings)."""

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

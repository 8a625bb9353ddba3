"""Golden sampler outputs: every recipe x init x tree x q-storage on three models, fixed seeds.

Recorded before the sampler was reorganised (issue 19) and asserted after every step: a refactor
must reproduce every token, NFE and acceptance count bit for bit, and must reject the same option
combinations. ``python tests/golden_cases.py`` re-records ``tests/golden/tokens.json`` (only when a
change is meant to alter sampling).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from functools import lru_cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

GOLDEN = Path(__file__).parent / "golden" / "tokens.json"
RECIPES = ("ar", "jacobi", "sjd", "sjd-gumbel", "sjd-ac", "sjd-pac", "sjd-gumbel-tree", "lantern")
INITS = ("uniform", "horizon-repeat", "horizon-sample", "vertical-repeat", "vertical-sample")
TREES = ("recipe", "1x0", "2x2", "3x1")
QS = ("dense", "compact")
MODELS = ("tiny", "tiny-structure", "bundled")
WINDOW = {"tiny": 8, "tiny-structure": 8, "bundled": 16}


def cases(model: str):
    """(recipe, init, tree, q) combinations of ``model``: the full product on the tiny model; on the
    structure-token model and the bundled one (whose compiles are the slow part) the recipes x
    q-storage plus every init on sjd-ac and every tree on sjd."""
    if model == "tiny":
        return list(itertools.product(RECIPES, INITS, TREES, QS))
    out = [(r, "uniform", "recipe", q) for r in RECIPES for q in QS]
    out += [("sjd-ac", i, "recipe", "dense") for i in INITS[1:]]
    out += [("sjd", "uniform", t, "compact") for t in TREES[1:]]
    return out


def case_id(model, recipe, init, tree, q) -> str:
    return f"{model}|{recipe}|{init}|{tree}|{q}"


@lru_cache(maxsize=None)
def setup(model: str):
    """(config, params, cond, knobs, lantern codebook [V, d])."""
    import sjd_jax as S

    if model == "bundled":
        from sjd_jax.families import presets
        from sjd_jax.core.vq import codebook_vectors

        b = presets.load("fashion-mnist")
        return (b.gpt_config, b.gpt_params, jnp.asarray([0, 3, 7], jnp.int32),
                dict(cfg_scale=2.0, temperature=1.0, top_k=64, top_p=0.95),
                np.asarray(codebook_vectors(b.vq_params, b.vq_config)))
    extra = dict(row_end_token=63, image_token_range=(0, 63)) if model == "tiny-structure" else {}
    config = S.GPTConfig(vocab_size=64, grid_size=(5, 6), dim=32, n_layer=2, n_head=4, num_classes=3, **extra)
    params = S.init_params(config, jax.random.key(7))
    codebook = np.asarray(jax.random.normal(jax.random.key(8), (64, 4)))
    return config, params, jnp.asarray([0, 1, 2], jnp.int32), dict(cfg_scale=3.0, temperature=1.0, top_k=16,
                                                                    top_p=1.0), codebook


def run_case(model, recipe, init, tree, q) -> dict:
    """The sampler's outputs (hashed) for one case, or ``{"invalid": True}`` if it is refused."""
    import sjd_jax as S
    from sjd_jax.sampling.lantern import codebook_neighbours
    from sjd_jax.sampling.recipes import recipe as recipe_kw

    config, params, cond, knobs, codebook = setup(model)
    window = WINDOW[model]
    kw = recipe_kw(recipe, window)
    if tree != "recipe":
        kw["tree"] = tuple(int(v) for v in tree.split("x"))
    if init != "uniform":
        kw["init"] = init
    if kw.pop("lantern", False):
        kw["lantern"] = (codebook_neighbours(codebook, 4), 0.1)
    try:
        out = S.generate(params, config, cond, 1234, window=window, q_storage=q, **knobs, **kw)
    except ValueError:
        return {"invalid": True}
    return digest(out)


def digest(out) -> dict:
    tokens = np.asarray(out.tokens, np.int32)
    return {"tokens": hashlib.sha256(tokens.tobytes()).hexdigest()[:24], "head": tokens[:, :8].tolist(),
            "nfe": np.asarray(out.nfe).tolist(), "iterations": int(out.iterations),
            "committed": hashlib.sha256(np.asarray(out.committed, np.int32).tobytes()).hexdigest()[:24],
            "branch_hits": np.asarray(out.branch_hits).tolist()}


def extra_cases():
    """Options outside the product: cfg off, greedy, chunked filters, a vertical init on a tree,
    example ids and per-row keys."""
    return {
        "tiny|sjd-ac|cfg-off": dict(model="tiny", recipe="sjd-ac", cfg=False, cfg_scale=1.0),
        "tiny|sjd|greedy": dict(model="tiny", recipe="sjd", temperature=0.0),
        "tiny|sjd-pac|chunked": dict(model="tiny", recipe="sjd-pac", chunk_elements=64 * 3 * 2),
        "tiny|sjd-gumbel|chunked": dict(model="tiny", recipe="sjd-gumbel", chunk_elements=64 * 3),
        "tiny|sjd-pac|example-ids": dict(model="tiny", recipe="sjd-pac", example_ids=[5, 0, 9]),
        "tiny-structure|sjd-ac|vertical-sample-tree": dict(model="tiny-structure", recipe="sjd-ac",
                                                           init="vertical-sample", tree=(2, 2)),
        "tiny|ar|top-p": dict(model="tiny", recipe="ar", top_p=0.8, top_k=0),
    }


def run_extra(spec: dict) -> dict:
    import sjd_jax as S
    from sjd_jax.sampling.recipes import recipe as recipe_kw

    spec = dict(spec)
    model = spec.pop("model")
    config, params, cond, knobs, _ = setup(model)
    kw = recipe_kw(spec.pop("recipe"), WINDOW[model])
    kw.update(knobs)
    kw.update(spec)
    return digest(S.generate(params, config, cond, 99, window=WINDOW[model], **kw))


def record(models=MODELS, extras=True, recipes=RECIPES) -> dict:
    out = {}
    for model in models:
        for i, c in enumerate(x for x in cases(model) if x[0] in recipes):
            out[case_id(model, *c)] = run_case(model, *c)
            if i % 16 == 15:  # hundreds of live executables exhaust the process's memory mappings
                jax.clear_caches()
        jax.clear_caches()
    if extras:
        for name, spec in extra_cases().items():
            out[name] = run_extra(spec)
    return out


if __name__ == "__main__":
    import os
    import sys

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # the sjd_jax next to this file, even where another checkout is installed in editable mode
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    # python tests/golden_cases.py [MODEL ...] [--recipes a,b] [--no-extras] [--out FILE]: record a part
    args = sys.argv[1:]
    out = Path(args[args.index("--out") + 1]) if "--out" in args else GOLDEN
    models = [a for a in args if a in MODELS] or list(MODELS)
    recipes = args[args.index("--recipes") + 1].split(",") if "--recipes" in args else RECIPES
    data = record(models, "--no-extras" not in args, recipes)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"{len(data)} cases, {sum('invalid' in v for v in data.values())} refused -> {out}")

"""Golden sampler outputs (``tests/golden_cases.py``): every recipe x init x tree x q-storage on
three models reproduces its recorded tokens, NFE, per-iteration commits and tree hits bit for bit,
and every combination refused when recorded is still refused. The fast tier runs one case per
recipe, init, tree and q storage; the suite adds a covering subset (``slow``); ``SJD_GOLDEN=all``
runs all 373 cases."""

import json
import os

import pytest

import golden_cases as G

GOLDEN = json.loads(G.GOLDEN.read_text())
FAST = {
    "tiny|ar|uniform|recipe|dense", "tiny|jacobi|uniform|recipe|compact", "tiny|sjd|uniform|recipe|dense",
    "tiny|sjd-gumbel|horizon-sample|recipe|compact", "tiny|sjd-ac|vertical-sample|recipe|dense",
    "tiny|sjd-pac|uniform|recipe|compact", "tiny|sjd-gumbel-tree|vertical-repeat|3x1|dense",
    "tiny|lantern|horizon-repeat|recipe|dense", "tiny|ar|horizon-repeat|recipe|dense",
    "tiny-structure|sjd-pac|uniform|recipe|compact", "tiny-structure|sjd-ac|vertical-sample|recipe|dense", "bundled|sjd-pac|uniform|recipe|dense",
}


def covering():
    """A covering subset of the tiny model's product: every recipe x init once, with the tree and
    the q storage rotating so every recipe also meets every tree and both storages."""
    out = set()
    for r, recipe in enumerate(G.RECIPES):
        for i, init in enumerate(G.INITS):
            tree = G.TREES[(r + i) % len(G.TREES)]
            out.add(G.case_id("tiny", recipe, init, tree, G.QS[(i + r // len(G.TREES)) % len(G.QS)]))
    return out


# The whole record takes ~20 CPU-minutes (one compile per case): the suite runs the fast cases and a
# covering subset; SJD_GOLDEN=all runs every case (do so after any change to the sampler).
EVERYTHING = os.environ.get("SJD_GOLDEN") == "all"


def _cases():
    cover = covering()
    for model in G.MODELS:
        for c in G.cases(model):
            name = G.case_id(model, *c)
            if name in FAST:
                yield pytest.param(model, c, id=name)
            elif EVERYTHING or name in cover:
                yield pytest.param(model, c, id=name, marks=pytest.mark.slow)


def test_golden_file_covers_every_case():
    names = {G.case_id(m, *c) for m in G.MODELS for c in G.cases(m)} | set(G.extra_cases())
    assert names == set(GOLDEN)
    assert FAST <= names and covering() <= names
    pairs = {(n.split("|")[1], n.split("|")[k]) for n in covering() for k in (2, 3, 4)}
    assert all((r, x) in pairs for r in G.RECIPES for x in G.INITS + G.TREES + G.QS)  # the subset covers
    assert sum("invalid" in v for v in GOLDEN.values()) > 0  # refusals are part of the record


@pytest.mark.parametrize("model,case", list(_cases()))
def test_golden_case(model, case):
    assert G.run_case(model, *case) == GOLDEN[G.case_id(model, *case)]


@pytest.mark.parametrize("name", sorted(G.extra_cases()))
def test_golden_extra(name):
    assert G.run_extra(G.extra_cases()[name]) == GOLDEN[name]


def test_golden_comparison_detects_a_changed_token():
    """Negative control: one token changed in a run gives a different digest."""
    import numpy as np

    from sjd_jax.sampling.state import GenerateOutput

    z = np.zeros((2, 4), np.int32)
    out = GenerateOutput(tokens=z, nfe=np.ones(2), iterations=np.int32(1), committed=z, branch_hits=np.zeros(2))
    changed = out.replace(tokens=z.copy())
    changed.tokens[1, 3] = 1
    assert G.digest(out) != G.digest(changed)

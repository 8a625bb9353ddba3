"""colab/research.ipynb runs top to bottom offline (nbclient) and reaches the right verdicts: the
built-in sampler, a mixture draft rule with its true q and the hand-written standard acceptance
test pass the exact-distribution check; the same draft rule with a wrong q and a relaxed acceptance
test fail it."""

import json

import pytest

from nbrun import COLAB, outputs_of, run_notebook, stale_outputs


@pytest.mark.slow
def test_research_notebook_runs_and_judges_rules(tmp_path):
    nb = run_notebook("research.ipynb", tmp_path)
    res = json.loads((tmp_path / "research_results.json").read_text())
    verdict = {name: r["passed"] for name, r in res.items()}
    assert verdict == {"built-in SJD (uniform drafts)": True, "mixture draft rule": True,
                       "mixture, wrong q (bug)": False, "accept: u*q < p (standard)": True,
                       "accept: u*q < p + 0.3 (relaxed)": False}, res
    for name, r in res.items():
        assert r["nfe"] < 4, (name, r)  # drafts were accepted: the rule under test ran
        if not r["passed"]:
            assert r["tv"] > 1.3 * r["tv_bound"], (name, r)
    assert any("image/png" in o.get("data", {}) for o in outputs_of(nb, "figure"))


def test_research_notebook_is_stored_clean():
    assert stale_outputs(COLAB / "research.ipynb") == []

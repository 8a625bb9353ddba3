"""Named sampler recipes: the published methods as combinations of the loop's static options.

| recipe            | what it is                                                        | lossless |
|-------------------|-------------------------------------------------------------------|----------|
| ar                | one token per forward                                             | yes      |
| jacobi            | greedy Jacobi decoding (equals greedy AR)                         | greedy   |
| sjd               | Speculative Jacobi Decoding (Teng et al. 2024)                    | yes      |
| sjd-gumbel        | SCD pi_GS: Gumbel-coupled redrafting                              | yes      |
| sjd-ac            | SCD pi_MC (paper version) = SJD-PAC adaptive continuation         | yes      |
| sjd-pac           | adaptive continuation + proactive draft tree (SJD-PAC)            | yes      |
| sjd-gumbel-tree   | Gumbel coupling + proactive draft tree                            | yes      |
| lantern           | SJD with LANTERN relaxed acceptance over codebook neighbours     | **no**   |

Trees need window >= 1 + K * D and take their slots from the chain: a recipe's tree is 4 x 3
(SJD-PAC's K = 4, D = 3) for windows >= 48 and 2 x 2 for windows 5..47 (on the bundled model 2 x 2
beat 4 x 3 and 3 x 2 at windows 16 and 32), none below.
"""

from __future__ import annotations

RECIPES = {
    "ar": dict(method="ar"),
    "jacobi": dict(method="jacobi"),
    "sjd": dict(method="sjd"),
    "sjd-gumbel": dict(method="sjd", coupling="gumbel"),
    "sjd-ac": dict(method="sjd", coupling="maximal"),
    "sjd-pac": dict(method="sjd", coupling="maximal", tree="auto"),
    "sjd-gumbel-tree": dict(method="sjd", coupling="gumbel", tree="auto"),
    "lantern": dict(method="sjd", lantern=True),
}
LOSSLESS = {name for name in RECIPES if name != "lantern"}


def auto_tree(window: int) -> tuple[int, int]:
    return (4, 3) if window >= 48 else (2, 2) if window >= 5 else (1, 0)


def recipe(name: str, window: int) -> dict:
    """``generate`` keyword arguments of a recipe at ``window`` (``lantern: True`` means "needs a
    neighbour table"; the caller supplies it)."""
    if name not in RECIPES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(RECIPES)}")
    kw = dict(RECIPES[name])
    if kw.get("tree") == "auto":
        kw["tree"] = auto_tree(window)
    return kw

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

from sjd_jax.sampling.options import SamplerOptions, auto_tree  # noqa: F401  (auto_tree: part of this module's API)

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


def options(name: str, window: int = 16, **changes) -> SamplerOptions:
    """The ``SamplerOptions`` of a recipe at ``window``, with ``changes`` to its fields (a lantern
    recipe still needs its neighbour table: ``generate(..., lantern=(table, delta))``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(RECIPES)}")
    return SamplerOptions(window=window, **RECIPES[name]).replace(**changes)


def recipe(name: str, window: int) -> dict:
    """``generate`` keyword arguments of a recipe at ``window`` (``lantern: True`` means "needs a
    neighbour table"; the caller supplies it)."""
    if name not in RECIPES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(RECIPES)}")
    kw = dict(RECIPES[name])
    if kw.get("tree") == "auto":
        kw["tree"] = auto_tree(window)
    return kw


def add_arguments(ap, default_method: str | None = "sjd") -> None:
    """The drafting flags shared by ``sjd-jax generate`` and ``sjd-jax eval``."""
    from sjd_jax.sampling.options import COUPLINGS, INITS
    from sjd_jax.sampling.qstore import Q_STORAGE

    ap.add_argument("--coupling", default=None,
                    help=f"override the method's redrafting rule: {' | '.join(COUPLINGS)} "
                         "(maximal = adaptive continuation)")
    ap.add_argument("--init", default=None,
                    help=f"drafts for positions with no target yet: {' | '.join(INITS)} (default uniform)")
    ap.add_argument("--tree", default=None, metavar="KxD",
                    help="draft tree: K candidates for the first draft, side branches D deep (e.g. 4x3); "
                         "0 = none")
    ap.add_argument("--q-storage", default="auto", choices=Q_STORAGE,
                    help="how drafts' distributions are kept between iterations: compact (top-k entries "
                         "per draft; needs top-k or greedy), dense (full vocabulary rows) or auto "
                         "(compact where it applies and saves memory); tokens are the same")
    ap.add_argument("--chunk-elements", type=int, default=None,
                    help="largest [batch, slots, vocab] temporary of the target filters and draws (default "
                         "2^28): smaller takes the window in sequential passes (less memory, slower)")
    ap.add_argument("--lantern-k", type=int, default=8, help="lantern (lossy): latent neighbours per code")
    ap.add_argument("--lantern-delta", type=float, default=0.1, help="lantern (lossy): neighbour mass budget")


def parse_tree(text: str | None):
    if text is None:
        return None
    if text.strip() in ("0", "none"):
        return (1, 0)
    try:
        k, d = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--tree must look like 4x3 (width x depth) or 0, got {text!r}") from None
    return (k, d)


def from_args(args, method: str, window: int, codebook=None):
    """The sampler of a CLI: recipe ``method`` at ``window`` with the drafting flags of
    ``add_arguments`` applied -> (``SamplerOptions``, lantern's ``(neighbours [V, k], delta)`` or
    None). ``codebook``: the VQ's code vectors (only the lantern recipe reads them). Nothing is
    validated here: ``resolve`` does that, once."""
    changes = {k: v for k, v in (("tree", parse_tree(args.tree)), ("coupling", args.coupling), ("init", args.init),
                                 ("chunk_elements", getattr(args, "chunk_elements", None))) if v is not None}
    chosen = options(method, window, q_storage=getattr(args, "q_storage", "auto"), **changes)
    if not chosen.lantern:
        return chosen, None
    if codebook is None:
        raise ValueError("lantern needs the model's VQ codebook")
    from sjd_jax.sampling.lantern import codebook_neighbours

    return chosen, (codebook_neighbours(codebook, args.lantern_k), args.lantern_delta)


def describe(method: str, chosen: SamplerOptions, args) -> dict:
    """The drafting options as the CLIs report them (JSON): the fields recipe ``method`` and the
    drafting flags set, in that order, then ``q_storage`` (and ``chunk_elements`` when given); an
    automatic tree as its (K, D) at the window; lantern as its ``{"k", "delta"}`` flags."""
    keys = [k for k in RECIPES[method] if k not in ("method", "lantern")]
    keys += [k for k in ("tree", "coupling", "init") if getattr(args, k, None) is not None and k not in keys]
    keys += ["q_storage"] + (["chunk_elements"] if getattr(args, "chunk_elements", None) is not None else [])
    out = {k: getattr(chosen, k) for k in keys}
    if out.get("tree") == "auto":
        out["tree"] = auto_tree(chosen.window)
    if chosen.lantern:
        out["lantern"] = {"k": args.lantern_k, "delta": args.lantern_delta}
    return out

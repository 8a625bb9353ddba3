"""Draw docs/sjd-figure.png: one SJD run on the bundled Fashion-MNIST model, iteration by iteration.

    python docs/scripts/make_sjd_figure.py [--class 0] [--seed 0] [--window 16] [--out docs/sjd-figure.png]

One image, SJD (uniform drafts), CFG at the CLI's default for this model (2.0). The left panel has
one row per loop iteration (forward 1, 2, ...; forward 0 is the prefill that samples the first
token) over the 256 token positions: tokens committed before the iteration, the drafts accepted in
it, the one token it samples from the residual (corrected) or from the last p (bonus), and the rest
of the window, whose drafts are redrawn for the next iteration. ``out.committed[0, i]`` is the
number of tokens forward i committed: the accepted drafts plus the corrected/bonus token. The right
panels show the 16x16 token grid coloured by how many tokens the iteration that committed each
token committed (white lines separate iterations), and the decoded image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def layout(committed: np.ndarray, N: int, W: int) -> np.ndarray:
    """[iterations, N] categories: 0 not reached, 1 committed before, 2 accepted draft,
    3 corrected (first rejected draft redrawn from the residual), 4 bonus (all drafts accepted),
    5 rest of the window (drafts redrawn from the current p)."""
    L = int(committed[0])  # the prefill commits the first token
    rows = []
    for c in committed[1:]:
        c = int(c)
        if c == 0 or L >= N:
            break
        r = np.zeros(N, np.int8)
        r[:L] = 1
        r[L:L + c - 1] = 2
        r[L + c - 1] = 4 if c == W else 3
        end = min(L + W - 1, N)  # the window: last committed token + W - 1 drafts (positions L..L+W-2)
        r[L + c:end] = 5
        rows.append(r)
        L += c
    return np.stack(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--class", dest="cls", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "sjd-figure.png")
    args = ap.parse_args(argv)

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    import sjd_jax
    from sjd_jax.io import atomic
    from sjd_jax.families import presets
    from sjd_jax.core.vq import decode_tokens, to_uint8

    bundle = presets.load("fashion-mnist")
    preset, c = bundle.preset, bundle.gpt_config
    N, W = c.num_image_tokens, args.window
    out = sjd_jax.generate(bundle.gpt_params, c, jnp.array([args.cls], jnp.int32), args.seed,
                           method="sjd", window=W, **preset.knobs())
    committed = np.asarray(out.committed[0])
    nfe = int(np.asarray(out.nfe)[0])
    assert committed.sum() == N, committed.sum()
    grid_rows = layout(committed, N, W)
    T = grid_rows.shape[0]

    # iteration that committed each position (0 = prefill)
    it_of = np.repeat(np.arange(committed.size), committed)[:N]
    img = to_uint8(decode_tokens(bundle.vq_params, bundle.vq_config, out.tokens, c.grid_size))[0]
    # not cropped to 28x28 as the CLI does, so that each token is a 2x2 pixel block under the grid

    colours = ["#ffffff", "#c8c8c8", "#2ca02c", "#ff7f0e", "#9467bd", "#9ecae1"]
    labels = [None, "committed before this iteration", "draft accepted (u < p/q)",
              "corrected: first rejected draft, redrawn from norm(max(0, p − q))",
              "bonus: every draft accepted, drawn from the last p",
              "rest of the window: new drafts from the current p (q = p)"]
    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(-0.5, len(colours)), cmap.N)

    fig = plt.figure(figsize=(11, 6.2), dpi=100)
    gs = fig.add_gridspec(2, 2, width_ratios=[3.2, 1], height_ratios=[1, 1], wspace=0.2, hspace=0.4)
    ax = fig.add_subplot(gs[:, 0])
    ax.imshow(grid_rows, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest",
              extent=(-0.5, N - 0.5, T + 0.5, 0.5))
    ax.set_xlabel("token position (raster order, 16 per image row)")
    ax.set_ylabel("loop iteration (one forward each)")
    ax.set_xticks(range(0, N + 1, 32))
    ax.set_xlim(-0.5, N - 0.5)
    present = set(np.unique(grid_rows).tolist())
    handles = [Patch(facecolor=colours[k], edgecolor="0.4", label=labels[k]) for k in range(1, 6) if k in present]
    ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.95)
    n_acc = int((grid_rows == 2).sum())
    ax.set_title(f"window {W}: {nfe} forwards (prefill + {T} iterations) vs {N} AR steps\n"
                 f"= {N / nfe:.2f}× fewer; {n_acc} drafts accepted in all", fontsize=10)

    ax2 = fig.add_subplot(gs[0, 1])
    run = committed[it_of]  # tokens committed by the iteration that committed this position
    im = ax2.imshow(run.reshape(c.grid_size), cmap="magma_r", vmin=0, vmax=W, interpolation="nearest")
    # outline each iteration's tokens: a border wherever the committing iteration changes
    g = it_of.reshape(c.grid_size)
    h, w = g.shape
    for y in range(h):
        for x in range(w):
            if x + 1 < w and g[y, x] != g[y, x + 1]:
                ax2.plot([x + 0.5, x + 0.5], [y - 0.5, y + 0.5], color="w", lw=0.8)
            if y + 1 < h and g[y, x] != g[y + 1, x]:
                ax2.plot([x - 0.5, x + 0.5], [y + 0.5, y + 0.5], color="w", lw=0.8)
    ax2.set_title("run size: tokens committed together\n(white lines separate iterations)", fontsize=9)
    ax2.set_xticks([])
    ax2.set_yticks([])
    cb = fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.04)
    cb.ax.tick_params(labelsize=7)

    ax3 = fig.add_subplot(gs[1, 1])
    ax3.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", interpolation="nearest")
    ax3.set_title(f"decoded (each token = 2×2 pixels):\nclass {args.cls} ({preset.class_names[args.cls]}), "
                  f"seed {args.seed}", fontsize=9)
    ax3.set_xticks([])
    ax3.set_yticks([])

    fig.suptitle("How SJD decodes one image: the bundled Fashion-MNIST model, CFG "
                 f"{preset.cfg_scale:g}, uniform drafts", fontsize=11)
    atomic.write_file(args.out, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    hist = np.bincount(committed[1:1 + T], minlength=W + 1)[1:]
    print(f"wrote {args.out}: NFE {nfe} vs {N} AR steps ({N / nfe:.2f}x), {T} iterations, "
          f"tokens committed per iteration 1..{W}: {hist.tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

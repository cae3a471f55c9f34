"""Figures of a trained model, drawn through the family contract (``estimators.Context``)."""

from __future__ import annotations

import logging
import os

import numpy as np

from vae_jax import data, plots
from vae_jax.diagnostics import pca_2d
from vae_jax.estimators import Context, NotApplicable
from vae_jax.metrics import read_jsonl

log = logging.getLogger(__name__)


def write_figures(exp, params, ds: data.Dataset, folder: str,
                  metrics_path: str | None = None) -> list[str]:
    """All figures of :func:`figure_paths` into ``folder``; training curves come from
    ``metrics_path`` or, when None, from a ``metrics.jsonl`` next to ``folder`` if there is one."""
    if metrics_path is None:
        sibling = os.path.join(os.path.dirname(os.path.abspath(folder)), "metrics.jsonl")
        metrics_path = sibling if os.path.exists(sibling) else None
    try:
        return figure_paths(Context(exp, ds, params, 0, 0, folder, metrics_path))
    except NotApplicable as e:
        log.warning("no figures: %s", e)
        return []


def figure_paths(ctx: Context) -> list[str]:
    """Reconstructions; 8×8 prior samples (conditional families: 8 samples of p(z|y) per class,
    and each of 8 test images' code decoded under every class); posterior-mean interpolation strips; latent traversals (one row per dimension, highest KL
    first); the latent scatter coloured by label (PCA for d > 2) and for d = 2 the decoded
    manifold; z̄(5) + z̄(3) − z̄(8) from class-mean codes when the labels allow (unconditional
    families); KL per dimension; training curves when a metrics file is known."""
    ds, folder = ctx.ds, ctx.folder
    os.makedirs(folder, exist_ok=True)
    x, mu, labels = ctx.images, ctx.codes, ctx.labels
    d = mu.shape[-1]
    cond = ctx.family.conditional
    f = lambda name: os.path.join(folder, name)  # noqa: E731
    paths = []
    n = min(32, x.shape[0] // 8 * 8)
    unit = np.asarray(data.to_unit(x[:n], ctx.cfg.data.scale))
    paths.append(plots.reconstructions(unit, ctx.decode(mu[:n], ctx.label_of(slice(0, n))),
                                       f("reconstructions.png")))
    if cond:  # row c: samples from p(z|y=c) decoded with class c
        k = ds.num_classes
        y = np.arange(8 * k, dtype=np.int32) // 8
        paths.append(plots.image_grid(ctx.decode(ctx.prior_codes(8 * k, y), y), k, 8,
                                      f("samples.png"), "samples from p(z|y) (row r: class r)"))
        # style transfer: each test image's code decoded under every class (column 0: the input)
        rows = min(8, len(mu))
        z = np.repeat(mu[:rows], k, 0)
        grid = ctx.decode(z, np.tile(np.arange(k, dtype=np.int32), rows)).reshape(rows, k, *ds.image_shape)
        grid = np.concatenate([unit[:rows, None], grid], 1).reshape(-1, *ds.image_shape)
        paths.append(plots.image_grid(grid, rows, k + 1, f("same_z_every_class.png"),
                                      "same z, every class (column 0: the input)"))
    else:
        paths.append(plots.image_grid(ctx.decode(ctx.prior_codes(64)), 8, 8, f("samples.png"),
                                      "samples from the prior"))
    paths.append(plots.strips(list(ctx.paths), f("interpolation.png"),
                              "posterior-mean interpolations between test images",
                              [f"{i}→{j}" for i, j in ctx.pairs]))

    kl_all = ctx.kl_per_dim
    kl = None if kl_all is None else kl_all[:d]  # the first layer's dims
    order = np.argsort(kl)[::-1] if kl is not None else np.argsort(mu.var(0))[::-1]
    vals = np.linspace(-3.0, 3.0, 10)
    codes = np.repeat(mu[0][None, None], d, 0).repeat(len(vals), 1)  # [d, 10, d] around image 0
    for row, dim in enumerate(order):
        codes[row, :, dim] = vals
    y0 = ctx.label_of(np.zeros(d * len(vals), np.int32))
    trav = ctx.decode(codes.reshape(-1, d), y0).reshape(d, len(vals), *ds.image_shape)
    paths.append(plots.strips(list(trav), f("traversals.png"),
                              "latent traversals from test image 0's posterior mean, z_d in [-3, 3]",
                              [f"z{k} KL {kl[k]:.2f}" if kl is not None else f"z{k}" for k in order]))
    if kl_all is not None:
        paths.append(plots.bars(kl_all, f("kl_per_dim.png"), "mean KL per latent dimension (test)",
                                "latent dimension", "KL (nats)", threshold=ctx.cfg.eval.collapse_threshold))

    if d == 2:
        g = 20
        lin = np.linspace(-3.0, 3.0, g)
        grid = np.stack(np.meshgrid(lin, lin[::-1]), -1).reshape(-1, 2)  # rows top→bottom
        yg = ctx.label_of(np.zeros(len(grid), np.int32))
        paths.append(plots.manifold(ctx.decode(grid, yg), g, 3.0, f("manifold.png")))
    m = min(5000, len(mu))
    if d == 2:
        proj, axes, title = mu, ("z[0]", "z[1]"), f"posterior means of {m} test images"
    else:
        proj, frac = pca_2d(mu)
        axes = ("principal component 1", "principal component 2")
        title = f"PCA of {d}-D posterior means, {m} test images ({100 * frac:.0f}% of variance)"
    paths.append(plots.latent_scatter(proj[:m], None if labels is None else labels[:m],
                                      f("latent_scatter.png"), title, axes))

    if not cond and labels is not None and all(np.any(labels == c) for c in (3, 5, 8)):
        means = {c: mu[labels == c].mean(0) for c in (3, 5, 8)}
        codes = np.stack([means[5], means[3], means[8], means[5] + means[3] - means[8]])
        titles = ["z̄(5)", "z̄(3)", "z̄(8)", "z̄(5) + z̄(3) − z̄(8)"]
        paths.append(plots.image_row(ctx.decode(codes), titles, f("arithmetic.png"),
                                     "latent arithmetic on class-mean codes"))

    if ctx.metrics_path:
        rows = list(read_jsonl(ctx.metrics_path))

        def line(split, key):
            sel = [r for r in rows if r["split"] == split and isinstance(r.get(key), (int, float))]
            return [r["step"] for r in sel], [r[key] for r in sel]

        panels = {label: {s: line(s, key) for s in ("train", "test")} for key, label in
                  (("elbo", "ELBO (nats)"), ("recon", "reconstruction (nats)"), ("kl", "KL (nats)"))}
        if any(xs for p in panels.values() for xs, _ in p.values()):
            paths.append(plots.line_panels(panels, f("training_curves.png"), "training curves"))
    return paths

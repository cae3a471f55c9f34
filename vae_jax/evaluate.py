"""Evaluators: plug-ins named in ``config.eval.evaluators``, each yielding ``(name, value)`` pairs.

:func:`run` builds one :class:`estimators.Context` (the test split as the model sees it, the
parameters, posterior statistics computed once and shared) and runs the configured evaluators in
order. All values land in one flat dict; ``metadata`` holds what makes the numbers comparable
(dataset, binarization, split, number of images, epochs, hardware, wall time) and, per evaluator,
how its numbers were estimated and how long that took. A new evaluator is one function that
yields pairs plus one line in :data:`EVALUATORS`; it reads the model through the family contract
(``ctx.family``, ``ctx.posterior``, ``ctx.decode``, ...). An evaluator that cannot apply to a
family raises :class:`estimators.NotApplicable`; ``run`` records the reason and goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoint, data, disentanglement, estimators, experiment, figures, lock
from vae_jax.config import ConfigError, from_config_dict as config_from_dict, member_names
from vae_jax.diagnostics import bce_per_pixel, collapse_stats, interpolation_smoothness
from vae_jax.estimators import Context, NotApplicable, TestELBO
from vae_jax.rng import stream


Pairs = Iterator[tuple[str, Any]]


def _test_elbo(ctx: Context) -> Pairs:
    out = TestELBO(ctx.exp, ctx.ds)(ctx.params, ctx.step, ctx.epochs)
    for k in ("elbo", "recon", "kl", "bits_per_dim"):
        yield k, out[k]


def _importance_sampling(ctx: Context) -> Pairs:
    e = ctx.cfg.eval
    inf = estimators.inference(ctx.exp)
    fn = jax.jit(lambda p, b, key: estimators.importance_log_px(inf, p, b, key, e.k, e.chunk))
    base = stream(jax.random.key(ctx.cfg.seed), "importance")
    log_px, mean_lw = [], []
    for i, (batch, n) in enumerate(ctx.batches):
        a, b = jax.device_get(fn(ctx.params, batch, jax.random.fold_in(base, i)))
        log_px.append(a[:n])
        mean_lw.append(b[:n])
    log_px, mean_lw = np.concatenate(log_px).astype(np.float64), np.concatenate(mean_lw)
    yield "is_log_px", float(log_px.mean())
    yield "is_log_px_stderr", float(log_px.std(ddof=1) / np.sqrt(len(log_px))) if len(log_px) > 1 else 0.0
    yield "is_bits_per_dim", float(-log_px.mean() / (np.prod(ctx.ds.image_shape) * np.log(2.0)))
    yield "is_mean_log_weight", float(mean_lw.mean())


def _collapse(ctx: Context) -> Pairs:
    e = ctx.cfg.eval
    q, kl = ctx.posterior, ctx.kl_per_dim
    for name, (mu, _) in q.items():  # active units per posterior layer
        for k, v in collapse_stats(mu, None, e.active_unit_threshold).items():
            yield (f"{name}/{k}" if name else k), v
    if kl is not None:
        yield from collapse_stats(None, kl, kl_threshold=e.collapse_threshold).items()
        yield "kl_total", float(kl.sum())
        sizes = ctx.family.latent_sizes(ctx.cfg.model)
        if len(sizes) > 1:  # per level, 1 = bottom (next to x)
            for i, part in enumerate(np.split(kl, np.cumsum(sizes)[:-1])):
                for k, v in collapse_stats(None, part, kl_threshold=e.collapse_threshold).items():
                    yield f"layer{i + 1}/{k}", v


def _reconstruction(ctx: Context) -> Pairs:
    exp, scale = ctx.exp, ctx.cfg.data.scale

    def per_image(params, batch):  # x as the model sees it; targets and reconstructions in [0, 1]
        x = batch["image"]
        r = data.to_unit(estimators.decode_mean(exp, params, batch["code"], batch.get("label")), scale)
        u = data.to_unit(x, scale)
        return bce_per_pixel(u, r), jnp.mean(jnp.square(u - r).reshape(x.shape[0], -1), -1)

    stacked, counts = data.batched({"image": ctx.images, "label": ctx.labels, "code": ctx.codes},
                                   ctx.cfg.eval.batch_size)
    fn = jax.jit(per_image)
    parts = [jax.device_get(fn(ctx.params, jax.tree.map(lambda a, i=i: a[i], stacked)))
             for i in range(len(counts))]
    bce, mse = (np.concatenate([p[j][:n] for p, n in zip(parts, counts)]) for j in (0, 1))
    yield "bce_per_pixel", float(bce.mean())
    yield "mse_per_pixel", float(mse.mean())


def _smoothness(ctx: Context) -> Pairs:
    msd, ratio = interpolation_smoothness(ctx.paths)
    yield "interpolation_smoothness", msd
    yield "interpolation_jump_ratio", ratio


def _figures(ctx: Context) -> Pairs:
    yield "figures", sorted(os.path.basename(p) for p in figures.figure_paths(ctx))


def factor_classes(ds: data.Dataset) -> tuple[list[str], np.ndarray]:
    """The test split's ground-truth factor classes: the names of its ``label_*`` factors that
    vary, and the classes [N, K]; NotApplicable when the dataset has none."""
    f = ds.test_factors or {}
    names = [k for k in f if k.startswith("label_") and len(np.unique(f[k])) > 1]
    if not names:
        raise NotApplicable(f"dataset {ds.name!r} has no ground-truth factors (label_* of a "
                            f"factor dataset such as dsprites_generated or TFDS dsprites)")
    return [k[len("label_"):] for k in names], np.stack([np.asarray(f[k], np.int64) for k in names], 1)


def _pool(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(codes, factors) of a training and a test part of the split: the first
    eval.factor_train points and the next eval.factor_test, or the split cut in that ratio when
    it holds fewer."""
    _, f = factor_classes(ctx.ds)
    e, n, c = ctx.cfg.eval, len(f), ctx.codes
    if n >= e.factor_train + e.factor_test:
        ntr, nte = e.factor_train, e.factor_test
    else:
        ntr = max(2, min(n - 2, round(n * e.factor_train / (e.factor_train + e.factor_test))))
        nte = n - ntr
    return c[:ntr], f[:ntr], c[ntr:ntr + nte], f[ntr:ntr + nte]


def _mig(ctx: Context) -> Pairs:
    names, f = factor_classes(ctx.ds)
    n = min(ctx.cfg.eval.factor_train, len(f))
    out = disentanglement.mig(ctx.codes[:n], f[:n], ctx.cfg.eval.factor_bins)
    yield "mig", out["mig"]
    yield "mig_per_factor", dict(zip(names, out["mig_per_factor"]))
    yield "mig_num_points", n


def _dci(ctx: Context) -> Pairs:
    pool = _pool(ctx)
    yield from disentanglement.dci(*pool, ctx.cfg.eval.dci_model, ctx.cfg.seed).items()
    yield "dci_num_points", [len(pool[0]), len(pool[2])]


def _sap(ctx: Context) -> Pairs:
    yield from disentanglement.sap(*_pool(ctx)).items()


def _factor_vae_score(ctx: Context) -> Pairs:
    _, f = factor_classes(ctx.ds)
    e = ctx.cfg.eval
    yield from disentanglement.factor_vae_score(
        ctx.codes, f, ctx.cfg.seed, e.factor_batch, e.factor_train, e.factor_test,
        e.factor_train, e.factor_variance_threshold).items()


def _beta_vae_score(ctx: Context) -> Pairs:
    _, f = factor_classes(ctx.ds)
    e = ctx.cfg.eval
    yield from disentanglement.beta_vae_score(ctx.codes, f, ctx.cfg.seed, e.factor_batch,
                                              e.factor_train, e.factor_test).items()


def _class_overlap(ctx: Context) -> Pairs:
    if ctx.labels is None:
        raise NotApplicable(f"dataset {ctx.ds.name!r} has no class labels")
    yield from disentanglement.class_overlap(ctx.codes, ctx.labels, ctx.cfg.seed,
                                             ctx.cfg.eval.overlap_neighbors).items()


def _pool_note(c) -> str:
    return (f"posterior means of the test split with its factor classes; the first "
            f"{c.eval.factor_train} points for training and the next {c.eval.factor_test} for "
            f"testing (a smaller split is cut in that ratio)")


@dataclasses.dataclass(frozen=True)
class Evaluator:
    run: Callable[[Context], Pairs]
    describe: Callable[[Any], str]  # Config -> how the numbers are estimated (for the metadata)


EVALUATORS: dict[str, Evaluator] = {  # a new evaluator: one function and one line here
    "test_elbo": Evaluator(_test_elbo, lambda c: (
        f"ELBO, {c.eval.num_samples} posterior sample(s) per image, " + estimators.kl_note(c))),
    "importance_sampling": Evaluator(_importance_sampling, lambda c: (
        f"importance sampling with q(z|x) as proposal, k={c.eval.k} samples per image in chunks "
        f"of {c.eval.chunk}, stable log-mean-exp; deterministic given seed {c.seed}, "
        f"eval.batch_size {c.eval.batch_size} and the chunk size")),
    "collapse": Evaluator(_collapse, lambda c: (
        f"posterior means and the family's KL per dimension, averaged over the split; active "
        f"when Var_x(E_q[z_d]) > {c.eval.active_unit_threshold}; collapsed when mean KL_d < "
        f"{c.eval.collapse_threshold} nats")),
    "reconstruction": Evaluator(_reconstruction, lambda c: (
        "decoder mean at the posterior mean vs the input, both mapped to [0, 1]; BCE and squared "
        "error averaged over pixels and images")),
    "smoothness": Evaluator(_smoothness, lambda c: (
        f"{c.eval.num_pairs} seeded pairs of test images, {c.eval.interpolation_steps}-point "
        f"posterior-mean paths, decoder means in [0, 1]")),
    "figures": Evaluator(_figures, lambda c: "PNG files in the figures folder"),
    # disentanglement (vae_jax.disentanglement; defaults of disentanglement_lib)
    "mig": Evaluator(_mig, lambda c: (
        f"mutual information gap over the first {c.eval.factor_train} test posterior means, "
        f"{c.eval.factor_bins}-bin histogram discretization per dimension, normalised by H(factor)")),
    "dci": Evaluator(_dci, lambda c: (
        f"DCI with {'GradientBoostingClassifier (sklearn defaults)' if c.eval.dci_model == 'gbt' else 'random forest (30 bagged trees)'} "
        f"importances; informativeness = mean test accuracy; " + _pool_note(c))),
    "sap": Evaluator(_sap, lambda c: (
        "SAP, discrete factors: LinearSVC(C=0.01, balanced) per (code, factor), test accuracy; "
        + _pool_note(c))),
    "factor_vae_score": Evaluator(_factor_vae_score, lambda c: (
        f"FactorVAE score: std < {c.eval.factor_variance_threshold} pruned, {c.eval.factor_batch} "
        f"points per vote drawn from the test split sharing one factor value, majority vote "
        f"fit on {c.eval.factor_train} votes, accuracy on {c.eval.factor_test}")),
    "beta_vae_score": Evaluator(_beta_vae_score, lambda c: (
        f"β-VAE score: mean |Δz| over {c.eval.factor_batch} test-split pairs sharing one factor "
        f"value, LogisticRegression on {c.eval.factor_train} examples, accuracy on "
        f"{c.eval.factor_test}")),
    "class_overlap": Evaluator(_class_overlap, lambda c: (
        f"class separability of the test posterior means on a seeded half/half split: "
        f"logistic-regression probe and {c.eval.overlap_neighbors}-NN test accuracy, silhouette "
        f"score on up to 5000 points")),
}


# evaluators that need the ground-truth factors of a factor dataset (skipped elsewhere)
FACTOR_EVALUATORS = ("mig", "dci", "sap", "factor_vae_score", "beta_vae_score")


def check_names(names: tuple[str, ...]) -> None:
    """Raises ConfigError (one line) for an evaluator name that is not registered."""
    for n in names:
        if n not in EVALUATORS:
            raise ConfigError(f"config.eval.evaluators={tuple(names)!r}: unknown {n!r}; "
                              f"allowed: {', '.join(EVALUATORS)}")


def _plain(v: Any) -> Any:
    """Numbers and arrays -> JSON types."""
    if isinstance(v, (list, tuple)):
        return [_plain(a) for a in v]
    if isinstance(v, (np.ndarray, jax.Array)):
        return np.asarray(v).tolist()
    if isinstance(v, (np.integer, np.bool_)):
        return v.item()
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def run(exp, ds: data.Dataset, params, step: int, epochs: int,
        workdir: str) -> dict[str, Any]:
    """Runs ``exp.cfg.eval.evaluators`` on the test split; figures go to ``<workdir>/figures``.

    Returns ``{"step", <every value>, "metadata": {<common>, "estimator", "wall_s",
    "evaluators": {name: {"estimator", "wall_s", "values": [names]} or {"skipped": why}}}}``."""
    cfg = exp.cfg
    check_names(cfg.eval.evaluators)
    if cfg.eval.num_images:
        n = min(cfg.eval.num_images, len(ds.test_images))
        ds = dataclasses.replace(ds, test_images=ds.test_images[:n], test_labels=(
            None if ds.test_labels is None else ds.test_labels[:n]))
    metrics = os.path.join(workdir, "metrics.jsonl")
    ctx = Context(exp, ds, params, step, epochs, os.path.join(workdir, "figures"),
                  metrics if os.path.exists(metrics) else None)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"step": step}
    blocks: dict[str, dict[str, Any]] = {}
    for name in cfg.eval.evaluators:
        t = time.perf_counter()
        values = {}
        try:
            for k, v in EVALUATORS[name].run(ctx):
                if k in out or k in values:
                    raise ValueError(f"evaluator {name!r} yields {k!r}, which is already taken")
                values[k] = _plain(v)
        except NotApplicable as e:
            blocks[name] = {"skipped": str(e)}
            continue
        out.update(values)
        blocks[name] = {"estimator": EVALUATORS[name].describe(cfg),
                        "wall_s": round(time.perf_counter() - t, 3), "values": list(values)}
    ran = [(n, b) for n, b in blocks.items() if "estimator" in b]
    out["metadata"] = dict(estimators.common_metadata(exp, ds, epochs), step=step,
                           estimator="; ".join(f"{n}: {b['estimator']}" if i else b["estimator"]
                                               for i, (n, b) in enumerate(ran)),
                           wall_s=round(time.perf_counter() - t0, 2), evaluators=blocks)
    return out


# fields that may differ between training and ``--mode eval``: what to evaluate, where the raw
# data lives, how the run reports progress, and how convolutions are computed (model.conv_impl:
# the same convolutions to float32 rounding)
_EVAL_FREE = ("eval.", "population.evaluators", "data.manual_dir", "data.data_dir", "train.progress",
              "train.figures", "mesh.", "model.conv_impl")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def run_config(cfg, workdir: str, allow_changes: bool = False):
    """The config to evaluate ``workdir`` under: the run's own ``config.json`` with the
    evaluation settings (and data paths) of ``cfg``. A difference in anything else is refused in
    one line unless ``allow_changes``, which evaluates under ``cfg`` itself."""
    path = os.path.join(workdir, "config.json")
    if allow_changes or not os.path.exists(path):
        return cfg
    try:
        with open(path) as f:
            stored = config_from_dict(json.load(f))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the run's config ({e}); pass "
                          f"--allow_config_change to evaluate under the given one") from None
    given, own = _flat(json.loads(json.dumps(cfg.to_dict()))), _flat(json.loads(json.dumps(stored.to_dict())))
    # a field the stored config lacks was added to the package after the run: its default holds
    changed = [k for k in sorted(own) if given.get(k) != own[k] and not k.startswith(_EVAL_FREE)]
    if changed:
        k = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ConfigError(f"config.{k}={given.get(k)!r}: the run in {workdir} was trained with "
                          f"{own.get(k)!r}{more}; --mode eval uses the run's config (only config.eval.* "
                          f"may change), or pass --allow_config_change")
    keep = {k: v for k, v in given.items() if k.startswith(_EVAL_FREE)}
    return config_from_dict(_nest(dict(own, **keep)))


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        *path, last = k.split(".")
        d = out
        for p in path:
            d = d.setdefault(p, {})
        d[last] = v
    return out


def evaluate_workdir(cfg, workdir: str, allow_changes: bool = False) -> dict[str, Any]:
    """``--mode eval``: restores the latest checkpoint of ``workdir`` and runs
    ``cfg.eval.evaluators`` under the run's own config (:func:`run_config`), writing
    ``eval.json`` and ``figures/`` (for a population, into each ``members/<name>/``)."""
    check_names(cfg.eval.evaluators)  # a wrong name fails before anything loads
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise checkpoint.CheckpointError(f"no checkpoints in {workdir}: train there first")
    cfg = run_config(cfg, workdir, allow_changes)
    with lock.WorkdirLock(workdir, enabled=jax.process_index() == 0):
        return _evaluate_workdir(cfg, workdir)


def _evaluate_workdir(cfg, workdir: str) -> dict[str, Any]:
    r = experiment.restore(cfg, workdir)
    epochs = r.step // experiment.steps_per_epoch(cfg, r.dataset)
    names = member_names(cfg) or [""]
    out = {}
    for i, (e, name) in enumerate(zip(r.experiments, names)):
        d = os.path.join(workdir, "members", name) if name else workdir
        os.makedirs(d, exist_ok=True)
        out[name] = run(e, r.dataset, r.params(i), r.step, epochs, d)
        write_json(os.path.join(d, "eval.json"), out[name])
    return {"step": r.step, "members": out} if cfg.population.members else out[""]


def write_json(path: str, obj: Any) -> None:
    """Written to a temporary file and renamed, so a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(path + ".tmp", path)

"""Sweep aggregation: one tidy table of every run's and member's final metrics, mean ± std over
seeds, and the plots a paper needs.

    python -m vae_jax.aggregate DIR     # (the sweep launcher runs this after its runs)

Every folder under DIR holding ``summary.json`` and ``config.json`` is one trained unit (a single
run's workdir or a population member's folder; a population's own summary, which lists its
members, is skipped). A row holds the unit's overrides (the config fields that vary across the
units found, as dotted names), its test metrics from ``summary.json``, what ``eval.json`` adds
(importance-sampled log p(x), active units, interpolation smoothness, ...) and the last training
row of ``metrics.jsonl``. Written into DIR:

- ``results.csv`` / ``results.md``: one row per unit;
- ``results_mean_std.csv`` / ``results_mean_std.md``: mean ± std (ddof 1) over seeds of every
  configuration, with the number of seeds (a single seed has no std: empty in the csv, "(n=1)" in
  the table);
- ``rate_distortion.png``: distortion (test recon, nats) against rate (test KL, nats) for each β,
  one curve per configuration, with lines of equal −ELBO = D + R (Alemi et al. 2018);
- ``elbo_vs_beta.png`` (and the importance-sampled NLL when eval.json has it),
  ``active_units_vs_beta.png``, ``interpolation_smoothness_vs_beta.png`` when those exist;
- ``disentanglement_vs_beta.png`` (MIG, DCI, SAP, FactorVAE and β-VAE scores) and
  ``class_overlap_vs_beta.png`` (linear-probe and k-NN accuracy, silhouette) when eval.json has
  them (``vae_jax.disentanglement``);
- ``ablation.png``: test ELBO (mean ± std over seeds) per configuration, when the sweep varies
  more than β and the seed;
- ``kl_per_dim.png``: each unit's test KL per latent dimension, sorted, with its free-bits floor
  λ (``objective.free_bits``) when it has one, when eval.json holds the KL per dimension.

When DIR holds a sweep plan (``sweep.json``), each planned run or member without a folder or a
``summary.json`` is reported: one warning line each on stderr and a note atop both tables.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Any, Iterable

import numpy as np

from vae_jax.metrics import read_jsonl

# metrics taken from each file, in table order; NLL = −is_log_px
SUMMARY_KEYS = ("elbo", "recon", "kl", "bits_per_dim")
EVAL_KEYS = ("is_log_px", "is_log_px_stderr", "is_bits_per_dim", "active_units", "num_collapsed",
             "kl_total", "interpolation_smoothness", "interpolation_jump_ratio", "bce_per_pixel",
             "mse_per_pixel", *(DISENTANGLEMENT := (
                 "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap",
                 "factor_vae_score", "beta_vae_score")), *(OVERLAP := (
                 "probe_accuracy", "knn_accuracy", "silhouette")))
TRAIN_KEYS = ("loss", "recon", "kl", "kl_contribution")
IGNORED_FIELDS = ("population.", "data.manual_dir", "data.data_dir", "train.progress",
                  "train.figures", "data.shuffle_seed")
METRICS = ("elbo", "recon", "kl", "beta_kl", "bits_per_dim", "nll", "is_bits_per_dim",
           "active_units", "num_collapsed", "kl_per_dim_min", "interpolation_smoothness",
           "interpolation_jump_ratio", "train_loss", "train_kl_contribution", "bce_per_pixel",
           "mse_per_pixel", *DISENTANGLEMENT, *OVERLAP)
METRIC_LABELS = {"mig": "MIG", "dci_disentanglement": "DCI disentanglement",
                 "dci_completeness": "DCI completeness", "dci_informativeness": "DCI informativeness",
                 "sap": "SAP", "factor_vae_score": "FactorVAE score", "beta_vae_score": "β-VAE score",
                 "probe_accuracy": "linear-probe accuracy", "knn_accuracy": "k-NN accuracy",
                 "silhouette": "silhouette score"}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def _read(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _last_train_row(path: str) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for row in read_jsonl(path) if os.path.exists(path) else ():
        if row.get("split") == "train":
            last = row
    return last


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)  # "nan" / "inf" strings from metrics.jsonl
    except (TypeError, ValueError):
        return None


def find_units(workdir: str) -> list[str]:
    """Folders under ``workdir`` with a per-run summary.json and config.json, sorted."""
    out = []
    for root, dirs, files in os.walk(workdir):
        dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "tensorboard", "figures"))
        if "summary.json" in files and "config.json" in files:
            try:
                s = _read(os.path.join(root, "summary.json"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(s, dict) and "members" not in s and "elbo" in s:
                out.append(root)
    return sorted(out)


def incomplete(workdir: str) -> list[str]:
    """One line per run or member of ``workdir/sweep.json`` that has no folder or no summary.json
    (a run's summary.json is written after all its members')."""
    path = os.path.join(workdir, "sweep.json")
    if not os.path.exists(path):
        return []
    out = []
    for run in _read(path).get("runs", []):
        d = os.path.join(workdir, run["dir"])
        if not os.path.isdir(d):
            out.append(f"run {run['name']} is missing (no folder {d})")
        elif not os.path.exists(os.path.join(d, "summary.json")):
            out.append(f"run {run['name']} is unfinished (no summary.json in {d})")
        elif os.path.exists(os.path.join(d, "population.json")):
            out += [f"member {m['name']} of run {run['name']} is unfinished (no summary.json)"
                    for m in run.get("members", [])
                    if not os.path.exists(os.path.join(d, "members", m["name"], "summary.json"))]
    return out


def collect(workdir: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, override columns): one row per unit under ``workdir``."""
    units = find_units(workdir)
    raw = []
    for u in units:
        cfg = _flatten(_read(os.path.join(u, "config.json")))
        summary = _read(os.path.join(u, "summary.json"))
        ev = _read(os.path.join(u, "eval.json")) if os.path.exists(os.path.join(u, "eval.json")) else {}
        tr = _last_train_row(os.path.join(u, "metrics.jsonl"))
        raw.append((u, cfg, summary, ev, tr))
    fields = sorted({k for _, c, *_ in raw for k in c})
    varying = [k for k in fields if not k.startswith(IGNORED_FIELDS)
               and len({json.dumps(c.get(k), default=str) for _, c, *_ in raw}) > 1]
    overrides = [k for k in varying if k not in ("seed", "objective.beta")]
    rows = []
    for u, cfg, summary, ev, tr in raw:
        rel = os.path.relpath(u, workdir)
        parts = rel.split(os.sep)
        member = parts[-1] if len(parts) >= 2 and parts[-2] == "members" else ""
        run = os.sep.join(parts[:-2]) if member else rel
        row: dict[str, Any] = {"run": run, "member": member}
        for k in overrides:
            row[k] = cfg.get(k)
        row["seed"] = cfg.get("seed")
        row["beta"] = cfg.get("objective.beta")
        for k in SUMMARY_KEYS:
            row[k] = _number(summary.get(k))
        if row["beta"] is not None and row["kl"] is not None:
            row["beta_kl"] = row["beta"] * row["kl"]
        for k in EVAL_KEYS:
            if k in ev:
                row[k] = _number(ev[k])
        if row.get("is_log_px") is not None:
            row["nll"] = -row["is_log_px"]
        if ev.get("kl_per_dim"):
            row["kl_per_dim_min"] = float(min(ev["kl_per_dim"]))
        for k in TRAIN_KEYS:
            if k in tr:
                row[f"train_{k}"] = _number(tr[k])
        meta = summary.get("metadata", {})
        row["epochs"] = meta.get("epochs")
        row["step"] = summary.get("step")
        row["dataset"] = meta.get("dataset")
        row["estimator"] = meta.get("estimator")
        rows.append(row)
    return rows, overrides


def _columns(rows: list[dict], overrides: list[str]) -> list[str]:
    present = {k for r in rows for k, v in r.items() if v is not None}
    head = ["run", "member", *overrides, "seed", "beta"]
    rest = [k for k in METRICS if k in present]
    extra = sorted(present - set(head) - set(rest) - {"epochs", "step", "dataset", "estimator"})
    return head + rest + extra + [k for k in ("epochs", "step", "dataset", "estimator") if k in present]


def group(rows: list[dict], overrides: list[str]) -> list[dict[str, Any]]:
    """Mean, std (ddof 1; None for one seed) and n over seeds of each configuration (the overrides
    and β), in first-appearance order."""
    keys = [*overrides, "beta"]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps([r.get(k) for k in keys], default=str), []).append(r)
    out = []
    for members in groups.values():
        g: dict[str, Any] = {k: members[0].get(k) for k in keys}
        g["n"] = len(members)
        g["seeds"] = tuple(sorted(r.get("seed") for r in members if r.get("seed") is not None))
        for m in METRICS:
            vals = [r[m] for r in members if r.get(m) is not None and math.isfinite(r[m])]
            if vals:
                g[f"{m}_mean"] = float(np.mean(vals))
                g[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        out.append(g)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.4f}".rstrip("0").rstrip(".")
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _write_csv(path: str, rows: list[dict], cols: list[str]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    os.replace(tmp, path)


def _write_md(path: str, title: str, header: list[str], lines: Iterable[list[str]], note: str = "") -> None:
    body = [f"# {title}", "", note, ""] if note else [f"# {title}", ""]
    body.append("| " + " | ".join(header) + " |")
    body.append("|" + "---|" * len(header))
    body += ["| " + " | ".join(x.replace("|", "/") for x in line) + " |" for line in lines]
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(body) + "\n")
    os.replace(tmp, path)


def _label(g: dict, overrides: list[str]) -> str:
    parts = [f"{k.rsplit('.', 1)[-1]}={_fmt(g.get(k))}" for k in overrides]
    return ", ".join(parts) or "all"


def _curves(groups: list[dict], overrides: list[str]) -> dict[str, list[dict]]:
    """Configurations without β -> their β-sorted groups (one curve per configuration)."""
    curves: dict[str, list[dict]] = {}
    for g in groups:
        curves.setdefault(_label(g, overrides), []).append(g)
    return {k: sorted(v, key=lambda g: g["beta"]) for k, v in curves.items()}


def rate_distortion(groups: list[dict], overrides: list[str]) -> dict[str, list[tuple[float, float, float]]]:
    """Curve label -> [(β, rate = mean test KL, distortion = mean test recon)] sorted by β."""
    return {k: [(g["beta"], g["kl_mean"], g["recon_mean"]) for g in v
                if "kl_mean" in g and "recon_mean" in g]
            for k, v in _curves(groups, overrides).items()}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_rate_distortion(path: str, rows: list[dict], groups: list[dict], overrides: list[str]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    rd = rate_distortion(groups, overrides)
    pts = [(r["kl"], r["recon"]) for r in rows if r.get("kl") is not None and r.get("recon") is not None]
    if pts:  # isolines of equal −ELBO = D + R
        xs, ys = zip(*pts)
        lo, hi = min(x + y for x, y in pts), max(x + y for x, y in pts)
        for c in np.linspace(lo, hi, 5):
            r = np.linspace(0, max(xs) * 1.05 + 1e-9, 50)
            ax.plot(r, c - r, color="0.85", lw=0.8, ls="--", zorder=0)
        ax.set_xlim(0, max(xs) * 1.1 + 1e-9)
        ax.set_ylim(min(ys) - 0.05 * (max(ys) - min(ys) + 1), max(ys) + 0.05 * (max(ys) - min(ys) + 1))
        ax.scatter(xs, ys, s=10, color="0.6", zorder=1, label="each seed")
    for name, curve in rd.items():
        if not curve:
            continue
        b, r, d = zip(*curve)
        ax.plot(r, d, marker="o", label=name, zorder=2)
        for bi, ri, di in curve:
            ax.annotate(f"β={_fmt(bi)}", (ri, di), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("rate R = KL(q(z|x) ‖ p(z)) [nats, test]")
    ax.set_ylabel("distortion D = −E_q log p(x|z) [nats, test]")
    ax.set_title("rate–distortion across β (dashed: equal −ELBO = D + R)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_vs_beta(path: str, groups: list[dict], overrides: list[str], metrics: list[tuple[str, str]],
                  title: str) -> str | None:
    present = [(m, lab) for m, lab in metrics if any(f"{m}_mean" in g for g in groups)]
    if not present:
        return None
    plt = _plt()
    cols = min(4, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax, (m, lab) in zip(axes.flat, present):
        for name, curve in _curves(groups, overrides).items():
            curve = [g for g in curve if f"{m}_mean" in g]
            if not curve:
                continue
            ax.errorbar([g["beta"] for g in curve], [g[f"{m}_mean"] for g in curve],
                        yerr=[g[f"{m}_std"] or 0.0 for g in curve], marker="o", capsize=3, label=name)
        if all(g["beta"] > 0 for g in groups):
            ax.set_xscale("log")
        ax.set_xlabel("β")
        ax.set_ylabel(lab)
        ax.legend(fontsize=7)
    fig.suptitle(title + " (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


ABLATION_METRICS = {
    "elbo": "test ELBO [nats] (higher is better)",
    "nll": "test NLL, importance sampled [nats] (lower is better)",
    "mse_per_pixel": "reconstruction MSE per pixel in [0, 1] (lower is better)",
    "active_units": "active units",
    "kl": "test KL [nats]",
    "kl_per_dim_min": "smallest KL of a latent dimension [nats]",
}


def _plot_ablation(path: str, groups: list[dict], overrides: list[str]) -> str | None:
    metrics = [m for m in ABLATION_METRICS if any(f"{m}_mean" in g for g in groups)]
    if not metrics:
        return None
    plt = _plt()
    labels = [_label(g, overrides) + (f", β={_fmt(g['beta'])}" if len({x['beta'] for x in groups}) > 1 else "")
              for g in groups]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics) + 2, 0.4 * len(groups) + 1.5),
                             squeeze=False, sharey=True)
    for ax, m in zip(axes[0], metrics):
        idx = [i for i, g in enumerate(groups) if f"{m}_mean" in g]
        vals = [groups[i][f"{m}_mean"] for i in idx]
        errs = [groups[i][f"{m}_std"] or 0.0 for i in idx]
        span = (max(vals) - min(vals)) or abs(max(vals)) * 0.1 or 1.0
        left = min(v - e for v, e in zip(vals, errs)) - 0.3 * span  # bars start at the axis
        ax.barh([labels[i] for i in idx], [v - left for v in vals], left=left, xerr=errs, capsize=3,
                color="tab:blue")
        ax.set_xlim(left, max(v + e for v, e in zip(vals, errs)) + 0.3 * span)
        ax.set_xlabel(ABLATION_METRICS[m], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle("ablation (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def aggregate(workdir: str) -> list[str]:
    """Writes the tables and plots of every finished unit under ``workdir``; returns the paths
    (none when nothing has finished yet)."""
    rows, overrides = collect(workdir)
    if not rows:
        return []
    written = []
    gaps = incomplete(workdir)
    gap_note = (" **Incomplete sweep**: " + "; ".join(gaps) + ".") if gaps else ""
    cols = _columns(rows, overrides)
    written.append(os.path.join(workdir, "results.csv"))
    _write_csv(written[-1], rows, cols)
    written.append(os.path.join(workdir, "results.md"))
    _write_md(written[-1], "results", cols, ([_fmt(r.get(c)) for c in cols] for r in rows),
              "One row per trained model: test-set metrics in nats per image (ELBO estimator and "
              "dataset in the last columns); nll = −importance-sampled log p(x) when evaluated."
              + gap_note)

    groups = group(rows, overrides)
    metrics = [m for m in METRICS if any(f"{m}_mean" in g for g in groups)]
    gcols = [*overrides, "beta", "n", "seeds"]
    flat = [{**{k: g.get(k) for k in gcols},
             **{f"{m}_{s}": g.get(f"{m}_{s}") for m in metrics for s in ("mean", "std")}} for g in groups]
    written.append(os.path.join(workdir, "results_mean_std.csv"))
    _write_csv(written[-1], flat, gcols + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
    written.append(os.path.join(workdir, "results_mean_std.md"))
    _write_md(written[-1], "results, mean ± std over seeds", gcols + metrics,
              ([_fmt(g.get(k)) for k in gcols]
               + [("" if m + "_mean" not in g else f"{_fmt(g[m + '_mean'])} (n=1)"
                   if g[m + "_std"] is None else f"{_fmt(g[m + '_mean'])} ± {_fmt(g[m + '_std'])}")
                  for m in metrics] for g in groups),
              "std with ddof 1; n = number of seeds; (n=1): a single seed, no std." + gap_note)

    betas = {g["beta"] for g in groups if g.get("beta") is not None}
    if any("kl_mean" in g for g in groups):
        written.append(_plot_rate_distortion(os.path.join(workdir, "rate_distortion.png"), rows,
                                             groups, overrides))
    if len(betas) > 1:
        for name, metrics_, title in (
                ("elbo_vs_beta.png", [("elbo", "test ELBO [nats]"),
                                      ("nll", "test NLL, importance sampled [nats]")], "ELBO and NLL against β"),
                ("active_units_vs_beta.png", [("active_units", "active units")], "active units against β"),
                ("interpolation_smoothness_vs_beta.png",
                 [("interpolation_smoothness", "mean squared difference of successive frames"),
                  ("interpolation_jump_ratio", "jump ratio (1 = linear cross-fade)")],
                 "interpolation smoothness against β"),
                ("kl_contribution_vs_beta.png", [("beta_kl", "β · test KL [nats]"),
                                                 ("train_kl_contribution", "KL term in the training loss [nats]")],
                 "KL contribution against β"),
                ("disentanglement_vs_beta.png", [(m, METRIC_LABELS[m]) for m in DISENTANGLEMENT],
                 "disentanglement metrics against β (the TC weight for β-TCVAE, γ for FactorVAE)"),
                ("class_overlap_vs_beta.png", [(m, METRIC_LABELS[m]) for m in OVERLAP],
                 "class separability of the posterior means against β")):
            p = _plot_vs_beta(os.path.join(workdir, name), groups, overrides, metrics_, title)
            if p:
                written.append(p)
    if overrides and len(groups) > 1:
        p = _plot_ablation(os.path.join(workdir, "ablation.png"), groups, overrides)
        if p:
            written.append(p)
    p = _plot_kl_per_dim(os.path.join(workdir, "kl_per_dim.png"), workdir, rows, overrides)
    if p:
        written.append(p)
    return written


def _plot_kl_per_dim(path: str, workdir: str, rows: list[dict], overrides: list[str]) -> str | None:
    """Sorted test KL per latent dimension of every unit whose eval.json has it, one line each,
    with the unit's free-bits floor λ as a dashed line of the same colour."""
    curves = []
    for r in rows:
        unit = os.path.join(workdir, r["run"], "members", r["member"]) if r["member"] else \
            os.path.join(workdir, r["run"])
        ev_path = os.path.join(unit, "eval.json")
        ev = _read(ev_path) if os.path.exists(ev_path) else {}
        if not ev.get("kl_per_dim"):
            continue
        lam = _flatten(_read(os.path.join(unit, "config.json"))).get("objective.free_bits") or 0.0
        name = _label(r, overrides) + (f", seed={r['seed']}" if len({x.get("seed") for x in rows}) > 1 else "")
        curves.append((name, sorted(ev["kl_per_dim"], reverse=True), float(lam)))
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, kl, lam) in enumerate(curves):
        color = f"C{i % 10}"
        ax.plot(range(1, len(kl) + 1), kl, marker="o", ms=3, color=color, label=name)
        if lam > 0:
            ax.axhline(lam, color=color, ls="--", lw=0.8)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("latent dimension, sorted by KL")
    ax.set_ylabel("test KL per dimension [nats]")
    ax.set_title("KL per latent dimension (dashed: the free-bits floor λ)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m vae_jax.aggregate SWEEP_WORKDIR", file=sys.stderr)
        return 2
    if not os.path.isdir(argv[0]):
        print(f"error: {argv[0]} is not a folder", file=sys.stderr)
        return 2
    for line in incomplete(argv[0]):
        print(f"warning: {line}", file=sys.stderr)
    written = aggregate(argv[0])
    if not written:
        print(f"error: no finished runs (summary.json with config.json) under {argv[0]}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

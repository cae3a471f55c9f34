"""Training curves of several runs side by side: test and train ELBO per epoch, and each run's
KL per stochastic layer, read from the runs' ``metrics.jsonl``.

    python scripts/compare_curves.py --out curves.png runs/mnist_tdvae runs/mnist_elu_vae \\
        runs/mnist_burda_vae runs/mnist_hvae
"""

from __future__ import annotations

import argparse
import os
import sys

from vae_jax import plots
from vae_jax.metrics import read_jsonl


def curves(workdirs: list[str]) -> dict:
    """{panel: {run name: (epochs, values)}} for the test ELBO, the train ELBO and the KL of
    every layer (``kl_layer{i}``, or ``kl`` for a single-layer model) of each run."""
    panels: dict = {"test ELBO (nats)": {}, "train ELBO (nats)": {}, "train KL per layer (nats)": {}}
    for wd in workdirs:
        name = os.path.basename(os.path.normpath(wd))
        rows = list(read_jsonl(os.path.join(wd, "metrics.jsonl")))
        train = [r for r in rows if r["split"] == "train"]
        steps_per_epoch = train[0]["step"] // train[0]["epoch"]
        test = [r for r in rows if r["split"] == "test"]
        panels["test ELBO (nats)"][name] = ([r["step"] / steps_per_epoch for r in test],
                                            [r["elbo"] for r in test])
        panels["train ELBO (nats)"][name] = ([r["epoch"] for r in train], [r["elbo"] for r in train])
        layers = sorted(k for k in train[0] if k.startswith("kl_layer")) or ["kl"]
        for k in layers:
            label = name if k == "kl" else f"{name} {k.replace('kl_', '')}"
            panels["train KL per layer (nats)"][label] = ([r["epoch"] for r in train], [r[k] for r in train])
    return panels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--out", default="curves.png")
    args = p.parse_args(argv)
    missing = [w for w in args.workdirs if not os.path.exists(os.path.join(w, "metrics.jsonl"))]
    if missing:
        print(f"error: no metrics.jsonl in {missing[0]}", file=sys.stderr)
        return 2
    print(plots.line_panels(curves(args.workdirs), args.out, "training curves", xlabel="epoch"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

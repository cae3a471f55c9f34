"""Metric sinks: TensorBoard event files and a JSON-lines file in the workdir.

``metrics.jsonl`` holds one object per write, ``{"step": s, "split": ..., name: value, ...}``, and
is the file the figures and the sweep aggregation read. Hyperparameters go to ``hparams.json``
and to TensorBoard's text tab at step 0. tensorboardX writes standard event files without
importing TensorFlow into the training process (TF costs seconds of start-up and memory).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class MetricWriter:
    """Writes scalars to ``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard``."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write_hparams(self, hparams: Mapping[str, Any], workdir: str) -> None:
        if not self.enabled:
            return
        flat = _flatten(hparams)
        with open(os.path.join(workdir, "hparams.json"), "w") as f:
            json.dump(hparams, f, indent=2, sort_keys=True, default=str)
        table = "\n".join(f"| {k} | {v} |" for k, v in sorted(flat.items()))
        self._tb.add_text("hparams", "| field | value |\n|---|---|\n" + table, 0)

    def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split}
        for k, v in scalars.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)
            self._tb.add_scalar(f"{split}/{k}", v, int(step))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> Iterable[dict[str, Any]]:
    """Rows of a metrics.jsonl file (for figures and aggregation)."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)

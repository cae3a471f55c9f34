"""Metric sinks: TensorBoard event files and a JSON-lines file in the workdir.

``metrics.jsonl`` holds one object per write, ``{"step": s, "split": ..., name: value, ...}``, and
is the file the figures and the sweep aggregation read. Hyperparameters go to ``hparams.json``
and to TensorBoard's text tab at step 0. tensorboardX writes standard event files without
importing TensorFlow into the training process (TF costs seconds of start-up and memory).
A resumed run drops the rows and hides the events after its step, so each appears once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _step(line: bytes) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricWriter:
    """Writes scalars to ``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard``. With
    ``resume_step`` (the restored checkpoint's step; 0 for a run restarting from scratch), rows of
    later steps are removed from metrics.jsonl and TensorBoard hides later events (purge_step)."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._repair(resume_step)
            # the suffix keeps two writers opened within one second from sharing (truncating) a file
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), filename_suffix=f".{time.time_ns()}",
                                     purge_step=None if resume_step is None else int(resume_step) + 1)

    def _repair(self, resume_step: int | None) -> None:
        """Drops a torn last line and, when resuming, the rows after ``resume_step``; rewrites the
        file atomically (tmp + rename) when anything changed."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            lines = f.read().splitlines(keepends=True)
        keep = [line for line in lines if line.endswith(b"\n")]  # a row is written with its newline
        if len(keep) < len(lines):
            log.warning("%s: dropped a torn last line (%d bytes)", self.path, len(lines[-1]))
        if resume_step is not None:
            keep = [line for line in keep if (_step(line) or 0) <= resume_step]
        if keep != lines:
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)

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
        with open(self.path, "ab", buffering=0) as f:  # one write call: a kill tears only this row
            f.write((json.dumps(row) + "\n").encode())

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> Iterable[dict[str, Any]]:
    """Rows of a metrics.jsonl file (for figures and aggregation), skipping a torn last line."""
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    if line.endswith("\n"):
                        raise

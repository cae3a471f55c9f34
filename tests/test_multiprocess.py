"""Multi-host for real: two JAX processes on this machine (one CPU device each, joined by
``jax.distributed`` over localhost and gloo collectives) train the quickstart, stop, and resume
from their Orbax checkpoint. They must end where one process with two devices ends, and only
process 0 may write logs and JSON."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT
from vae_jax.metrics import read_jsonl

ARGS = ["--config", str(ROOT / "configs" / "quickstart.py"), "--config.model.hidden=(32,)",
        "--config.train.batch_size=100", "--config.train.figures=False",
        "--config.train.progress=False", "--config.train.eval_every_epochs=1"]


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "SLURM_", "OMPI_", "PMI_")) and k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(workdir, epochs: int) -> list[str]:
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "vae_jax.main", "--workdir", str(workdir), *ARGS,
         f"--config.train.num_epochs={epochs}"],
        env=_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
    return outs


def _summary(workdir) -> dict:
    with open(workdir / "summary.json") as f:
        return json.load(f)


def test_two_processes_train_and_resume_like_one_process_with_two_devices(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    _two_processes(multi, epochs=2)
    first = _summary(multi)
    assert first["metadata"]["devices"]["processes"] == 2
    assert first["metadata"]["devices"]["mesh"] == {"members": 1, "data": 2}
    assert first["metadata"]["devices"]["per_device_batch_size"] == 50
    # resumes from the epoch-2 checkpoint on both hosts: a restart from scratch would log
    # epochs 1 and 2 a second time, which the row comparison below catches
    _two_processes(multi, epochs=3)

    subprocess.run([sys.executable, "-m", "vae_jax.main", "--workdir", str(single), *ARGS,
                    "--config.train.num_epochs=3"], check=True, capture_output=True,
                   env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    a, b = _summary(multi), _summary(single)
    assert b["metadata"]["devices"]["processes"] == 1 and a["step"] == b["step"]
    for k in ("elbo", "recon", "kl"):
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-6)
    # process 0 alone wrote the log: the same rows as the single process's, no duplicates
    rows_m = [r for r in read_jsonl(multi / "metrics.jsonl") if r["split"] in ("train", "test")]
    rows_s = [r for r in read_jsonl(single / "metrics.jsonl") if r["split"] in ("train", "test")]
    assert [(r["step"], r["split"]) for r in rows_m] == [(r["step"], r["split"]) for r in rows_s]
    for rm, rs in zip(rows_m, rows_s):
        assert rm["elbo"] == pytest.approx(rs["elbo"], rel=1e-5, abs=1e-5)

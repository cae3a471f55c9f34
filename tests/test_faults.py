"""Fault injection on whole runs: kill -9 at random points, damaged checkpoints and metrics,
two processes on one workdir, a full disk, and 40+ bad inputs. Each fault is followed by a
re-run that must end where an uninterrupted run ends, with every epoch logged once, or by one
``error:`` line and the documented exit code."""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import chex
import pytest

from conftest import CONFIGS, ROOT, replace, tiny
from vae_jax import evaluate, experiment, main, train
from vae_jax.metrics import read_jsonl

QUICK = str(CONFIGS / "quickstart.py")
# a run small enough that a kill lands in every phase: start-up, compilation, training, the
# asynchronous checkpoint saves, the final evaluation and the figures
RUN = ["--config.train.num_epochs=8", "--config.model.hidden=(32,)", "--config.train.progress=False",
       "--config.train.batch_size=100", "--config.eval.batch_size=100",
       "--config.train.checkpoint_every_epochs=1", "--config.train.eval_every_epochs=4"]


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "vae_jax.main", f"--config={QUICK}", f"--workdir={workdir}", *RUN, *extra]


def _run(workdir, *extra, check=True):
    r = subprocess.run(_cmd(workdir, *extra), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def _cfg():
    return tiny("quickstart", train=dict(num_epochs=8, figures=True), model=dict(hidden=(32,)))


def _final(workdir):
    return experiment.restore(_cfg(), str(workdir)).state


def _rows(workdir):
    return [(r["step"], r["split"]) for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")]


def _assert_same_end(workdir, reference):
    """The re-run ended bit for bit where the uninterrupted run did, with each row once."""
    chex.assert_trees_all_equal(_final(workdir), _final(reference))
    rows = _rows(workdir)
    assert len(rows) == len(set(rows)), "a (step, split) row is duplicated"
    assert sorted(rows) == sorted(_rows(reference))
    for name in ("summary.json",):
        a = json.loads((pathlib.Path(workdir) / name).read_text())
        b = json.loads((pathlib.Path(reference) / name).read_text())
        assert a["elbo"] == b["elbo"] and a["step"] == b["step"]
    assert not list(pathlib.Path(workdir).rglob("*orbax-checkpoint-tmp*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = tmp_path_factory.mktemp("reference") / "run"
    r = _run(wd)
    assert "starts fresh at step 0" in r.stderr  # the log says how the run began
    return wd


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, lines[-10:]
    return errors[0]


# Random kills per run of the test; each costs two process starts. 8 in the default suite (CI),
# e.g. VAE_JAX_FAULT_KILLS=20 for a longer soak.
KILLS = int(os.environ.get("VAE_JAX_FAULT_KILLS", "8"))


@pytest.mark.slow
def test_random_sigkills_each_rerun_ends_bit_for_bit(reference, tmp_path):
    t0 = time.perf_counter()
    _run(tmp_path / "timing")
    whole = time.perf_counter() - t0
    rng = random.Random(0)
    for i in range(KILLS):
        wd = tmp_path / f"kill{i}"
        p = subprocess.Popen(_cmd(wd), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, whole))
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = _run(wd)
        if (wd / "checkpoints").exists() and "resumed run from step" not in r.stderr:
            assert "starts fresh at step 0" in r.stderr  # never silently: the log says which
        _assert_same_end(wd, reference)


@pytest.mark.slow
def test_sigkill_during_the_first_save_and_during_a_sweep(reference, tmp_path):
    wd = tmp_path / "first_save"
    p = subprocess.Popen(_cmd(wd), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((wd / "checkpoints").glob("*orbax-checkpoint-tmp*")) and time.time() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    _run(wd)
    _assert_same_end(wd, reference)

    sweep_file = ROOT / "configs" / "sweeps" / "mnist_beta.py"
    args = [sys.executable, "-m", "vae_jax.sweep", f"--config={sweep_file}", f"--workdir={tmp_path / 'sw'}",
            "--config.data.name=digits", "--config.model.hidden=(16,)", "--config.train.num_epochs=2",
            "--config.train.progress=False", "--config.train.figures=False", "--config.train.batch_size=100",
            "--config.eval.batch_size=100"]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list((tmp_path / "sw").rglob("metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for m in (tmp_path / "sw").rglob("members/*/metrics.jsonl"):
        rows = [(x["step"], x["split"]) for x in read_jsonl(m)]
        assert len(rows) == len(set(rows)) and rows


def _damage(wd, how):
    ck = wd / "checkpoints"
    latest = ck / str(max(int(p.name) for p in ck.iterdir() if p.name.isdigit()))
    if how == "truncated array file":
        big = max((p for p in latest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    elif how == "emptied _METADATA":
        (latest / "_METADATA").write_text("") if (latest / "_METADATA").exists() else None
        for p in latest.rglob("_METADATA"):
            p.write_text("")
    elif how == "empty numeric folder":
        (ck / "9999").mkdir()
    return latest


@pytest.mark.parametrize("how", ["truncated array file", "emptied _METADATA", "empty numeric folder"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(reference, tmp_path, how):
    wd = tmp_path / "run"
    shutil.copytree(reference, wd)
    _damage(wd, how)
    (wd / "summary.json").unlink()  # so the re-run has to restore, evaluate and finish
    r = _run(wd)
    assert "Traceback" not in r.stderr
    assert "damaged" in r.stderr or "empty" in r.stderr or "9999" in r.stderr, r.stderr[-2000:]
    _assert_same_end(wd, reference)


def test_every_checkpoint_damaged_stops_with_one_line(reference, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(reference, wd)
    for step in (wd / "checkpoints").iterdir():
        for p in step.rglob("_METADATA"):
            p.write_text("garbage")
    r = _run(wd, check=False)
    assert r.returncode == 2
    assert _one_error_line(r.stderr).startswith("error: no intact checkpoint in ")


def test_a_torn_metrics_line_is_repaired_and_the_run_finishes(reference, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(reference, wd)
    (wd / "summary.json").unlink()
    with open(wd / "metrics.jsonl", "a") as f:
        f.write('{"step": 999, "split": "tra')
    _run(wd)
    _assert_same_end(wd, reference)


def test_two_processes_on_one_workdir(tmp_path):
    wd = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from vae_jax.lock import WorkdirLock\n"
        "with WorkdirLock(%r):\n    print('ready', flush=True); time.sleep(120)") % (str(ROOT), str(wd))],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    try:
        r = _run(wd, check=False)
        assert r.returncode == 4
        line = _one_error_line(r.stderr)
        assert f"in use by pid {holder.pid}" in line and "on host" in line
    finally:
        holder.kill()
        holder.wait()
    _run(wd)  # the kill released the lock: a stale lock never blocks a re-run
    assert json.loads((wd / "summary.json").read_text())["step"] == 8 * 15


def _unshare_ok() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="needs user and mount namespaces (unshare -rm)")
def test_a_full_disk_stops_with_one_line_and_leaves_no_temporary_folder(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    inner = " ".join(map(repr, _cmd(mnt / "run", "--config.train.num_epochs=300")))
    script = f"mount -t tmpfs -o size=600k tmpfs {mnt} && cd {ROOT} && {inner}; echo rc=$?; " \
             f"find {mnt} -name '*orbax-checkpoint-tmp*' | wc -l"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert "rc=4" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert r.stdout.strip().splitlines()[-1] == "0"  # no temporary checkpoint folder left
    line = _one_error_line(r.stderr)
    assert "No space left on device" in line


# ----------------------------------------------------------------------------------------------
# Bad input: one line, a documented exit code


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("trained") / "run"
    cfg = tiny("quickstart", train=dict(num_epochs=2))
    return wd, cfg, train.train_and_evaluate(cfg, str(wd))


def test_eval_uses_the_runs_own_config(trained):
    wd, cfg, summary = trained
    out = evaluate.evaluate_workdir(replace(cfg, eval=dict(evaluators=("test_elbo",))), str(wd))
    assert out["elbo"] == summary["elbo"]  # to all digits
    with pytest.raises(main.config.ConfigError, match=r"config.model.activation='tanh': the run in .* "
                                                      r"was trained with 'relu'"):
        evaluate.evaluate_workdir(replace(cfg, model=dict(activation="tanh")), str(wd))
    assert json.loads((wd / "eval.json").read_text())["elbo"] == summary["elbo"]  # nothing overwritten


def test_a_config_file_without_get_config_after_a_good_one_is_refused(tmp_path):
    """config_flags loads every --config file into the same module name; a file without
    get_config() must not inherit the get_config() of the file an earlier call loaded."""
    wd = f"--workdir={tmp_path / 'wd'}"
    assert main.cli(["main", f"--config={QUICK}", "--config.train.batch_size=abc", wd]) == 2
    noget = _write(tmp_path, "n.py", "X = 1\n")
    assert main.cli(["main", f"--config={noget}", wd]) == 2
    assert not (tmp_path / "wd").exists()


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BAD = [  # (arguments after the program name, exit code, what the error line must say)
    ("--config={missing}", 2, "No such file"), ("--config={syntax}", 2, "invalid syntax"),
    ("--config={noget}", 2, "defines no get_config()"), ("--config={raises}", 2, "ValueError: boom"),
    ("--config={QUICK} --config.model.foo=1", 2, "--config.model.foo: unknown config field"),
    ("--config={QUICK} --config.foo.bar=1", 2, "--config.foo.bar: unknown config field"),
    ("--config={QUICK} --config.train.batch_size=abc", 2, "batch_size=abc"),
    ("--config={QUICK} --bogus", 2, "Unknown command line flag 'bogus'"),
    ("--config={QUICK} --mode=bogus", 2, "--mode"), ("--config={QUICK} extra", 2, "unexpected arguments"),
    ("--mode=train", 2, "both --config and --workdir are required"),
    ("--config={QUICK} --config.model.likelihood=poisson", 2, "config.model.likelihood='poisson'"),
    ("--config={QUICK} --config.model.family=gan", 2, "config.model.family='gan'"),
    ("--config={QUICK} --config.train.batch_size=0", 2, "config.train.batch_size=0"),
    ("--config={QUICK} --config.train.num_epochs=-1", 2, "config.train.num_epochs=-1"),
    ("--config={QUICK} --config.objective.beta=-1", 2, "config.objective.beta=-1"),
    ("--config={QUICK} --config.optim.learning_rate=0", 2, "config.optim.learning_rate=0"),
    ("--config={QUICK} --config.model.activation=sigmoidx", 2, "config.model.activation='sigmoidx'"),
    ("--config={QUICK} --config.data.name=CIFAR-100", 2, "config.data.name='CIFAR-100'"),
    ("--config={QUICK} --config.data.binarization=static", 2, "config.data.binarization='static'"),
    ("--config={QUICK} --config.model.hidden=(0,)", 2, "config.model.hidden=(0,)"),
    ("--config={QUICK} --config.eval.evaluators=('nope',)", 2, "unknown 'nope'"),
    ("--config={QUICK} --config.model.family=ae --config.objective.name=iwae", 2, "needs a stochastic encoder"),
    ("--config={QUICK} --config.model.family=cvae --config.data.name=binarized_mnist", 2, "needs class labels"),
    ("--config={QUICK} --config.model.hvae.inference=sideways", 2, "config.model.hvae.inference='sideways'"),
    ("--config={QUICK} --config.model.vqvae.decay=1.5", 2, "config.model.vqvae.decay=1.5"),
    ("--config={QUICK} --config.model.cvae.prior=mix", 2, "config.model.cvae.prior='mix'"),
    ("--config={QUICK} --config.population.strategy=pmap", 2, "config.population.strategy='pmap'"),
    ("--config={QUICK} --config.mesh.members=3", 2, "config.mesh.members=3"),
    ("--config={QUICK} --config.train.matmul_precision=ultra", 2, "config.train.matmul_precision='ultra'"),
    ("--config={QUICK} --config.seed=-1", 2, "config.seed=-1"),
    ("--config={QUICK} --config.data.scale=weird", 2, "config.data.scale='weird'"),
    ("--config={QUICK} --config.model.likelihood=logistic", 2, "discretized logistic"),
    ("--config={QUICK} --config.optim.b1=1.5", 2, "config.optim.b1=1.5"),
    ("--config={QUICK} --config.eval.k=0", 2, "config.eval.k=0"),
    ("--config={QUICK} --config.population.members=({{'model.latent_dim':4}},)", 2, "not batchable"),
    ("--config={QUICK} --config.model.network=conv --config.model.conv_strides=(3,3,3)", 2, "strides must be 1 or 2"),
    ("--config={QUICK} --config.train.batch_size=5000", 2, "larger than the 1500 training images"),
    ("--config={QUICK} --config.model.family=hvae --config.model.hvae.latents=()", 2, "config.model.hvae.latents=()"),
    ("--config={QUICK} --config.objective.name=gan", 2, "config.objective.name='gan'"),
]


@pytest.mark.parametrize("args,code,text", BAD, ids=[a for a, _, _ in BAD])
def test_bad_input_is_one_line_with_its_exit_code(args, code, text, tmp_path, capsys):
    files = dict(missing=str(tmp_path / "nope.py"), syntax=_write(tmp_path, "s.py", "def get_config(:\n"),
                 noget=_write(tmp_path, "n.py", "X = 1\n"), QUICK=QUICK,
                 raises=_write(tmp_path, "r.py", "def get_config():\n    raise ValueError('boom')\n"))
    argv = ["main"] + args.format(**files).split() + [f"--workdir={tmp_path / 'wd'}"] * ("--mode" not in args
                                                                                      or "bogus" in args)
    assert main.cli(argv) == code
    assert main.EXIT_CODES[code]
    assert text in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "wd" / "checkpoints").exists()  # nothing was trained or written


def test_bad_paths_and_states_are_one_line(trained, tmp_path, capsys):
    wd, cfg, _ = trained
    cases = [
        ([f"--config={QUICK}", f"--workdir={tmp_path / 'empty'}", "--mode=eval"], 2, "no checkpoints"),
        ([f"--config={QUICK}", f"--workdir={wd}", "--mode=eval", "--config.model.activation=tanh",
          "--config.data.name=digits", "--config.model.hidden=(32,)"], 2, "was trained with"),
        ([f"--config={QUICK}", f"--workdir={wd}", "--config.data.name=digits",
          "--config.model.hidden=(64,)", "--config.train.batch_size=100"], 2, "does not match this config"),
        ([f"--config={QUICK}", f"--workdir={_write(tmp_path, 'afile', 'x')}"], 4, "File exists"),
        ([f"--config={QUICK}", f"--workdir={tmp_path / 'w'}", "--config.data.name=mnist",
          f"--config.data.manual_dir={tmp_path / 'no_data'}", f"--config.data.data_dir={tmp_path / 'tfds'}"],
         2, "cannot prepare 'mnist'"),
    ]
    for argv, code, text in cases:
        assert main.cli(["main", *argv]) == code, argv
        assert text in _one_error_line(capsys.readouterr().err), argv


def test_ctrl_c_stops_at_a_checkpoint_with_one_line_and_the_rerun_resumes(tmp_path):
    longer = "--config.train.num_epochs=100"  # long enough that the interrupt lands mid-training
    straight, wd = tmp_path / "straight", tmp_path / "run"
    _run(straight, longer)
    p = subprocess.Popen(_cmd(wd, longer), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not (
            (wd / "checkpoints").exists() and any(d.name.isdigit() for d in (wd / "checkpoints").iterdir())):
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=300)[1]
    if p.returncode == 0:  # a loaded machine: the run ended before the signal was delivered
        pytest.skip("the run finished before the interrupt reached it")
    assert p.returncode == 130, err[-2000:]
    assert "run the same command to resume" in _one_error_line(err)
    r = _run(wd, longer)
    assert "resumed run from step" in r.stderr
    _assert_same_end(wd, straight)

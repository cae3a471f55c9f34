"""Faults, one library piece at a time: damaged and unwritable checkpoints, torn and resumed
metric files, the workdir lock, and the aggregation of an incomplete sweep."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import pytest

from vae_jax import aggregate, checkpoint, lock, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _state(i: int, hidden: int = 64) -> dict:
    return {"step": jnp.int32(i),
            "params": {"w": jax.random.normal(jax.random.key(i), (32, hidden)), "b": jnp.full((hidden,), i / 7)},
            "opt": {"mu": jax.random.uniform(jax.random.key(i + 1), (32, hidden))}}


def _target(hidden: int = 64):
    return checkpoint.abstract(jax.eval_shape(lambda: _state(0, hidden)))


@pytest.fixture
def three_steps(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path), max_to_keep=5)
    for i in (10, 20, 30):
        ck.save(i, _state(i))
    ck.close()
    return tmp_path, os.path.join(str(tmp_path), "checkpoints")


def _truncate_arrays(step_dir):
    files = glob.glob(os.path.join(step_dir, "default", "d", "*"))  # the arrays a restore reads
    assert files
    for p in files:
        os.truncate(p, os.path.getsize(p) // 2)


def _empty_metadata(step_dir):
    open(os.path.join(step_dir, "default", "_METADATA"), "w").close()


def _garbled_metadata(step_dir):
    with open(os.path.join(step_dir, "default", "_METADATA"), "r+b") as f:
        f.seek(5)
        f.write(b"\x00garbage\xff")


def _emptied_folder(step_dir):
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)


def _nan_optimizer_state(step_dir):
    # the same step with garbled values: NaN in the optimizer state, as bytes that decode to NaN
    # would give (written elsewhere, then put in its place)
    bad = _state(30)
    bad["opt"]["mu"] = bad["opt"]["mu"].at[3, 5].set(jnp.nan)
    other = step_dir + "-elsewhere"
    ck = checkpoint.Checkpointer(other)
    ck.save(30, bad)
    ck.close()
    shutil.rmtree(step_dir)
    shutil.move(os.path.join(other, "checkpoints", "30"), step_dir)
    shutil.rmtree(other)


DAMAGE = {"truncated arrays": _truncate_arrays, "empty _METADATA": _empty_metadata,
          "garbled _METADATA": _garbled_metadata, "emptied folder": _emptied_folder,
          "NaN optimizer state": _nan_optimizer_state}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_step_falls_back_to_the_previous_one(three_steps, damage, caplog):
    wd, ckdir = three_steps
    DAMAGE[damage](os.path.join(ckdir, "30"))
    caplog.set_level(logging.WARNING, logger="vae_jax.checkpoint")
    ck = checkpoint.Checkpointer(str(wd), max_to_keep=5)
    step, state = ck.restore_latest(_target())
    assert step == 20
    chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(_state(20)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint 30" in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)
    if damage == "NaN optimizer state":
        assert any("non-finite values in opt.mu" in w for w in warnings), warnings
    # the damaged step is set aside, so training can save step 30 again (Orbax refuses a step
    # that is not newer than the latest one it sees)
    assert ck.latest_step() == 20 and not os.path.exists(os.path.join(ckdir, "30"))
    ck.save(30, _state(31))
    ck.close()
    step, state = checkpoint.Checkpointer(str(wd)).restore_latest(_target())
    assert step == 30
    chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(_state(31)))


def test_empty_numeric_folder_is_not_a_checkpoint(three_steps, caplog):
    wd, ckdir = three_steps
    os.makedirs(os.path.join(ckdir, "9999"))
    caplog.set_level(logging.WARNING, logger="vae_jax.checkpoint")
    ck = checkpoint.Checkpointer(str(wd), max_to_keep=5)
    assert ck.latest_step() == 30
    assert any("9999" in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)
    step, state = ck.restore_latest(_target())
    assert step == 30
    chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(_state(30)))
    ck.save(40, _state(40))  # not refused as older than 9999
    ck.close()
    assert sorted(os.listdir(ckdir)) == ["10", "20", "30", "40"]


def test_no_intact_step_is_one_line_naming_each(three_steps):
    wd, ckdir = three_steps
    _truncate_arrays(os.path.join(ckdir, "30"))
    _empty_metadata(os.path.join(ckdir, "20"))
    _garbled_metadata(os.path.join(ckdir, "10"))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.Checkpointer(str(wd)).restore_latest(_target())
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"no intact checkpoint in {ckdir}: step 30 (unreadable ")
    assert ", step 20 (unreadable metadata" in msg and ", step 10 (unreadable metadata" in msg
    assert msg.endswith("; move the folder away to start fresh")
    assert sorted(os.listdir(ckdir)) == ["10", "20", "30"]  # nothing renamed or removed


def test_config_mismatch_is_not_damage(three_steps):
    wd, ckdir = three_steps
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint 30 in .* does not match this config "
                       r"\(.*\): opt.mu has shape \(32, 64\) there, \(32, 128\) here; "
                       r"params.b has shape \(64,\) there, \(128,\) here; params.w has"):
        checkpoint.Checkpointer(str(wd)).restore_latest(_target(hidden=128))
    extra = dict(_target(), ema=jax.ShapeDtypeStruct((3,), jnp.float32))
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint 30 .* does not match this config .*: "
                       "fields ema are in only one of them"):
        checkpoint.Checkpointer(str(wd)).restore_latest(extra)
    assert sorted(os.listdir(ckdir)) == ["10", "20", "30"]  # no fallback, nothing set aside


def test_remove_partial_deletes_an_interrupted_save(three_steps):
    wd, ckdir = three_steps
    tmp = os.path.join(ckdir, "40.orbax-checkpoint-tmp")
    shutil.copytree(os.path.join(ckdir, "30"), tmp)
    ck = checkpoint.Checkpointer(str(wd))
    assert ck.latest_step() == 30
    ck.remove_partial()
    assert sorted(os.listdir(ckdir)) == ["10", "20", "30"]


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_fallback_prints_no_traceback(three_steps):
    # Orbax logs restore failures with tracebacks (absl, and asyncio's "Event loop is closed");
    # what a user sees is the one warning line
    wd, ckdir = three_steps
    os.truncate(os.path.join(ckdir, "30", "default", "manifest.ocdbt"), 50)
    r = _run("""
        import logging, sys, jax, jax.numpy as jnp
        from vae_jax import checkpoint
        logging.basicConfig(level=logging.WARNING)
        t = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": {"w": jax.ShapeDtypeStruct((32, 64), jnp.float32),
             "b": jax.ShapeDtypeStruct((64,), jnp.float32)}, "opt": {"mu": jax.ShapeDtypeStruct((32, 64), jnp.float32)}}
        for _ in range(3):
            print("restored", checkpoint.Checkpointer(sys.argv[1]).restore_latest(t)[0])
            import shutil; shutil.move(sys.argv[1] + "/checkpoints/30.damaged", sys.argv[1] + "/checkpoints/30")
        """, str(wd))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["restored 20"] * 3
    assert "Traceback" not in r.stderr and "Event loop" not in r.stderr, r.stderr
    assert r.stderr.count("checkpoint 30 in") == 3, r.stderr


def _unshare_ok() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


WRITE = """
    import os, subprocess, sys, jax
    from vae_jax import checkpoint
    d, mode = sys.argv[1], sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", d], check=True)
    ck = checkpoint.Checkpointer(d)
    ck.save(1, {"w": jax.numpy.ones(4)})
    ck.wait()
    if mode == "ro":
        subprocess.run(["mount", "-o", "remount,ro", d], check=True)
    try:  # ~800 kB of incompressible floats do not fit in the 400 kB left
        ck.save(2, {"w": jax.random.normal(jax.random.key(0), (200_000,))})
        ck.close()
        print("saved")
    except checkpoint.CheckpointError as e:
        print(e)
    print(sorted(os.listdir(ck.directory)))
    """


@pytest.mark.skipif(not _unshare_ok(), reason="needs unshare -rm (a private mount namespace) for a tmpfs")
@pytest.mark.parametrize("mode,why", [("full", "No space left on device"), ("ro", "Read-only file system")])
def test_unwritable_checkpoint_folder_is_one_line_and_leaves_no_tmp(tmp_path, mode, why):
    # a real full (400 kB tmpfs) or read-only file system, in a private mount namespace
    r = subprocess.run(["unshare", "-rm", sys.executable, "-c", textwrap.dedent(WRITE), str(tmp_path), mode],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out == [f"cannot write checkpoint 2 to {tmp_path}/checkpoints: {why}", "['1']"], r.stdout
    assert "Traceback" not in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions (the tmpfs test covers it)")
def test_read_only_folder_by_permissions(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path))
    os.chmod(ck.directory, 0o555)
    try:
        with pytest.raises(checkpoint.CheckpointError, match=r"^cannot write checkpoint 1 to .*: Permission denied$"):
            ck.save(1, {"w": jnp.ones(4)})
            ck.wait()
    finally:
        os.chmod(ck.directory, 0o755)
    assert os.listdir(ck.directory) == []


# ----------------------------------------------------------------------------------------------
# Metric files


def _events(logdir: str) -> list:
    """Every event of every file under ``logdir``, in file-name (creation) order, read from the
    TFRecord framing: length (u64), its crc (u32), the Event proto, its crc (u32)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
            i += 12 + n + 4
    return out


def _visible_scalars(logdir: str, tag: str) -> list[tuple[int, float]]:
    """What TensorBoard shows for ``tag``: a SessionLog START at step s (purge_step) hides the
    events at steps >= s written before it."""
    from tensorboardX.proto import event_pb2

    shown: list[tuple[int, float]] = []
    for e in _events(logdir):
        if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START:
            shown = [(s, v) for s, v in shown if s < e.step]
        for v in e.summary.value:
            if v.tag == tag:
                shown.append((e.step, v.simple_value))
    return shown


def test_resume_drops_later_rows_a_torn_line_and_later_events(tmp_path, caplog):
    w = metrics.MetricWriter(str(tmp_path))
    for s in (10, 20, 30):
        w.write(s, "train", {"loss": s / 10})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "spl')  # killed mid-write
    assert [r["step"] for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [10, 20, 30]

    caplog.set_level(logging.WARNING, logger="vae_jax.metrics")
    w = metrics.MetricWriter(str(tmp_path), resume_step=20)  # the checkpoint restored is step 20
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    assert [r["step"] for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [10, 20]
    w.write(30, "train", {"loss": 3.5})
    w.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]  # every line whole
    assert [(r["step"], r["loss"]) for r in rows] == [(10, 1.0), (20, 2.0), (30, 3.5)]
    assert _visible_scalars(str(tmp_path / "tensorboard"), "train/loss") == [(10, 1.0), (20, 2.0), (30, 3.5)]
    assert len(glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))) == 2  # none overwritten


def test_fresh_restart_and_plain_reopen(tmp_path):
    w = metrics.MetricWriter(str(tmp_path))
    w.write(0, "hparams", {"x": 1})
    w.write(15, "train", {"loss": 1.0})
    w.close()
    metrics.MetricWriter(str(tmp_path)).close()  # no resume step: rows kept as they are
    assert [r["step"] for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [0, 15]
    metrics.MetricWriter(str(tmp_path), resume_step=0).close()  # killed before the first save
    assert [r["step"] for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [0]
    assert _visible_scalars(str(tmp_path / "tensorboard"), "train/loss") == []


# ----------------------------------------------------------------------------------------------
# Workdir lock


def test_lock_refuses_a_second_process_until_the_holder_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vae_jax import lock\n"
         "with lock.WorkdirLock(sys.argv[1]):\n    print('ready', flush=True)\n    time.sleep(300)",
         str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(lock.LockError) as e:
            with lock.WorkdirLock(str(tmp_path)):
                pass
        msg = str(e.value)
        assert isinstance(e.value, RuntimeError) and "\n" not in msg
        assert msg.startswith(f"{tmp_path} is in use by pid {holder.pid} on host ")
        assert msg.endswith("; wait for it or use another --workdir")
        with lock.WorkdirLock(str(tmp_path), enabled=False):  # a non-main process takes none
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lock.WorkdirLock(str(tmp_path)):  # the kernel released the killed holder's lock
        assert open(tmp_path / ".lock").read().split()[1] == str(os.getpid())
    with lock.WorkdirLock(str(tmp_path)):  # and leaving the block released ours
        pass


# ----------------------------------------------------------------------------------------------
# Aggregation of an incomplete sweep


def _member(folder, seed, elbo, beta=1.0):
    from vae_jax import config as config_lib

    os.makedirs(folder, exist_ok=True)
    cfg = config_lib.Config().to_dict()
    cfg["seed"], cfg["objective"]["beta"] = seed, beta
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    json.dump({"elbo": elbo, "recon": -elbo - 10, "kl": 10.0, "step": 100}, open(os.path.join(folder, "summary.json"), "w"))


def test_aggregate_names_missing_and_unfinished_runs_and_marks_single_seeds(tmp_path):
    runs = [{"name": n, "dir": os.path.join("runs", n),
             "members": [{"name": f"beta={b},seed={s}"} for b, s in ms]}
            for n, ms in (("done", [(1, 0), (1, 1), (4, 0)]), ("never", [(1, 0)]), ("half", [(1, 0)]))]
    json.dump({"runs": runs}, open(tmp_path / "sweep.json", "w"))
    done = tmp_path / "runs" / "done"
    for (b, s), elbo in zip([(1, 0), (1, 1), (4, 0)], (-100.0, -102.0, -110.0)):
        _member(done / "members" / f"beta={b},seed={s}", s, elbo, beta=float(b))
    json.dump({"members": {}}, open(done / "summary.json", "w"))
    json.dump({}, open(done / "population.json", "w"))
    os.makedirs(tmp_path / "runs" / "half" / "checkpoints")  # started, never finished

    r = subprocess.run([sys.executable, "-m", "vae_jax.aggregate", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, r.stderr
    assert "run never is missing (no folder" in warnings[0]
    assert "run half is unfinished (no summary.json" in warnings[1]
    for table in ("results.md", "results_mean_std.md"):
        text = (tmp_path / table).read_text()
        assert "Incomplete sweep" in text and "run never is missing" in text and "run half is unfinished" in text
    md = (tmp_path / "results_mean_std.md").read_text()
    assert "| 1 | 2 | (0, 1) | -101 ± 1.4142 |" in md  # two seeds: a std
    one_seed = next(line for line in md.splitlines() if line.startswith("| 4 |"))
    assert one_seed.startswith("| 4 | 1 | (0) | -110 (n=1) |") and "±" not in one_seed  # not "± 0"
    import csv

    by_beta = {t["beta"]: t for t in csv.DictReader(open(tmp_path / "results_mean_std.csv"))}
    assert by_beta["4.0"]["elbo_std"] == "" and by_beta["4.0"]["n"] == "1"

    # a member missing from a finished population run is named too
    shutil.rmtree(done / "members" / "beta=4,seed=0")
    assert aggregate.incomplete(str(tmp_path))[0] == "member beta=4,seed=0 of run done is unfinished (no summary.json)"


def _record_with_exception_from(filename: str) -> logging.LogRecord:
    code = compile("raise ValueError('OUT_OF_RANGE: Error reading')", filename, "exec")
    try:
        exec(code)
    except ValueError:
        info = sys.exc_info()
    return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1,
                             "Future exception was never retrieved\nfuture: <Future finished>",
                             None, info)


def test_asyncio_reports_of_orbax_reads_left_unretrieved_are_dropped():
    """A failed restore leaves Orbax's other array reads with exceptions nobody retrieves; asyncio
    would print each with a traceback after the one-line warning. Only those are dropped."""
    checkpoint._silence_orbax()
    assert checkpoint._quiet_asyncio in logging.getLogger("asyncio").filters
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
    assert not checkpoint._quiet_asyncio(_record_with_exception_from(orbax_file))
    assert checkpoint._quiet_asyncio(_record_with_exception_from(os.path.join(os.sep, "app", "mine.py")))
    plain = logging.LogRecord("asyncio", logging.ERROR, "x.py", 1, "Executing <Task> took 0.2 s", None, None)
    assert checkpoint._quiet_asyncio(plain)

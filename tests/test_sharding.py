"""Devices: data- and member-parallel runs on 8 fake CPU devices equal the single-device ones,
compile once, resume bit for bit; bad meshes fail in one line; bf16 compute and matmul precision.

The 8-device checks run in one subprocess (tests/sharding_worker.py) started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: the flag must be set before JAX starts,
and the rest of the suite keeps its single device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT, load_config_dict, replace, tiny
from vae_jax import experiment
from vae_jax import config as config_lib, sharding, train

# Data-parallel sums the per-example gradients in another order than one device (per-device
# partial sums, then an all-reduce), so results agree to float32 rounding, not bit for bit:
# measured max |Δparam| 7e-9 after one step and 6e-8 after a 36-step run, 6e-8 for an 8-member
# population after one epoch (jax 0.10.2, XLA:CPU).
# A real error (a device seeing the wrong rows, a missing all-reduce: each device's gradient
# would be 1/8 of the batch's) moves parameters by ~1e-3 after one Adam step.
STEP_ATOL = 1e-6
RUN_ATOL = 1e-5


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = tmp_path_factory.mktemp("eight")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_worker.py"), str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    assert res["device_count"] == 8
    return res


@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
def test_data_parallel_step_equals_single_device_step(eight, mode):
    r = eight[f"step_{mode}"]
    assert r["devices"] == 8 and r["batch_shard_rows"] == 15  # 120 images, 15 per device
    assert r["init_param_diff"] == 0.0  # same initialisation
    assert r["param_diff"] < STEP_ATOL and r["opt_diff"] < STEP_ATOL
    for k, v in r["metrics_1"].items():
        assert r["metrics_8"][k] == pytest.approx(v, rel=1e-6), k
    assert r["param_shardings_preserved"]  # the step keeps the state's layout (donation reuses it)
    if mode == "fsdp":  # every matrix split over 'data', the 16-element vectors replicated
        assert sum("'data'" in s for s in r["param_specs"]) >= 4
    else:
        assert not any("'data'" in s for s in r["param_specs"])


def test_sharded_epoch_traces_once(eight):
    r = eight["retrace"]
    assert r["traces"] == 1 and r["cache_size"] == 1
    assert r["step"] == 3 * 12
    assert r["images_replicated"] and r["images_equal"]  # make_array_from_process_local_data path


def test_full_run_with_resume_on_eight_devices(eight):
    r = eight["run"]
    assert r["steps"] == [24, 24, 24] and r["mid_step"] == 12
    assert r["resume_bit_for_bit"]
    assert r["vs_single_param_diff"] < RUN_ATOL
    assert r["elbo_8"] == pytest.approx(r["elbo_1"], rel=1e-5)
    assert r["devices_8"]["mesh"] == {"members": 1, "data": 8}
    assert r["devices_8"]["global_batch_size"] == 120 and r["devices_8"]["per_device_batch_size"] == 15
    assert r["devices_1"]["per_device_batch_size"] == 120


def test_population_sharded_over_members_equals_unsharded(eight):
    r = eight["population"]
    assert r["mesh_8"] == {"members": 8, "data": 1} and r["mesh_1"] == {"members": 1, "data": 1}
    assert r["param_diff"] < RUN_ATOL
    assert r["elbo_diff"] < 1e-4
    assert r["map_sharded_diff"] == 0.0  # members split over 8 rows, each bit for bit
    assert r["auto_strategy"] == ["map", "vmap"]  # CPU: 'map' unless batches are split
    assert r["map_error"].startswith("config.population.strategy='map'") and "\n" not in r["map_error"]
    assert "config.mesh.data=2" in r["map_error"]
    assert not r["map_workdir_has_checkpoints"]


def test_batch_not_dividing_the_data_axis_fails_before_compiling(eight):
    assert eight["batch_error"] == ("config.train.batch_size=100: does not divide the mesh's data "
                                    "axis of 8 devices; use a multiple of 8 (e.g. 96) or set "
                                    "config.mesh.data")
    assert not eight["bad_batch_has_checkpoints"]


# ----------------------------------------------------------------------------------------------
# In this process (one device)


@pytest.mark.parametrize("field,value,match", [
    ("data", 0, r"config\.mesh\.data=0: must be -1"),
    ("members", -2, r"config\.mesh\.members=-2: must be -1"),
    ("param_sharding", "zero", r"config\.mesh\.param_sharding='zero': must be one of replicated, fsdp"),
    ("distributed", "yes", r"config\.mesh\.distributed='yes'"),
    ("members", 2, r"config\.mesh\.members=2: a single run has one member"),
    ("fsdp_min_size", 0, r"config\.mesh\.fsdp_min_size=0"),
])
def test_bad_mesh_fields_fail_in_one_line(field, value, match):
    c = load_config_dict("quickstart")
    setattr(c.mesh, field, value)
    with pytest.raises(config_lib.ConfigError, match=match) as e:
        config_lib.from_config_dict(c)
    assert "\n" not in str(e.value)


def test_bad_mesh_shapes_fail_in_one_line():
    c = load_config_dict("quickstart")
    c.mesh.data, c.mesh.members = -1, -1
    with pytest.raises(config_lib.ConfigError, match="only one of mesh.data and mesh.members"):
        config_lib.from_config_dict(c)
    c = load_config_dict("quickstart")
    c.population.members = ({"objective.beta": 1.0}, {"objective.beta": 2.0}, {"objective.beta": 3.0})
    c.mesh.members = 2
    with pytest.raises(config_lib.ConfigError, match="must divide the 3 population members"):
        config_lib.from_config_dict(c)
    mesh_cfg = config_lib.MeshConfig(data=4)
    with pytest.raises(config_lib.ConfigError,
                       match=r"config\.mesh\.data=4: mesh members x data = 1 x 4 needs 4 devices and there are 1"):
        sharding.make_mesh(mesh_cfg)
    with pytest.raises(config_lib.ConfigError, match=r"config\.mesh\.members=3: does not divide the 8"):
        sharding.mesh_shape(config_lib.MeshConfig(members=3), 8, num_members=6)
    assert sharding.mesh_shape(config_lib.MeshConfig(members=2), 8, num_members=16) == (2, 4)
    assert sharding.mesh_shape(config_lib.MeshConfig(members=-1, data=2), 8, num_members=16) == (4, 2)
    assert sharding.mesh_shape(config_lib.MeshConfig(members=4), 8) == (1, 8)  # single run


def test_single_process_never_initializes_distributed(monkeypatch):
    for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES", "PMI_SIZE",
                "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")  # an sbatch script itself, outside srun: one process
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(1))
    assert not sharding.initialize_distributed(config_lib.MeshConfig())
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")  # inside `srun -n 4`
    assert sharding.cluster_size() == 4
    assert not sharding.initialize_distributed(config_lib.MeshConfig(distributed="off"))
    assert sharding.initialize_distributed(config_lib.MeshConfig())
    assert calls == [1]


def test_bf16_compute_keeps_float32_state_and_tracks_float32():
    cfg = tiny()
    bf = replace(cfg, model=dict(compute_dtype="bfloat16"))
    ds = experiment.load_data(cfg)
    batch = {"image": jnp.asarray(ds.train_images[:100])}
    out = {}
    for name, c in (("f32", cfg), ("bf16", bf)):
        exp = experiment.Experiment.build(c, ds.image_shape)
        state = jax.jit(exp.init_state)()
        new, m = jax.jit(exp.train_step)(state, batch, experiment.hyperparams(c))
        out[name] = (new, m)
    new, m = out["bf16"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(new.opt_state))
    assert all(m[k].dtype == jnp.float32 for k in ("loss", "recon", "kl", "elbo"))
    ref = out["f32"][1]
    assert float(m["recon"]) != float(ref["recon"])  # bf16 was really used
    assert float(m["recon"]) == pytest.approx(float(ref["recon"]), rel=2e-2)


def test_precision_settings_are_applied_and_logged(tmp_path):
    cfg = tiny(model=dict(compute_dtype="bfloat16"), train=dict(num_epochs=1, matmul_precision="highest"))
    s = train.train_and_evaluate(cfg, str(tmp_path))
    assert s["metadata"]["devices"]["compute_dtype"] == "bfloat16"
    assert s["metadata"]["devices"]["matmul_precision"] == "highest"
    hp = json.loads((tmp_path / "hparams.json").read_text())
    assert hp["model"]["compute_dtype"] == "bfloat16" and hp["train"]["matmul_precision"] == "highest"
    assert hp["devices"]["per_device_batch_size"] == 100
    # the setting reaches the compiled dot: 'highest' lowers every f32 dot with HIGHEST precision
    exp = experiment.Experiment.build(tiny(), (8, 8, 1))
    state = jax.eval_shape(exp.init_state)
    batch = {"image": jax.ShapeDtypeStruct((100, 8, 8, 1), jnp.float32)}
    with sharding.matmul_precision("highest"):
        text = jax.jit(exp.train_step).lower(state, batch, experiment.hyperparams(cfg)).as_text()
    assert "HIGHEST" in text
    with sharding.matmul_precision("default"):
        text = jax.jit(exp.train_step).lower(state, batch, experiment.hyperparams(cfg)).as_text()
    assert "HIGHEST" not in text
    for bad in ("low", "fp32"):
        c = load_config_dict("quickstart")
        c.train.matmul_precision = bad
        with pytest.raises(config_lib.ConfigError, match="train.matmul_precision"):
            config_lib.from_config_dict(c)
    c = load_config_dict("quickstart")
    c.model.compute_dtype = "float16"
    with pytest.raises(config_lib.ConfigError, match="model.compute_dtype='float16': must be one of float32, bfloat16"):
        config_lib.from_config_dict(c)

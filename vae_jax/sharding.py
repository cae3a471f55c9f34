"""Devices: the mesh, the shardings of state and data, multi-host start-up, matmul precision.

One code path for one CPU, one GPU, a multi-GPU node and a TPU pod slice: ``jax.jit`` over a
``jax.sharding.Mesh`` with axes ``('members', 'data')`` (no pmap).

* The batch gathered inside the compiled epoch is split over ``'data'`` (each device computes
  ``batch_size / data`` examples; XLA sums the gradients across the axis).
* Parameters and optimizer state are replicated (``mesh.param_sharding='replicated'``), or, with
  ``'fsdp'``, arrays of at least ``mesh.fsdp_min_size`` elements are split over ``'data'``.
* A population's leading member axis is split over ``'members'`` (16 members on a 2x4 mesh: 8
  members on each of the 2 'members' rows, each batch split over 4 devices).
* The training set stays on the devices, replicated, so the per-step gather of a shuffled batch
  needs no communication; each process puts only its slice of it on its devices
  (``jax.make_array_from_process_local_data``) and one all-gather replicates it.

With one device every sharding is trivial and the compiled program is the single-device one, so
numbers are unchanged (tests/test_train.py's golden metrics and bit-for-bit resume).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vae_jax.config import ConfigError, MeshConfig

log = logging.getLogger(__name__)

AXES = ("members", "data")

# environment variables whose value is the number of processes of a cluster launch
_CLUSTER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES",
                      "PMI_SIZE")


# ----------------------------------------------------------------------------------------------
# Multi-host


def cluster_size() -> int:
    """Processes of the cluster launch this process belongs to, from the launcher's environment
    (``srun``, ``mpirun``, explicit ``JAX_NUM_PROCESSES``; a multi-host TPU slice lists its
    workers in ``TPU_WORKER_HOSTNAMES``); 1 for a plain process."""
    for var in _CLUSTER_SIZE_VARS:
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 1:
            return int(v)
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return max(1, len(hosts))


def initialize_distributed(cfg: MeshConfig) -> bool:
    """``jax.distributed.initialize()`` (which reads the coordinator, process count and id from
    SLURM, Open MPI, TPU metadata or ``JAX_COORDINATOR_ADDRESS``) when ``mesh.distributed`` is
    'on', or 'auto' and the process runs under a multi-process launch. Never on a plain
    single-process run. Must run before anything touches a device; returns whether JAX is
    now multi-process."""
    if jax.distributed.is_initialized():
        return True
    if cfg.distributed == "off" or (cfg.distributed == "auto" and cluster_size() == 1):
        return False
    env = os.environ
    if env.get("JAX_NUM_PROCESSES", "").isdigit() and env.get("JAX_PROCESS_ID", "").isdigit():
        # a generic launch (any launcher, or several processes on one machine): the coordinator
        # from JAX_COORDINATOR_ADDRESS, the process count and id from these two variables
        jax.distributed.initialize(num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    else:  # SLURM, Open MPI, TPU metadata: JAX detects the cluster itself
        jax.distributed.initialize()
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_main_process() -> bool:
    """Only process 0 writes logs, figures and JSON (every process takes part in checkpoints)."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------------------------
# The mesh


def mesh_shape(cfg: MeshConfig, num_devices: int, num_members: int = 0) -> tuple[int, int]:
    """(members, data) for ``num_devices``; ``num_members`` = population size (0: a single run,
    whose 'members' axis is 1). -1 takes all devices the other axis leaves; explicit sizes may
    use fewer devices than there are (the first ones; single-process only, see make_mesh). One
    ConfigError line when the sizes do not fit."""
    members = 1 if not num_members else cfg.members
    if members == -1:
        if num_devices % cfg.data:
            raise ConfigError(f"config.mesh.data={cfg.data}: does not divide the {num_devices} devices")
        members = num_devices // cfg.data
    if cfg.data == -1 and num_devices % members:
        raise ConfigError(f"config.mesh.members={members}: does not divide the {num_devices} devices")
    data = num_devices // members if cfg.data == -1 else cfg.data
    if members * data > num_devices:
        raise ConfigError(f"config.mesh.data={cfg.data}: mesh members x data = {members} x {data} "
                          f"needs {members * data} devices and there are {num_devices}")
    if num_members and num_members % members:
        raise ConfigError(f"config.mesh.members={members}: must divide the {num_members} "
                          f"population members")
    return members, data


def make_mesh(cfg: MeshConfig, num_members: int = 0, devices=None) -> Mesh:
    """The ('members', 'data') mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices), num_members)
    if math.prod(shape) < len(devices):
        if jax.process_count() > 1:
            raise ConfigError(f"config.mesh.data={cfg.data}: a multi-process run uses all "
                              f"{len(devices)} devices; members x data = {shape[0]} x {shape[1]}")
        log.warning("mesh %s uses %d of %d devices", shape, math.prod(shape), len(devices))
        devices = devices[: math.prod(shape)]
    try:  # a topology-aware order (ICI rings on TPU, NVLink islands on GPU)
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # noqa: BLE001 - any device kind it does not know: plain order
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def data_size(mesh: Mesh) -> int:
    return mesh.shape["data"]


def check_batch(batch_size: int, mesh: Mesh) -> int:
    """The per-device batch; one ConfigError line if ``batch_size`` does not divide 'data'."""
    d = data_size(mesh)
    if batch_size % d:
        raise ConfigError(
            f"config.train.batch_size={batch_size}: does not divide the mesh's data axis of {d} "
            f"devices; use a multiple of {d} (e.g. {d * max(1, round(batch_size / d))}) or set "
            f"config.mesh.data")
    return batch_size // d


def describe(mesh: Mesh, batch_size: int, num_members: int = 0) -> dict[str, Any]:
    """What a run logs about its devices: mesh, global and per-device batch, processes."""
    out = {"devices": int(mesh.devices.size), "platform": mesh.devices.flat[0].platform,
           "mesh": {k: int(v) for k, v in mesh.shape.items()}, "processes": jax.process_count(),
           "global_batch_size": batch_size, "per_device_batch_size": batch_size // data_size(mesh)}
    if num_members:
        out["members_per_device_row"] = num_members // mesh.shape["members"]
    return out


# ----------------------------------------------------------------------------------------------
# Shardings


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A batch's leading (example) axis over 'data'."""
    return NamedSharding(mesh, P("data"))


def member_sharding(mesh: Mesh) -> NamedSharding:
    """A population pytree's leading (member) axis over 'members'."""
    return NamedSharding(mesh, P("members"))


def _leaf_spec(shape: tuple[int, ...], member_axis: bool, cfg: MeshConfig, data: int) -> P:
    lead = ("members",) if member_axis else ()
    rest = [None] * (len(shape) - len(lead))
    if cfg.param_sharding == "fsdp" and data > 1 and math.prod(shape) >= cfg.fsdp_min_size:
        dims = [i for i in range(len(rest)) if shape[len(lead) + i] % data == 0]
        if dims:  # the largest axis that the data axis divides
            rest[max(dims, key=lambda i: shape[len(lead) + i])] = "data"
    return P(*lead, *rest)


def state_shardings(abstract: Any, mesh: Mesh, cfg: MeshConfig, member_axis: bool = False) -> Any:
    """A NamedSharding per leaf of ``abstract`` (a pytree of ShapeDtypeStructs, e.g. a
    TrainState from ``jax.eval_shape``): replicated, or FSDP-split over 'data', with a leading
    member axis over 'members' for populations. Scalars are replicated."""
    data = data_size(mesh)

    def one(x):
        if not x.shape:
            return NamedSharding(mesh, P("members") if member_axis else P())
        return NamedSharding(mesh, _leaf_spec(tuple(x.shape), member_axis, cfg, data))

    return jax.tree.map(one, abstract)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying ``shardings``: an Orbax restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)


def constrain_batch(batch: dict[str, jax.Array], mesh: Mesh | None) -> dict[str, jax.Array]:
    """Inside the compiled step: split the batch's example axis over 'data'."""
    if mesh is None:
        return batch
    return jax.lax.with_sharding_constraint(batch, batch_sharding(mesh))


# ----------------------------------------------------------------------------------------------
# Data


def global_array(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """The host array ``local`` (every process holds the same full array) as one replicated
    global array: each process puts only its rows of a 'data'-split layout on its devices
    (``make_array_from_process_local_data``), then one all-gather replicates them. Rows are
    padded to a multiple of the data axis and the padding cut off again, so the result equals
    ``local`` exactly."""
    n = local.shape[0]
    d = data_size(mesh)
    rows = -(-n // d) * d
    padded = np.concatenate([local, np.zeros((rows - n, *local.shape[1:]), local.dtype)]) \
        if rows != n else local
    split = batch_sharding(mesh)
    idx = split.addressable_devices_indices_map(padded.shape)
    starts = [s[0].start or 0 for s in idx.values()]
    stops = [s[0].stop if s[0].stop is not None else rows for s in idx.values()]
    lo, hi = min(starts), max(stops)
    arr = jax.make_array_from_process_local_data(split, padded[lo:hi], padded.shape)
    return jax.jit(lambda a: a[:n], out_shardings=replicated(mesh))(arr)


def to_host(tree: Any) -> Any:
    """Numpy copies of a pytree of (possibly multi-host) global arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


# ----------------------------------------------------------------------------------------------
# Precision


def matmul_precision(name: str):
    """A context for tracing under ``train.matmul_precision`` ('default' changes nothing)."""
    if name == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(name)


def compute_dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def cast_floating(tree: Any, dtype) -> Any:
    """Floating leaves of ``tree`` cast to ``dtype`` (integers, keys and labels untouched)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)

"""Grid launcher: ``python -m vae_jax.sweep --config configs/sweeps/NAME.py --workdir DIR``.

A sweep file has ``get_config()`` (the base config; ``--config.section.field=value`` overrides
apply to it as for a single run) and ``get_sweep()`` returning a :class:`Spec`: a grid of points
(built with :func:`axis`, :func:`product` and :func:`zip_` over dotted config fields), times
``seeds``. Each point is the base config with its fields replaced.

Points that differ only in batchable fields (``config.population_fields()``: seed, β, learning
rate, free bits, warm-up/cycle/capacity lengths and targets) become members of one population,
trained in one compiled program (``vae_jax.train``); every other field (family, network,
widths, latent size, likelihood, schedule, ...) makes a separate run. Runs land in
``DIR/runs/<name>``, with ``<name>`` derived from the run's structural overrides (``base`` when
there are none), so re-running the same command skips finished runs (``summary.json`` present)
and resumes interrupted ones from their checkpoints. ``--index i --count n`` takes runs
i, i+n, i+2n, ... (disjoint slices for a job array); ``--dry-run`` prints the plan only. After
the runs, ``vae_jax.aggregate`` writes the tables and plots of everything finished into ``DIR``.

Bad sweep definitions (unknown fields, values a config rejects, mismatched zips, duplicate points)
fail before anything trains, in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections

from vae_jax import config as config_lib
from vae_jax.config import Config, ConfigError
from vae_jax import train
from vae_jax.config import label

Point = dict[str, Any]
RUNS_DIR = "runs"


class SweepError(ConfigError):
    """A sweep definition is wrong; the message is one line."""


# ----------------------------------------------------------------------------------------------
# Building grids (used by configs/sweeps/*.py)


def axis(field: str, values: Iterable[Any]) -> list[Point]:
    """One field over values: ``axis("objective.beta", [0.5, 1, 2])``."""
    values = list(values)
    if not isinstance(field, str) or not field:
        raise SweepError(f"sweep axis field {field!r}: must be a dotted config field name")
    if not values:
        raise SweepError(f"sweep axis {field!r}: has no values")
    return [{field: v} for v in values]


def _grid(g: Any) -> list[Point]:
    """A grid from a list of points or a dict of field -> values (a product of axes)."""
    if isinstance(g, Mapping):
        return product(*(axis(k, v) for k, v in g.items()))
    if isinstance(g, (list, tuple)) and all(isinstance(p, Mapping) for p in g):
        return [dict(p) for p in g]
    raise SweepError(f"sweep grid {g!r}: must be a list of points (dicts) or a dict of field -> values")


def _merge(a: Point, b: Point, how: str) -> Point:
    both = set(a) & set(b)
    if both:
        raise SweepError(f"sweep {how}: field {sorted(both)[0]!r} appears in more than one factor")
    return {**a, **b}


def product(*grids: Any) -> list[Point]:
    """Every combination of the grids' points (the first varies slowest)."""
    out: list[Point] = [{}]
    for g in grids:
        out = [_merge(p, q, "product") for p in out for q in _grid(g)]
    return out


def zip_(*grids: Any) -> list[Point]:
    """Points taken together, position by position; the grids must have equal lengths."""
    gs = [_grid(g) for g in grids]
    lengths = [len(g) for g in gs]
    if len(set(lengths)) > 1:
        raise SweepError(f"sweep zip: factors have different lengths {lengths}")
    out = []
    for ps in zip(*gs):
        p: Point = {}
        for q in ps:
            p = _merge(p, q, "zip")
        out.append(p)
    return out


@dataclasses.dataclass(frozen=True)
class Spec:
    """What ``get_sweep()`` returns. ``grid``: points (dicts of dotted field -> value);
    ``seeds``: every point is repeated for each seed (() = the base config's seed);
    ``max_members``: populations larger than this are split into several runs (0 = no limit;
    1 = no packing: every point its own run)."""

    grid: Sequence[Point] = ({},)
    seeds: tuple[int, ...] = ()
    max_members: int = 0


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, e.g. a sweep's base: ``load_config_file(
    pathlib.Path(__file__).parents[1] / "mnist_mlp.py")``."""
    return _load_module(path).get_config()


def _load_module(path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SweepError(f"sweep file {path!r}: does not exist")
    name = "vae_jax_sweep_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_spec(path: str | os.PathLike) -> Spec:
    mod = _load_module(path)
    if not hasattr(mod, "get_sweep"):
        raise SweepError(f"sweep file {os.fspath(path)!r}: defines no get_sweep() "
                         f"(a plain config file? train it with vae_jax.main)")
    spec = mod.get_sweep()
    if isinstance(spec, Mapping):
        spec = Spec(**spec)
    if not isinstance(spec, Spec):
        raise SweepError(f"get_sweep() of {os.fspath(path)!r} returned {type(spec).__name__}: "
                         f"must return vae_jax.sweep.Spec")
    return spec


# ----------------------------------------------------------------------------------------------
# The plan


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: dict[str, Any]  # structural fields of this run
    members: tuple[dict[str, Any], ...]  # batchable fields of each member
    config: Config  # the run's validated config (population.members = members)


def _coerce_point(i: int, p: Point) -> Point:
    out = {}
    for k, v in p.items():
        if not isinstance(k, str) or k.startswith("population.") or config_lib.field_type(k) is None:
            raise SweepError(f"sweep point {i} {p!r}: unknown config field {k!r}")
        try:
            out[k] = config_lib.coerce_field(k, v)
        except ConfigError as e:
            raise SweepError(f"sweep point {i}: {e}") from None
    return out


def _short_keys(fields: Iterable[str]) -> dict[str, str]:
    """Field -> its name in folder names: the last component unless two fields share it."""
    fields = list(dict.fromkeys(fields))
    last = [f.rsplit(".", 1)[-1] for f in fields]
    return {f: (s if last.count(s) == 1 else f) for f, s in zip(fields, last)}


def plan(base: ml_collections.ConfigDict | Mapping | Config, spec: Spec) -> list[Run]:
    """Expands ``spec`` over ``base`` into runs; raises SweepError/ConfigError in one line."""
    if not isinstance(base, Config):
        base = config_lib.from_config_dict(base)
    if base.population.members:
        raise SweepError("the base config of a sweep defines population.members: let the sweep's "
                         "grid and seeds make the members")
    if isinstance(spec.max_members, bool) or not isinstance(spec.max_members, int) or spec.max_members < 0:
        raise SweepError(f"sweep max_members={spec.max_members!r}: must be an integer >= 0")
    points = [_coerce_point(i, p) for i, p in enumerate(_grid(list(spec.grid)))]
    if not points:
        raise SweepError("sweep grid is empty")
    seeds = tuple(spec.seeds)
    if seeds:
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise SweepError(f"sweep seeds={seeds!r}: must be distinct integers >= 0")
        if any("seed" in p for p in points):
            raise SweepError("sweep grid sets 'seed' and the sweep has seeds: use one of them")
        points = [dict(p, seed=s) for p in points for s in seeds]
    seen: dict[str, int] = {}
    for i, p in enumerate(points):
        key = json.dumps(sorted(p.items()), default=str)
        if key in seen:
            raise SweepError(f"sweep point {i} {p!r}: duplicates point {seen[key]}")
        seen[key] = i

    groups: dict[str, tuple[dict, list[dict]]] = {}
    fields = config_lib.population_fields()
    for p in points:
        structural = {k: v for k, v in p.items() if k not in fields}
        batch = {k: v for k, v in p.items() if k in fields}
        key = json.dumps(sorted(structural.items()), default=str)
        groups.setdefault(key, (structural, []))[1].append(batch)

    keys = _short_keys(k for p in points for k in p)
    runs: list[Run] = []
    for structural, members in groups.values():
        size = spec.max_members or len(members)
        chunks = [members[i:i + size] for i in range(0, len(members), size)]
        stem = _run_label(structural, keys)
        for j, chunk in enumerate(chunks):
            name = stem if len(chunks) == 1 else f"{stem}.part{j}"
            try:
                cfg = config_lib.with_overrides(base, structural)
                cfg = dataclasses.replace(cfg, population=dataclasses.replace(
                    cfg.population, members=tuple(chunk)))
                cfg.validate()
            except ConfigError as e:
                raise SweepError(f"sweep run {name}: {e}") from None
            runs.append(Run(name, structural, tuple(chunk), cfg))
    if len({r.name for r in runs}) != len(runs):  # only if sanitizing made two names equal
        runs = [dataclasses.replace(r, name=f"{r.name}-{i}") for i, r in enumerate(runs)]
    return runs


def _run_label(structural: dict, keys: dict[str, str]) -> str:
    return label(structural, keys, empty="base")


def run_dir(workdir: str, run: Run) -> str:
    return os.path.join(workdir, RUNS_DIR, run.name)


def status(workdir: str, run: Run) -> str:
    d = run_dir(workdir, run)
    if os.path.exists(os.path.join(d, "summary.json")):
        return "done"
    ck = os.path.join(d, "checkpoints")
    if os.path.isdir(ck) and any(n.isdigit() for n in os.listdir(ck)):
        return "partial"
    return "new"


def select(runs: list[Run], index: int, count: int) -> list[Run]:
    """Runs index, index + count, ...: disjoint slices that together cover every run."""
    if count < 1 or not 0 <= index < count:
        raise SweepError(f"--index={index} --count={count}: need count >= 1 and 0 <= index < count")
    return runs[index::count]


def describe(runs: list[Run], workdir: str, chosen: list[Run]) -> str:
    members = sum(len(r.members) for r in runs)
    lines = [f"{len(runs)} run(s), {members} member(s) in all; this slice: {len(chosen)} run(s), "
             f"{sum(len(r.members) for r in chosen)} member(s)",
             f"{'status':8} {'members':>7}  run -> members"]
    for r in chosen:
        names = ", ".join(label(m) for m in r.members)
        lines.append(f"{status(workdir, r):8} {len(r.members):>7}  {r.name} -> {names}")
    return "\n".join(lines)


def _check_members(workdir: str, run: Run) -> None:
    path = os.path.join(run_dir(workdir, run), "population.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = [m["name"] for m in json.load(f).get("members", [])]
    new = [label(m) for m in run.members]
    if old != new:
        raise SweepError(f"{run_dir(workdir, run)} holds members {old}, but the sweep now gives "
                         f"that run {new}: use a new --workdir (or restore the old sweep)")


def _write_plan(workdir: str, runs: list[Run]) -> None:
    os.makedirs(workdir, exist_ok=True)
    doc = {"runs": [{"name": r.name, "dir": os.path.join(RUNS_DIR, r.name), "overrides": r.overrides,
                     "members": [{"name": label(m), "overrides": m} for m in r.members]}
                    for r in runs]}
    path = os.path.join(workdir, "sweep.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, default=str)
    os.replace(tmp, path)


def run_sweep(base: ml_collections.ConfigDict | Mapping | Config, spec: Spec, workdir: str, *,
              index: int = 0, count: int = 1, dry_run: bool = False, aggregate: bool = True,
              on_epoch_end: Callable[[str, int], None] | None = None,
              out: Callable[[str], None] = print) -> list[tuple[str, str]]:
    """Plans the sweep, then trains this slice's runs one after another in ``workdir/runs``.
    Returns ``[(run name, what happened)]``: 'done' (skipped), 'trained', 'resumed', 'failed: ...'
    (a non-finite loss; the other runs go on), or 'planned' for a dry run."""
    runs = plan(base, spec)
    chosen = select(runs, index, count)
    out(describe(runs, workdir, chosen))
    if dry_run:
        return [(r.name, "planned") for r in chosen]
    for r in chosen:  # a run folder from an edited sweep is refused before anything trains
        _check_members(workdir, r)
    _write_plan(workdir, runs)
    results = []
    for r in chosen:
        before = status(workdir, r)
        if before == "done":
            results.append((r.name, "done"))
            continue
        out(f"--- {r.name}: {len(r.members)} member(s), {'resuming' if before == 'partial' else 'starting'}")
        hook = None if on_epoch_end is None else (lambda e, name=r.name: on_epoch_end(name, e))
        try:
            train.train_and_evaluate(r.config, run_dir(workdir, r), on_epoch_end=hook)
        except train.NonFiniteLossError as e:
            out(f"error: run {r.name}: {e}")
            results.append((r.name, f"failed: {e}"))
            continue
        results.append((r.name, "resumed" if before == "partial" else "trained"))
    if aggregate:
        from vae_jax import aggregate as aggregate_lib

        written = aggregate_lib.aggregate(workdir)
        if written:
            out("wrote " + ", ".join(sorted(os.path.basename(p) for p in written)))
    return results


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    from absl import flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    from vae_jax import checkpoint, data, lock

    argv = list(sys.argv if argv is None else argv)
    argv = [a.replace("--dry-run", "--dry_run", 1) if a.startswith("--dry-run") else a for a in argv]
    fv = flags.FlagValues()
    cfg_flag = config_flags.DEFINE_config_file("config", None, "Sweep file (configs/sweeps/*.py): "
                                               "get_config() is the base, get_sweep() the grid.",
                                               flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "Sweep folder: runs/, sweep.json, tables and plots.",
                        flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "Print the plan (runs, members, status) and stop.", flag_values=fv)
    flags.DEFINE_integer("index", 0, "This process's slice: runs index, index+count, ...", flag_values=fv)
    flags.DEFINE_integer("count", 1, "Number of slices (processes in a job array).", flag_values=fv)
    try:
        rest = fv(argv)
    except flags.Error as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if len(rest) > 1:
        print(f"error: unexpected arguments {rest[1:]}", file=sys.stderr)
        return 2
    if fv["config"].value is None or not fv.workdir:
        print("error: both --config (a sweep file) and --workdir are required", file=sys.stderr)
        return 2
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        spec = load_spec(config_flags.get_config_filename(fv["config"]))
        results = run_sweep(cfg_flag.value, spec, fv.workdir, index=fv.index, count=fv.count,
                            dry_run=fv.dry_run)
    except (ConfigError, data.DataError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 4 if isinstance(e, checkpoint.CheckpointWriteError) else 2
    except (lock.LockError, OSError) as e:  # a run folder in use, a full or read-only disk
        print(f"error: {e}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print(f"error: interrupted; re-run the same command to resume {fv.workdir}", file=sys.stderr)
        return 130
    if fv.dry_run:
        return 0
    for n, s in results:
        print(f"{s.split(':')[0]:8} {n}")
    return 3 if any(s.startswith("failed") for _, s in results) else 0


if __name__ == "__main__":  # run the imported module, so sweep files share its Spec class
    from vae_jax import sweep as _sweep

    sys.exit(_sweep.main())

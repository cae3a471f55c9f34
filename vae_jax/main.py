"""Command line: ``python -m vae_jax.main --config configs/NAME.py --workdir DIR``.

``--mode train`` (default) trains and evaluates, resuming from the workdir's latest checkpoint;
``--mode eval`` restores the latest checkpoint and writes the test metrics and figures, under the
config the run was trained with (only ``config.eval.*`` and data paths may differ, unless
``--allow_config_change``). ``--mode prior``: the second stage of a spatial VQ-VAE, a PixelCNN
prior over its codes in ``<workdir>/prior`` (``vae_jax.code_prior``), resumable like training. Config fields are overridden with ``--config.section.field=value``.
With ``population.members`` set, ``--mode train`` trains all members in one compiled program and
``--mode eval`` evaluates each.

Every failure a user can cause ends with one ``error: ...`` line on stderr and the exit code of
:data:`EXIT_CODES` (the README has the table).
"""

from __future__ import annotations

import errno
import json
import logging
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vae_jax import checkpoint, code_prior, config, data, evaluate, lock, sharding, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, figures.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "prior"], "What to do with the workdir "
                          "(prior: train a VQ-VAE's PixelCNN prior over codes after --mode train).")
_ALLOW = flags.DEFINE_bool("allow_config_change", False, "--mode eval: evaluate under the given "
                           "config even where it differs from the run's own config.json.")

EXIT_CODES = {
    0: "finished",
    1: "an internal error (a bug: the traceback is printed)",
    2: "bad input: command line, config file or field, data, checkpoint",
    3: "training produced a non-finite loss (the last good checkpoint is kept)",
    4: "file system: a path that cannot be written, a full disk, a workdir in use",
    130: "interrupted (Ctrl-C); the last checkpoint is kept",
}
_USER_ERRORS = (config.ConfigError, data.DataError, checkpoint.CheckpointError)


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _os_error(e: OSError) -> str:
    what = e.strerror or _one_line(e)
    where = f" {e.filename}" if e.filename else ""
    hint = "; free some space" if e.errno == errno.ENOSPC else ""
    return f"cannot write{where}: {what}{hint}"


def run(argv) -> int:
    if len(argv) > 1:
        return _fail(2, f"unexpected arguments {argv[1:]}")
    if _CONFIG.value is None or not _WORKDIR.value:
        return _fail(2, "both --config and --workdir are required")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    logging.getLogger("vae_jax").setLevel(logging.INFO)  # ours: resumes, recoveries, the mesh
    try:
        raw = _CONFIG.value
        raw.keys()  # a config file that failed to load raises here
    except Exception as e:  # noqa: BLE001 - syntax errors, missing get_config, missing file
        return _fail(2, _config_file_error(e.__cause__ or e))
    try:
        cfg = config.from_config_dict(raw)  # fails before anything compiles
        sharding.initialize_distributed(cfg.mesh)  # multi-host launches only; before any device use
        if _MODE.value == "train":
            summary = train.train_and_evaluate(cfg, _WORKDIR.value)
        elif _MODE.value == "prior":
            summary = code_prior.train_prior(cfg, _WORKDIR.value)
        else:
            summary = evaluate.evaluate_workdir(cfg, _WORKDIR.value, allow_changes=_ALLOW.value)
    except checkpoint.CheckpointWriteError as e:
        return _fail(4, str(e))
    except _USER_ERRORS as e:
        return _fail(2, str(e))
    except train.NonFiniteLossError as e:
        return _fail(3, str(e))
    except lock.LockError as e:
        return _fail(4, str(e))
    except OSError as e:
        return _fail(4, _os_error(e))
    except KeyboardInterrupt:
        return _fail(130, f"interrupted; {_WORKDIR.value} keeps its last checkpoint: run the same "
                          f"command to resume")
    print(json.dumps(summary, indent=2))
    return 0


def _config_file_error(e: BaseException) -> str:
    args = _ARGV[1:] or sys.argv[1:]
    path = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), "")
    if not path and "--config" in args[:-1]:
        path = args[args.index("--config") + 1]
    lines = str(e).strip().splitlines() or [type(e).__name__]
    reason = next((ln.strip() for ln in reversed(lines) if "Errno" in ln), lines[0])
    return f"--config={path}: {reason}" if path else reason


def _flag_error(e: BaseException, argv: list[str]) -> str:
    """One line for a flag or config-file error, naming the argument at fault."""
    msg = _one_line(e)
    if "has no attribute 'get_config'" in msg:
        return _config_file_error(ValueError("defines no get_config()"))
    if isinstance(e, flags.Error) and msg.startswith("flag --config="):
        last = str(e).strip().splitlines()[-1]  # get_config() raised: its traceback's last line
        return _config_file_error(ValueError(f"get_config() failed: {last}"))
    unknown = re.fullmatch(r"Unknown command line flag '(config\..+)'", msg)
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    if unknown or isinstance(e, (AttributeError, KeyError)):
        name = unknown.group(1) if unknown else "config." + msg.strip("\"'")
        last = name.rsplit(".", 1)[-1]
        hit = next((o for o in overrides if last in o.split(".")[1:]), f"--{name}")
        return f"{hit}: unknown config field"
    if isinstance(e, flags.Error):
        return msg
    return _config_file_error(e)


_ARGV: list[str] = []


def _parse_flags(argv):
    """absl's flag parsing with one error line and exit code 2 (a config file that does not load,
    an override that names no field, a bad value, an unknown flag)."""
    _ARGV[:] = argv
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - flags.Error and the config loaders' errors
        sys.exit(_fail(2, _flag_error(e.__cause__ if isinstance(e.__cause__, (AttributeError, KeyError))
                                      else e, argv)))


def cli(argv: list[str]) -> int:
    """Parses ``argv`` (``argv[0]`` is the program name) and runs it in this process; returns
    the exit code (for tests and for launching from Python)."""
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # a previous call's overrides
        delattr(flags.FLAGS, name)
    # config_flags loads every --config file as the module 'config_config' with the legacy
    # load_module, which executes a new file into the module already in sys.modules: a file
    # without get_config() would silently reuse the previous call's
    sys.modules.pop("config_config", None)
    saved, sys.argv = sys.argv, list(argv)  # config_flags reads the overrides from sys.argv
    try:
        rest = _parse_flags(argv)
    except SystemExit as e:
        return int(e.code)
    finally:
        sys.argv = saved
    return run(rest)


def main() -> None:
    app.run(lambda argv: sys.exit(run(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
    main()

"""Command line: ``python -m vae_jax.main --config configs/NAME.py --workdir DIR``.

``--mode train`` (default) trains and evaluates, resuming from the workdir's latest checkpoint;
``--mode eval`` restores the latest checkpoint and writes the test metrics and figures.
Config fields are overridden with ``--config.section.field=value``.
With ``population.members`` set, ``--mode train`` trains all members in one compiled program and
``--mode eval`` evaluates each (see ``vae_jax.population``).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vae_jax import checkpoint, config, data, population, sharding, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, figures.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to do with the workdir.")

_USER_ERRORS = (config.ConfigError, data.DataError, checkpoint.CheckpointError)


def run(argv) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if _CONFIG.value is None or not _WORKDIR.value:
        print("error: both --config and --workdir are required", file=sys.stderr)
        return 2
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    try:
        cfg = config.from_config_dict(_CONFIG.value)  # fails before anything compiles
        sharding.initialize_distributed(cfg.mesh)  # multi-host launches only; before any device use
        pop = bool(cfg.population.members)  # members: one compiled program for all of them
        if _MODE.value == "train":
            fn = population.train_and_evaluate if pop else train.train_and_evaluate
        else:
            fn = population.evaluate_workdir if pop else train.evaluate_workdir
        summary = fn(cfg, _WORKDIR.value)
    except _USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except train.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(json.dumps(summary, indent=2))
    return 0


def main() -> None:
    app.run(lambda argv: sys.exit(run(argv)))


if __name__ == "__main__":
    main()

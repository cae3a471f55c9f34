"""The only module that knows Orbax: save a state pytree by step, restore the latest into an
abstract target. No pickle anywhere: arrays go through Orbax's StandardSave/StandardRestore."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message is one line."""


class Checkpointer:
    """``save(step, state)`` and ``restore_latest(abstract_state)`` over an Orbax manager in
    ``<workdir>/checkpoints``. Saves are asynchronous; Orbax writes each step to a temporary folder
    and renames it when complete, so a run killed mid-save leaves the previous step intact."""

    def __init__(self, workdir: str, max_to_keep: int = 3):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state))

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any] | None:
        """Restores the newest checkpoint into the structure, shapes, dtypes and shardings of
        ``abstract_state`` (a pytree of ``jax.ShapeDtypeStruct``); None if there is none."""
        step = self._manager.latest_step()
        if step is None:
            return None
        try:
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # Orbax raises ValueError/KeyError/FileNotFoundError with pages of text
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} does not match this config "
                f"(change the config back or use a new --workdir): {first[:300]}") from None
        return step, state

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) for a pytree of arrays, e.g. the output of eval_shape."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)



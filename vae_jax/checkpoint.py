"""The only module that knows Orbax: save a state pytree by step, restore the latest into an
abstract target. No pickle anywhere: arrays go through Orbax's StandardSave/StandardRestore.

A damaged step (unreadable files, non-finite values) is skipped with a warning and renamed
``<step>.damaged`` once an older intact step is found (Orbax would refuse to save a step that is
not newer than it). A failed write is one ``CheckpointError`` line and leaves no temporary folder;
Orbax's own warnings and tracebacks are silenced, since every failure is reported here."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
TMP = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message is one line."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint cannot be written (a full or read-only disk, permissions)."""


class _Damaged(Exception):
    """A step whose files or values are unusable; the message says why."""


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:240]}" if text else type(e).__name__


def _quiet_orbax(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def _orbax_leftover(u) -> bool:
    """An error that Orbax's read threads leave behind after a failed read: "Event loop is
    closed", or a read coroutine collected with its exception unretrieved."""
    where = f"{getattr(u.object, '__qualname__', '')} {getattr(getattr(u.object, 'cr_code', None), 'co_filename', '')}"
    return str(u.exc_value) == "Event loop is closed" or f"{os.sep}orbax{os.sep}" in where


def _quiet_asyncio(record: logging.LogRecord) -> bool:
    """False for asyncio's report of a future or task whose exception nobody retrieved when the
    exception came from Orbax's reads (the other arrays of a restore that already failed)."""
    if "exception was never retrieved" not in str(record.msg) or not record.exc_info:
        return True
    tb = record.exc_info[2]
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return False
        tb = tb.tb_next
    return True


def _silence_orbax() -> None:
    """Drops Orbax's log records from WARNING up and the errors its threads leave behind after a
    failed read (installed once per process): the restore reports what went wrong in one line."""
    if _quiet_orbax not in logging.getLogger("absl").filters:
        logging.getLogger("absl").addFilter(_quiet_orbax)
    if _quiet_asyncio not in logging.getLogger("asyncio").filters:
        logging.getLogger("asyncio").addFilter(_quiet_asyncio)
    if not getattr(sys.unraisablehook, "_vae_jax", False):
        previous = sys.unraisablehook
        sys.unraisablehook = hook = lambda u: _orbax_leftover(u) or previous(u)
        hook._vae_jax = True


class Checkpointer:
    """``save(step, state)`` and ``restore_latest(abstract_state)`` over an Orbax manager in
    ``<workdir>/checkpoints``. Saves are asynchronous; Orbax writes each step to a temporary folder
    and renames it when complete, so a run killed mid-save leaves the previous step intact. Empty
    step folders are removed on open; ``remove_partial()`` removes what a killed save left."""

    def __init__(self, workdir: str, max_to_keep: int = 3):
        _silence_orbax()
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._saving: int | None = None
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, item_handlers=ocp.StandardCheckpointHandler(),
                options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                     enable_async_checkpointing=True))
        except OSError as e:
            raise CheckpointWriteError(f"cannot open {self.directory}: {e.strerror}") from None
        for step in self._manager.all_steps():
            if not os.listdir(self._path(step)):
                log.warning("checkpoint %d in %s is an empty folder: removing it", step, self.directory)
                with contextlib.suppress(OSError):
                    os.rmdir(self._path(step))
        self._manager.reload()

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def remove_partial(self) -> list[str]:
        """Removes (and returns) the temporary folders of saves that never completed. Call it only
        while no other process writes this workdir (``lock.WorkdirLock``)."""
        tmp = [os.path.join(self.directory, n) for n in os.listdir(self.directory) if TMP in n]
        for path in tmp:
            shutil.rmtree(path, ignore_errors=True)
        return tmp

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        try:
            yield
        except Exception as e:  # tensorstore reports an OS error as ValueError("... [os_error_code=28]")
            code = re.search(r"os_error_code='?(\d+)", str(e))
            why = os.strerror(int(code.group(1))) if code else (
                e.strerror if isinstance(e, OSError) and e.strerror else _line(e))
            with contextlib.suppress(OSError):
                self.remove_partial()
            raise CheckpointWriteError(f"cannot write checkpoint {step} to {self.directory}: {why}") from None

    def save(self, step: int, state: Any) -> None:
        with self._writing(self._saving):  # an earlier asynchronous save may fail here
            self._manager.wait_until_finished()
        self._saving = step
        with self._writing(step):
            # fail before Orbax starts threads that would wait forever for an unwritable folder
            os.rmdir(tempfile.mkdtemp(prefix=f"{step}{TMP}-probe", dir=self.directory))
            self._manager.save(step, args=ocp.args.StandardSave(state))

    def _restore(self, step: int, abstract_state: Any) -> Any:
        """The state at ``step``; raises _Damaged(why) for unreadable or non-finite data and
        CheckpointError when the stored tree differs from ``abstract_state``."""
        mismatch = (f"checkpoint {step} in {self.directory} does not match this config (change the "
                    f"config back or use a new --workdir): ")
        try:
            meta = self._manager.item_metadata(step)
            have = ocp.tree.to_flat_dict(getattr(meta, "tree", meta), sep=".")
        except Exception as e:
            raise _Damaged(f"unreadable metadata, {_line(e)}") from None
        want = ocp.tree.to_flat_dict(abstract_state, sep=".")
        if set(have) != set(want):
            raise CheckpointError(mismatch + "fields " + ", ".join(sorted(set(have) ^ set(want))[:6])
                                  + " are in only one of them")
        wrong = [f"{k} has shape {tuple(have[k].shape)} there, {tuple(v.shape)} here"
                 for k, v in want.items() if tuple(getattr(have[k], "shape", v.shape)) != tuple(v.shape)]
        if wrong:
            raise CheckpointError(mismatch + "; ".join(wrong[:3]))
        try:
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:
            raise _Damaged(f"unreadable arrays, {_line(e)}") from None
        # training stops on a non-finite loss before saving, so a non-finite float is damage
        flat = {k: v for k, v in ocp.tree.to_flat_dict(state, sep=".").items()
                if jnp.issubdtype(v.dtype, jnp.inexact)}
        finite = jax.jit(lambda xs: [jnp.isfinite(x).all() for x in xs])(list(flat.values()))
        bad = [k for k, ok in zip(flat, finite) if not ok]
        if bad:
            raise _Damaged("non-finite values in " + ", ".join(bad[:4]))
        return state

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any] | None:
        """Restores the newest intact checkpoint into the structure, shapes, dtypes and shardings
        of ``abstract_state`` (a pytree of ``jax.ShapeDtypeStruct``); None if there is none.
        Damaged newer steps are logged, then renamed ``<step>.damaged``."""
        damaged: list[tuple[int, str]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state = self._restore(step, abstract_state)
            except _Damaged as e:
                log.warning("checkpoint %d in %s is damaged (%s); trying an older one", step,
                            self.directory, e)
                damaged.append((step, str(e)))
                continue
            if damaged:
                if jax.process_index() == 0:
                    for s, _ in damaged:
                        shutil.rmtree(self._path(s) + ".damaged", ignore_errors=True)
                        with contextlib.suppress(OSError):
                            os.replace(self._path(s), self._path(s) + ".damaged")
                if jax.process_count() > 1:
                    from jax.experimental import multihost_utils
                    multihost_utils.sync_global_devices("vae_jax checkpoint fallback")
                self._manager.reload()
                log.warning("restored checkpoint %d; renamed the damaged one(s) %s to <step>.damaged",
                            step, ", ".join(str(s) for s, _ in damaged))
            return step, state
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {self.directory}: "
                + ", ".join(f"step {s} ({why})" for s, why in damaged)
                + "; move the folder away to start fresh")
        return None

    def wait(self) -> None:
        with self._writing(self._saving):
            self._manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()


def abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) for a pytree of arrays, e.g. the output of eval_shape."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)

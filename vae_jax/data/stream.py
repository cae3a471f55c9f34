"""The streaming input path: a training set too large for the devices is fed from host memory.

A tf.data pipeline (``tf.data.Dataset.from_generator`` over the batch indices, a parallel,
deterministic gather, ``prefetch``) cuts each epoch into chunks of ``K`` global batches in the
order :func:`vae_jax.data.core.epoch_order` gives (computed with JAX on the host CPU, so it is the
permutation the on-device path draws). Each process gathers only its rows of every global batch
(the rows its devices hold under the mesh's 'data' axis); a thread puts the chunks on the devices
(``jax.make_array_from_process_local_data``) ``prefetch`` chunks ahead of the training step.
Chunks never cross an epoch boundary, and the stream starts at any global step, which is how a
resumed run continues at its checkpoint's position.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Iterator, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vae_jax.data.core import Dataset, epoch_order

log = logging.getLogger(__name__)

_DONE = object()


def memory_budget() -> tuple[int, str]:
    """(bytes, what they are) the training set may be measured against: the memory limit of this
    process's first device where JAX reports one (GPU, TPU), else the host's memory (CPU)."""
    dev = jax.local_devices()[0]  # another process's device has no memory statistics here
    stats = dev.memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{dev.device_kind} memory"
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host memory"


def choose_input(mode: str, ds: Dataset, fraction: float) -> str:
    """'device' or 'stream' for ``config.data.input`` = ``mode``: 'auto' keeps the training set on
    the devices when it takes at most ``fraction`` of the memory budget. Logs the choice."""
    budget, what = memory_budget()
    mb = ds.train_nbytes / 2**20
    if mode == "auto":
        mode = "device" if ds.train_nbytes <= fraction * budget else "stream"
        log.info("input path %r: the %s training set takes %.1f MiB, %.2f%% of %.0f MiB of %s "
                 "(on the device up to %g%%)", mode, ds.storage, mb, 100 * ds.train_nbytes / budget,
                 budget / 2**20, what, 100 * fraction)
    else:
        log.info("input path %r (config.data.input): the %s training set takes %.1f MiB",
                 mode, ds.storage, mb)
    return mode


def chunk_sharding(mesh) -> NamedSharding:
    """[K, batch, ...] chunks: the batch axis split over 'data', replicated over 'members'."""
    return NamedSharding(mesh, PartitionSpec(None, "data"))


class Chunk(NamedTuple):
    first_step: int  # the global step of the chunk's first batch
    num_steps: int
    batches: dict  # {"image": [K, batch, H, W, C], "label": [K, batch]} global arrays


def schedule(start_step: int, end_step: int, steps_per_epoch: int, chunk: int):
    """(epoch, first step in the epoch, number of steps) of each chunk from ``start_step`` to
    ``end_step``: at most ``chunk`` steps each, never crossing an epoch boundary."""
    step = start_step
    while step < end_step:
        epoch, pos = divmod(step, steps_per_epoch)
        k = min(chunk, steps_per_epoch - pos, end_step - step)
        yield epoch, pos, k
        step += k


class HostStream:
    """Chunks of the training set, from global step ``start_step`` to ``end_step``, on the
    devices of ``mesh``. Iterate it; :meth:`close` stops the threads."""

    def __init__(self, ds: Dataset, mesh, batch_size: int, data_key, start_step: int,
                 end_step: int, chunk: int, prefetch: int = 2):
        import tensorflow as tf

        self.images, self.labels = ds.train_images, ds.train_labels
        n = len(self.images)
        self.steps_per_epoch = n // batch_size
        self.sharding = chunk_sharding(mesh)
        # this process's rows of each global batch: the union of its devices' shards
        idx = self.sharding.addressable_devices_indices_map((1, batch_size))
        self.lo = min(s[1].start or 0 for s in idx.values())
        self.hi = max(batch_size if s[1].stop is None else s[1].stop for s in idx.values())
        self.batch_size = batch_size
        cpu = jax.devices("cpu")[0]
        key = jax.device_put(np.asarray(data_key), cpu)
        order = jax.jit(epoch_order, static_argnums=(2, 3))
        plan = list(schedule(start_step, end_step, self.steps_per_epoch, chunk))
        self._first = [e * self.steps_per_epoch + p for e, p, _ in plan]

        def indices():
            cached = (None, None)
            for epoch, pos, k in plan:
                if cached[0] != epoch:
                    with jax.default_device(cpu):
                        cached = (epoch, np.asarray(order(key, np.int32(epoch), n, batch_size)))
                yield cached[1][pos:pos + k, self.lo:self.hi]

        local = self.hi - self.lo
        sig = tf.TensorSpec((None, local), tf.int64)
        images, labels = self.images, self.labels

        def gather(i):
            out = [images[i]]
            if labels is not None:
                out.append(labels[i].astype(np.int32))
            return out

        tout = [tf.as_dtype(images.dtype)] + ([tf.int32] if labels is not None else [])
        pipeline = (tf.data.Dataset.from_generator(indices, output_signature=sig)
                    .map(lambda i: tf.numpy_function(gather, [i], tout),
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                    .prefetch(prefetch))
        self._source = pipeline.as_numpy_iterator()
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name="vae_jax-stream")
        self._thread.start()

    def _fill(self) -> None:
        try:
            for first, arrays in zip(self._first, self._source):
                k = arrays[0].shape[0]
                batches = {"image": self._put(arrays[0])}
                if len(arrays) > 1:
                    batches["label"] = self._put(arrays[1])
                if not self._offer(Chunk(first, k, batches)):
                    return
            self._offer(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._offer(e)

    def _put(self, local: np.ndarray) -> jax.Array:
        shape = (local.shape[0], self.batch_size, *local.shape[2:])
        return jax.make_array_from_process_local_data(self.sharding, local, shape)

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

"""The streamed input path: the same batches as the on-device path, the same parameters bit for
bit, a resume from a mid-epoch checkpoint, and the choice between the paths."""

from __future__ import annotations

import pathlib
import shutil

import chex
import jax
import numpy as np
import pytest

from conftest import tiny
from vae_jax import config as config_lib, data, experiment, sharding, train
from vae_jax.data import stream
from vae_jax.metrics import read_jsonl

pytest.importorskip("tensorflow")


def test_schedule_cuts_chunks_at_epoch_boundaries():
    assert list(stream.schedule(0, 10, 5, 2)) == [(0, 0, 2), (0, 2, 2), (0, 4, 1), (1, 0, 2),
                                                  (1, 2, 2), (1, 4, 1)]
    assert list(stream.schedule(7, 10, 5, 4)) == [(1, 2, 3)]  # a resume mid-epoch


def test_streamed_batches_are_the_epoch_order_of_the_device_path():
    ds = data.load("digits")
    mesh = sharding.make_mesh(config_lib.MeshConfig())
    key = experiment.Experiment.build(tiny(), ds.image_shape).data_key()
    src = stream.HostStream(ds, mesh, 100, key, start_step=12, end_step=33, chunk=4)
    try:
        chunks = list(src)
    finally:
        src.close()
    assert [(c.first_step, c.num_steps) for c in chunks] == [(12, 3), (15, 4), (19, 4), (23, 4),
                                                             (27, 3), (30, 3)]
    # reference: a permutation drawn independently from the key, as jax.random documents it
    for c in chunks:
        epoch, pos = divmod(c.first_step, 15)
        k = jax.random.fold_in(jax.random.wrap_key_data(key), epoch)
        perm = np.asarray(jax.random.permutation(k, 1500))[:1500].reshape(15, 100)
        idx = perm[pos:pos + c.num_steps]
        np.testing.assert_array_equal(np.asarray(c.batches["image"]), ds.train_images[idx])
        np.testing.assert_array_equal(np.asarray(c.batches["label"]), ds.train_labels[idx])


def _params(cfg, workdir):
    return experiment.restore(cfg, str(workdir)).state


def _train_rows(workdir):
    return [(r["step"], r["split"]) for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")]


def test_stream_equals_device_bit_for_bit_and_resumes_mid_epoch(tmp_path):
    kw = dict(train=dict(num_epochs=2, keep_checkpoints=20))
    dev = tiny(data=dict(input="device", binarization="dynamic"), **kw)
    streamed = tiny(data=dict(input="stream", binarization="dynamic", stream_chunk=4,
                              stream_checkpoint_steps=5), **kw)
    train.train_and_evaluate(dev, str(tmp_path / "dev"))
    train.train_and_evaluate(streamed, str(tmp_path / "stream"))
    reference = _params(dev, tmp_path / "dev")
    chex.assert_trees_all_equal(_params(streamed, tmp_path / "stream"), reference)
    # the streamed run saved mid-epoch (chunks of 4 crossing multiples of 5, 15 steps an epoch)
    ckpts = sorted(int(p.name) for p in (tmp_path / "stream" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [8, 12, 15, 23, 27, 30], ckpts
    # a run killed after its step-23 save: later checkpoints, rows and files are lost
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "stream", cut)
    for step in (27, 30):
        shutil.rmtree(cut / "checkpoints" / str(step))
    (cut / "summary.json").unlink()
    train.train_and_evaluate(streamed, str(cut))  # resumes at step 23 = epoch 1, step 8
    chex.assert_trees_all_equal(_params(streamed, cut), reference)
    rows = _train_rows(cut)
    assert len(rows) == len(set(rows)) and sorted(rows) == sorted(_train_rows(tmp_path / "stream"))


def test_input_path_choice(monkeypatch):
    ds = data.load("digits")  # 390,000 bytes
    monkeypatch.setattr(stream, "memory_budget", lambda: (1_000_000, "test memory"))
    assert stream.choose_input("auto", ds, 0.5) == "device"
    assert stream.choose_input("auto", ds, 0.25) == "stream"
    assert stream.choose_input("device", ds, 0.01) == "device"
    pop = tiny(data=dict(input="stream"), population=dict(members=({"objective.beta": 0.5},)))
    with pytest.raises(config_lib.ConfigError, match="population trains from on-device"):
        train.input_path(pop, ds, stacked=True)

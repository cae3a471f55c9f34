"""Figures from hand-made arrays: each function writes a readable PNG of the expected layout."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from vae_jax import plots


def _png(path) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_tile_places_images_row_major():
    imgs = np.stack([np.full((2, 2, 1), v, np.float32) for v in (0.0, 0.25, 0.5, 0.75, 1.0, 0.1)])
    m = plots.tile(imgs, 2, 3, pad=1)
    assert m.shape == (5, 8, 1)
    assert m[0, 0, 0] == 0.0 and m[0, 3, 0] == 0.25 and m[3, 0, 0] == 0.75 and m[2, 0, 0] == 1.0
    with pytest.raises(ValueError, match="needs 6 images"):
        plots.tile(imgs[:5], 2, 3)


def test_image_row_bars_and_line_panels_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    a = _png(plots.image_row(rng.random((4, 8, 8, 1)), ["a", "b", "c", "d"], str(tmp_path / "row.png"), "t"))
    assert a.shape[1] > a.shape[0]  # a row: wider than tall
    b = _png(plots.bars(np.array([0.01, 2.0, 0.5]), str(tmp_path / "bars.png"), "kl", "dim", "nats",
                        threshold=0.1))
    assert b.ndim == 3
    panels = {"ELBO": {"train": ([1, 2, 3], [-90.0, -80.0, -75.0]), "test": ([3], [-76.0])},
              "KL": {"train": ([], [])}}
    c = _png(plots.line_panels(panels, str(tmp_path / "sub" / "curves.png"), "curves", log_y=False))
    assert c.shape[1] > c.shape[0]
    d = _png(plots.line_panels({"ratio": {"score": ([1, 4, 16], [1e3, 1.2e3, 1.1e3])}},
                               str(tmp_path / "ratio.png"), log_x=True, log_y=True))
    assert d.size > 0


def test_strips_with_row_labels_and_scatter(tmp_path):
    rng = np.random.default_rng(1)
    rows = [rng.random((10, 8, 8, 1)) for _ in range(3)]
    s = _png(plots.strips(rows, str(tmp_path / "strips.png"), "s", ["z0", "z1", "z2"]))
    assert s.shape[1] > s.shape[0]
    sc = _png(plots.latent_scatter(rng.normal(size=(50, 2)), rng.integers(0, 10, 50),
                                   str(tmp_path / "scatter.png"), "z"))
    assert sc.ndim == 3


def test_compare_curves_reads_every_run_and_layer(tmp_path):
    import importlib.util
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("compare_curves", root / "scripts" / "compare_curves.py")
    cc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cc)
    for name, layers in (("flat", {"kl": 5.0}), ("deep", {"kl_layer1": 4.0, "kl_layer2": 1.0, "kl": 5.0})):
        (tmp_path / name).mkdir()
        rows = [dict(step=10 * e, split="train", epoch=e, elbo=-100.0 + e, **layers) for e in (1, 2)]
        rows.append(dict(step=20, split="test", elbo=-99.5))
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    panels = cc.curves([str(tmp_path / "flat"), str(tmp_path / "deep")])
    assert panels["test ELBO (nats)"]["deep"] == ([2.0], [-99.5])
    assert panels["train ELBO (nats)"]["flat"] == ([1, 2], [-99.0, -98.0])
    assert set(panels["train KL per layer (nats)"]) == {"flat", "deep layer1", "deep layer2"}
    out = tmp_path / "c.png"
    assert cc.main([str(tmp_path / "flat"), "--out", str(out)]) == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert cc.main([str(tmp_path / "missing")]) == 2

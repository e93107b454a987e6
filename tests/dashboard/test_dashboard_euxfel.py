"""Dashboard for EuXFEL input: data layer (Streamlit-free) and the Frames page panel (AppTest)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("extra_data")

from dashboard.data import OutputCorrupt, OutputMissing  # noqa: E402
from dashboard.data import euxfel as eux  # noqa: E402
from tests.conftest import REPO, decode_plotly_array  # noqa: E402

pytestmark = pytest.mark.slow  # whole-stage or whole-pipeline runs: `make test-fast` skips them


def test_hit_rate_by_train_and_pooling():
    table = pd.DataFrame({"train_id": np.repeat([5, 6, 7, 8], 4),
                          "is_hit": [1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]}).astype({"is_hit": bool})
    g = eux.hit_rate_by_train(table)
    assert list(g.train_id) == [5, 6, 7, 8]
    np.testing.assert_allclose(g.hit_rate, [0.25, 0.5, 0.0, 1.0])
    pooled = eux.hit_rate_by_train(table, max_points=2)
    assert list(pooled.train_id) == [5, 7] and list(pooled.frames) == [8, 8]
    np.testing.assert_allclose(pooled.hit_rate, [3 / 8, 4 / 8])
    assert eux.hit_rate_by_train(table.iloc[:0]).empty


def test_lit_histogram_errors(tmp_path):
    with pytest.raises(OutputMissing):
        eux.lit_histogram(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(OutputCorrupt, match="missing columns"):
        eux.lit_histogram(tmp_path / "bad.csv")


def test_block_reduce_and_assemble_conserve_photons():
    img = np.arange(36, dtype=float).reshape(6, 6)
    img[:2, :2] = np.nan
    out = eux.block_reduce(img, 2)
    assert out.shape == (3, 3) and np.isnan(out[0, 0]) and out[2, 2] == img[4:, 4:].sum()
    geom, note = eux.load_geometry("")
    assert "default" in note
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.01, size=(2, 16 * 512 * 128))
    mask = np.ones(16 * 512 * 128, bool)
    images = eux.assemble(counts, mask, geom, factor=4)
    assert images.ndim == 3 and len(images) == 2
    np.testing.assert_allclose(np.nansum(images, axis=(1, 2)), counts.sum(axis=1))  # every pixel placed once


def test_assembled_hits_are_drawn_at_their_q():
    """A lit pixel of known q (the frames file's per-pixel q) lands, on the assembled image's
    axes, at that q: same sign on both axes (no flip), within a block and the flat detector's
    non-separability (q of the row through the beam)."""
    from spicompute.io.euxfel import agipd_q

    geom, _ = eux.load_geometry("")
    q = agipd_q(geom, 705.0, 6.0)
    factor = 4
    qx_axis, qy_axis = eux.assembled_q_axes(q, geom, factor)
    for axis in (qx_axis, qy_axis):
        steps = np.diff(axis)
        assert np.all(steps > 0) or np.all(steps < 0)
    step = np.abs(np.diff(qx_axis)).mean()
    rng = np.random.default_rng(1)
    mask = np.ones(len(q), bool)
    for pixel in rng.choice(len(q), size=6, replace=False):
        counts = np.zeros((1, len(q)))
        counts[0, pixel] = 1
        image = eux.assemble(counts, mask, geom, factor)[0]
        i, j = np.unravel_index(np.nanargmax(image), image.shape)
        qx, qy = q[pixel, :2]
        tol = 1.5 * step + 0.02 * np.hypot(qx, qy)
        assert abs(qx_axis[j] - qx) <= tol and abs(qy_axis[i] - qy) <= tol, (pixel, qx, qy)
    with pytest.raises(ValueError, match="per-pixel q"):
        eux.assembled_q_axes(q[:10], geom, factor)


@pytest.fixture(scope="module")
def euxfel_workspace(tmp_path_factory):
    """A workspace whose frames stage ran on a tiny mock run (2 trains x 32 pulses, 6 hits)."""
    from spicompute.cli import main
    from spicompute.io.euxfel import agipd_q, load_agipd_geometry
    from tests.ingest.euxfel_mock import inject, make_proc_run

    root = tmp_path_factory.mktemp("eux_ws")
    run = root / "run"
    run.mkdir()
    make_proc_run(run, n_seq=1, trains_per_seq=2, pulses=32)
    q = agipd_q(load_agipd_geometry(None), 705.0, 6.0)
    inject(run, np.arange(64), q, hits=[1, 9, 20, 33, 40, 63], bg=2e-4, seed=4)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(input=str(run), distance_mm=705.0, photon_energy_kev=6.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["frames", "--params", str(root / "params.yaml"), "-q", "--out", str(root / "data/frames.h5"),
                 "--truth", str(root / "data/truth.h5"), "--hits", str(root / "results/hits.parquet"),
                 "--metrics", str(root / "metrics/frames.json"),
                 "--lit-histogram", str(root / "metrics/frames_lit_histogram.csv")]) == 0
    return root


def test_frames_page_euxfel_panel(euxfel_workspace, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SPI_WORKSPACE", str(euxfel_workspace))
    assert eux.is_agipd_frames(euxfel_workspace / "data" / "frames.h5")
    at = AppTest.from_file(str(REPO / "dashboard" / "pages" / "1_Frames.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert any(m.label == "hits" and m.value == "6" for m in at.metric)
    charts = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    specs = list(charts.values())
    rate = next(s for s in specs if s["layout"]["yaxis"]["title"]["text"] == "hit rate (%)")
    np.testing.assert_allclose(decode_plotly_array(rate["data"][0]["y"]), [100 * 3 / 32, 100 * 3 / 32])
    hist = next(s for s in specs if s["layout"]["xaxis"]["title"]["text"] == "lit pixels per frame")
    threshold = json.loads((euxfel_workspace / "metrics" / "frames.json").read_text())["hit_threshold"]
    assert hist["layout"]["shapes"][0]["x0"] == pytest.approx(threshold)
    assert decode_plotly_array(hist["data"][0]["y"]).sum() == 64
    assembled = next(s for s in specs if s["data"][0]["type"] == "heatmap")
    assert len(assembled["data"]) == 3  # default: three hits on the assembled detector
    z = decode_plotly_array(assembled["data"][0]["z"]).astype(float)
    assert z.ndim == 2 and np.isnan(z).any() and np.nanmax(z) > 0
    # the one image convention: q axes in nm⁻¹ through the beam, drawn by image_grid
    qx = decode_plotly_array(assembled["data"][0]["x"])
    assert len(qx) == z.shape[1] and qx.min() < 0 < qx.max()
    assert assembled["layout"]["xaxis"]["title"]["text"] == "qx (nm⁻¹)"

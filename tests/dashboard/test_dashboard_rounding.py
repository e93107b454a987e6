"""Numbers as people read them: occupancies and metrics to 4 significant digits, cluster -1
labelled 'unclustered', the landscape legend clear of the colour bar (AppTest)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from dashboard.figures import cluster_label, fmt_value
from conftest import REPO  # tests/ is on sys.path (rootdir conftest)

PAGES = REPO / "dashboard" / "pages"


def test_fmt_value_and_cluster_label():
    assert fmt_value(101.99980026483536) == "102"
    assert fmt_value(0.123456789012345) == "0.1235"
    assert fmt_value(np.int64(7)) == "7" and fmt_value(float("nan")) == "—"
    assert fmt_value(True) == "True" and fmt_value("a|b") == "a|b"
    assert cluster_label(-1) == "unclustered" and cluster_label(np.int64(3)) == "3"


def test_landscape_rounds_the_drill_down_and_names_unclustered(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    m = 12
    ids = np.arange(m)
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    pd.DataFrame({"average_id": ids, "pc_1": rng.normal(size=m), "pc_2": rng.normal(size=m),
                  "cluster": np.where(ids < 4, -1, ids % 2)}).to_parquet(parts / "embed.parquet")
    pd.DataFrame({"average_id": ids, "run": 0, "model": ids,
                  "n_frames": np.full(m, 101.99980026483536)}).to_parquet(parts / "classify2d.parquet")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "embed.json").write_text(json.dumps({"silhouette": 0.123456789012345}))
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "3_Landscape.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "| n\\_frames | 102 |" in text and "101.9998" not in text
    assert "| cluster | unclustered |" in text                     # average 0 is in cluster -1
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in spec["data"] if t["type"] == "scattergl"]
    assert names[-1] == "unclustered" and "-1" not in names
    legend = spec["layout"]["legend"]
    assert legend["orientation"] == "h" and legend["y"] < 0           # under the plot
    at.selectbox(key="color").select("n_frames").run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["legend"]["y"] < 0                          # the colour bar keeps the right
    home = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=60).run()
    metrics = home.dataframe[1].value
    assert metrics.set_index("metric").loc["silhouette", "value"] == "0.1235"

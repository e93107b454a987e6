"""Plot builders of the dashboard (no Streamlit)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import plotly.io as pio

from dashboard.figures import landscape_scatter, markdown_table
from dashboard.data.selections import ids_from_event


def _table(m=50, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"average_id": np.arange(m) + 1000, "run": np.arange(m) % 3,
                         "n_frames": rng.gamma(3, 10, m), "pc_1": rng.normal(size=m),
                         "pc_2": rng.normal(size=m),
                         "cluster": rng.integers(0, 4, m).astype(str)})


def test_categorical_scatter_one_trace_per_level_in_order_and_ids_in_customdata():
    t = _table()
    order = ["3", "2", "1", "0"]
    fig = landscape_scatter(t, "pc_1", "pc_2", "cluster", ["average_id", "run", "n_frames"],
                            order=order)
    assert [tr.name for tr in fig.data] == order
    assert all(tr.type == "scattergl" for tr in fig.data)
    for tr in fig.data:
        rows = t[t["cluster"] == tr.name]
        assert np.allclose(tr.x, rows["pc_1"], atol=1e-6)
        # a selection event carries customdata -> average ids decode back exactly
        points = [{"customdata": list(map(float, c))} for c in tr.customdata]
        assert ids_from_event(points) == sorted(rows["average_id"].tolist())
        assert "n_frames=%{customdata[2]}" in tr.hovertemplate
    assert fig.layout.xaxis.title.text == "pc_1" and fig.layout.yaxis.title.text == "pc_2"


def test_continuous_colour_is_one_trace_with_colour_bar_and_compact_json():
    t = _table(m=10_000)
    fig = landscape_scatter(t, "pc_1", "pc_2", "n_frames", ["average_id", "run", "n_frames"])
    assert len(fig.data) == 1
    assert np.allclose(fig.data[0].marker.color, t["n_frames"], rtol=1e-6)
    assert fig.data[0].marker.showscale
    spec = pio.to_json(fig, validate=False)
    # coordinates travel as typed buffers; customdata rows stay JSON lists (selection events)
    assert len(spec) < 45 * len(t)
    trace = json.loads(spec)["data"][0]
    assert trace["x"]["dtype"] == "f4" and isinstance(trace["customdata"][0], list)


def test_markdown_table_renders_user_text_as_text():
    rows = pd.DataFrame({"column": ["note", "rho"],
                         "value": ["<script>alert(1)</script> | [x](http://e) *b*", 0.123456]})
    md = markdown_table(rows)
    lines = md.splitlines()
    assert len(lines) == 4 and lines[1].startswith("| ---")
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "\\|" in md and "\\[x\\]" in md and "\\*b\\*" in md
    assert "0.123" in md and "0.123456" not in md


def test_figures_module_imports_no_streamlit():
    code = "import sys, dashboard.figures; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"

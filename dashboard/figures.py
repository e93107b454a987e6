"""Plot builders shared by the pages: plain Plotly, no Streamlit.

The landscape scatter is built with graph_objects rather than plotly.express:
for 10,000 averages express takes ~0.2 s on the server and writes every column
as JSON (0.64 MB); here the coordinates go out as typed float32 buffers and
only the hover columns as short JSON lists (~0.4 MB), built in ~0.05 s.  That, and keeping
Arrow-based tables off the page above the plot, is what brings the Landscape
page's first render under 3 s (benchmarks/bench_dashboard.py).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go

QUALITATIVE = pc.qualitative.Plotly


def landscape_scatter(plot: pd.DataFrame, x: str, y: str, color: str | None,
                      hover: list[str], order: list | None = None,
                      marker_size: int = 6) -> go.Figure:
    """2D WebGL scatter of the averages.

    plot: one row per average with columns ``x``, ``y``, ``average_id`` and the
    ``hover`` columns (numeric).  ``color``: a categorical column (one trace per
    level, in ``order``, like plotly.express) or a float column (one trace with
    a colour bar); None for one colour.  Every point's ``customdata[0]`` is its
    ``average_id`` (what selection events are decoded from).
    """
    extra = [c for c in hover if c != "average_id"]
    # customdata as nested lists, not a typed buffer: plotly.js hands a typed 2D array's rows
    # to selection events as Float32Arrays, which reach Streamlit as {"0": ..} objects
    columns = [pd.to_numeric(plot[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
               for c in ["average_id"] + extra]               # categorical labels like "3" -> 3
    custom = np.round(np.stack(columns, axis=1), 3)
    template = "<br>".join([f"{x}=%{{x}}", f"{y}=%{{y}}"] +
                           [f"{c}=%{{customdata[{k}]}}" for k, c in enumerate(["average_id"] + extra)])
    xs = plot[x].to_numpy(dtype=np.float32, na_value=np.nan)
    ys = plot[y].to_numpy(dtype=np.float32, na_value=np.nan)
    fig = go.Figure()
    categorical = color is not None and not pd.api.types.is_float_dtype(plot[color])
    if categorical:
        labels = plot[color].astype(str).to_numpy()
        levels = list(order) if order else list(dict.fromkeys(labels))
        for k, level in enumerate(levels):
            rows = labels == str(level)
            if not rows.any():
                continue
            fig.add_trace(go.Scattergl(
                x=xs[rows], y=ys[rows], customdata=custom[rows].tolist(), mode="markers",
                name=str(level), legendgroup=str(level),
                marker=dict(size=marker_size, opacity=0.8,
                            color=QUALITATIVE[k % len(QUALITATIVE)]),
                hovertemplate=f"{color}={level}<br>{template}<extra></extra>"))
    else:
        marker = dict(size=marker_size, opacity=0.8)
        if color is not None:
            marker.update(color=plot[color].to_numpy(dtype=np.float32, na_value=np.nan),
                          colorscale="Viridis", showscale=True, colorbar=dict(title=color))
        fig.add_trace(go.Scattergl(x=xs, y=ys, customdata=custom.tolist(), mode="markers",
                                   name="averages", marker=marker, showlegend=False,
                                   hovertemplate=f"{template}<extra></extra>"))
    fig.update_layout(xaxis_title=x, yaxis_title=y)
    return fig


def markdown_table(rows: pd.DataFrame, digits: int = 3) -> str:
    """A small table as Markdown (rendered by Streamlit's Markdown element, which the
    page loads anyway; st.dataframe would pull a ~1 MB Arrow/grid bundle before the plot).

    Cells are shown as text: HTML is escaped and ``|``, ``*``, ``_``, backticks and
    brackets are backslash-escaped, so user text cannot inject markup or links.
    """
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            text = "—" if not np.isfinite(v) else f"{v:.{digits}g}"
        else:
            text = str(v)
        text = html.escape(text, quote=False).replace("\n", " ")
        for ch in "\\|*_`[]#~":
            text = text.replace(ch, "\\" + ch)
        return text

    head = "| " + " | ".join(cell(c) for c in rows.columns) + " |"
    rule = "| " + " | ".join("---" for _ in rows.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows.itertuples(index=False)]
    return "\n".join([head, rule, *body])

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
UNCLUSTERED = "unclustered"  # the label of cluster -1 (HDBSCAN/DBSCAN noise)


def fmt_value(v, digits: int = 4) -> str:
    """A value as people read it: floats to ``digits`` significant digits (101.9998 -> 102),
    integers and text as they are, NaN/None as —."""
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}"
    return str(v)


def significant(v, digits: int = 4):
    """A float rounded to ``digits`` significant digits (other values unchanged)."""
    if isinstance(v, (float, np.floating)) and np.isfinite(v):
        return float(f"{float(v):.{digits}g}")
    return v


def cluster_label(value) -> str:
    """A cluster id as a legend label: -1 is 'unclustered'."""
    try:
        return UNCLUSTERED if int(value) == -1 else str(int(value))
    except (TypeError, ValueError):
        return str(value)


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


# One image convention for every diffraction image, class average, model slice, central
# section and projection: an array's rows run along the plot's y axis upwards and its
# columns along x, exactly as the detector's (qx, qy) grid is stored (row = qy, column =
# qx, both increasing with the index), with the beam (q = 0) at the axes' origin.
# Unobserved pixels are NaN: plotly leaves them undrawn, so the grey plot background
# shows through instead of the colour scale's darkest value.
MASKED_GREY = "#888888"


def centred_axis(n: int, step: float | None, centre: float | None = None) -> np.ndarray:
    """Coordinates of ``n`` samples ``step`` apart with 0 at index ``centre`` (default
    ``n // 2``, the project's grid origin); plain indices when ``step`` is None."""
    if step is None:
        return np.arange(n, dtype=np.float64)
    c = n // 2 if centre is None else float(centre)
    return (np.arange(n, dtype=np.float64) - c) * float(step)


def image_grid(images, titles: list[str], step: float | None = None, *, space: str = "q",
               centre: float | None = None, x: np.ndarray | None = None,
               y: np.ndarray | None = None, cols: int | None = None,
               colorscale: str = "Viridis", zmin: float | None = None,
               zmax: float | None = None, colorbar: str | None = "log10 I",
               axis_names: tuple[str, str] = ("qx", "qy"), panel_height: int = 240,
               show_ticks: bool = True, shared_scale: bool = True) -> go.Figure:
    """A grid of 2D images in the project's one image convention (see above).

    images: (N, H, W) array or list of (H, W) arrays, NaN where unobserved.
    step: sample spacing, rad/nm for ``space="q"`` (axes in nm⁻¹) or nm for
    ``space="real"`` (axes in nm); None draws pixel indices.  ``x``/``y``: explicit
    coordinates of the columns/rows (e.g. a flat detector's q), overriding ``step``.
    One shared colour scale (``zmin``/``zmax``, default the finite range of all
    images) with one colour bar titled ``colorbar`` (None: no bar); with
    ``shared_scale=False`` each image spans its own range (images in different
    units, e.g. an average beside a model slice) and no bar is drawn.
    """
    from plotly.subplots import make_subplots

    images = [np.asarray(im, dtype=np.float64) for im in images]
    if not images:
        raise ValueError("image_grid needs at least one image")
    n = len(images)
    cols = min(n, cols or n)
    rows = int(np.ceil(n / cols))
    finite = np.concatenate([im[np.isfinite(im)] for im in images])
    lo = float(finite.min()) if zmin is None and finite.size else zmin
    hi = float(finite.max()) if zmax is None and finite.size else zmax
    unit = {"q": "nm⁻¹", "real": "nm"}[space] if step is not None or x is not None else "pixel"
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles),
                        horizontal_spacing=0.04 if show_ticks else 0.01,
                        vertical_spacing=0.12 if show_ticks else 0.06)
    for k, im in enumerate(images):
        xs = x if x is not None else centred_axis(im.shape[1], step, centre)
        ys = y if y is not None else centred_axis(im.shape[0], step, centre)
        own = im[np.isfinite(im)]
        z0, z1 = (lo, hi) if shared_scale or not own.size else (float(own.min()), float(own.max()))
        fig.add_trace(go.Heatmap(
            z=im, x=xs, y=ys, zmin=z0, zmax=z1, colorscale=colorscale,
            showscale=colorbar is not None and shared_scale and k == 0,
            colorbar=dict(title=dict(text=colorbar, side="right"), thickness=12) if colorbar else None,
            hovertemplate=f"{axis_names[0]}=%{{x:.3g}}<br>{axis_names[1]}=%{{y:.3g}}"
                          "<br>value=%{z:.3g}<extra></extra>"),
            row=k // cols + 1, col=k % cols + 1)
    for k in range(n):
        anchor = "x" if k == 0 else f"x{k + 1}"
        fig.update_yaxes(scaleanchor=anchor, scaleratio=1, autorange=True,
                         row=k // cols + 1, col=k % cols + 1)
    # no grid or zero lines: they would show through unobserved (NaN) pixels as white lines
    fig.update_xaxes(showticklabels=show_ticks, autorange=True, constrain="domain",
                     showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=show_ticks, constrain="domain", showgrid=False, zeroline=False)
    if show_ticks:
        fig.update_xaxes(title=dict(text=f"{axis_names[0]} ({unit})", font=dict(size=10)),
                         row=rows)
        fig.update_yaxes(title=dict(text=f"{axis_names[1]} ({unit})", font=dict(size=10)), col=1)
    fig.update_layout(height=panel_height * rows + 60, plot_bgcolor=MASKED_GREY,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def energy_contours(density, name: str = "−log density") -> go.Contour:
    """Contour lines of a 2D :class:`dashboard.data.density.Density`'s energy (−log ρ/ρmax),
    every 0.5 from 0.5, dark to light outwards; no colour bar (it would sit on the scatter's
    legend) and no line labels (placing them costs ~1 s in the browser at 10,000 averages):
    the caption states the levels."""
    return go.Contour(x=density.axes[0], y=density.axes[1], z=density.energy, name=name,
                      contours=dict(coloring="lines", showlabels=False, start=0.5, end=8.0, size=0.5),
                      line=dict(width=1), colorscale=[[0, "#333333"], [1, "#bbbbbb"]],
                      showscale=False, hoverinfo="skip", showlegend=True)

"""The structural landscape: CLPCA space (and Isomap / spectral / t-SNE) of all averages.

Reads results/averages.parquet (the joined table) or, before the ``tables``
stage has run, results/parts/embed.parquet joined with
results/parts/classify2d.parquet; metrics/embed.json for the explained
variance; data/averages.h5 for the pattern of the selected average.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard.common import averages_table, log_image, missing, path, read_h5, read_json, run_picker

st.set_page_config(page_title="Landscape · SPI Landscape", layout="wide")
st.title("Structural landscape")
run_picker()

METHODS = {"pc": "CLPCA (PCA of the CC matrix)", "isomap": "Isomap", "spectral": "Spectral",
           "tsne": "t-SNE"}
AVERAGES = "data/averages.h5"


def components(table: pd.DataFrame, method: str) -> list[str]:
    cols, k = [], 1
    while f"{method}_{k}" in table.columns:
        cols.append(f"{method}_{k}")
        k += 1
    return cols


table = averages_table("pc_1", "embed", ("classify2d",))
if table is None:
    missing("embed", "results/parts/embed.parquet")
    st.stop()

available = [m for m in METHODS if components(table, m)]
metrics = read_json("metrics/embed.json")

c1, c2, c3, c4 = st.columns(4)
c1.metric("averages", f"{len(table):,}")
evr = metrics.get("explained_variance_ratio")
c2.metric("CLPCA explained variance", f"{sum(evr):.1%}" if evr else "—",
          help=", ".join(f"pc_{i + 1}: {v:.1%}" for i, v in enumerate(evr or [])))
c3.metric("clusters", f"{table['cluster'].nunique()}" if "cluster" in table else "—")
sil = metrics.get("silhouette")
c4.metric("silhouette", f"{sil:.2f}" if isinstance(sil, (int, float)) and sil == sil else "—")

s1, s2, s3 = st.columns([2, 1, 2])
method = s1.selectbox("embedding", available, format_func=lambda m: METHODS[m], key="method")
comps = components(table, method)
dims = s2.radio("view", ["3D", "2D"] if len(comps) >= 3 else ["2D"], key="dims",
                horizontal=True)
numeric = [c for c in table.columns
           if pd.api.types.is_numeric_dtype(table[c]) and c not in ("average_id",)
           and not any(c.startswith(f"{m}_") for m in METHODS)]
color_options = (["cluster"] if "cluster" in table else []) + \
    (["n_frames"] if "n_frames" in table else []) + \
    [c for c in numeric if c not in ("cluster", "n_frames")]
color = s3.selectbox("colour by", color_options or ["none"], key="color")

if dims == "2D" and len(comps) > 2:
    a1, a2 = st.columns(2)
    x_col = a1.selectbox("x", comps, index=0, key="x")
    y_col = a2.selectbox("y", comps, index=1, key="y")
else:
    x_col, y_col = comps[0], comps[1] if len(comps) > 1 else comps[0]

plot = table.copy()
hover = [c for c in ("average_id", "run", "model", "n_frames", "cluster") if c in plot]
color_arg = None
if color in plot:
    if color == "cluster" or not pd.api.types.is_float_dtype(plot[color]):
        plot[color] = plot[color].astype("Int64").astype(str)
    color_arg = color
ids = plot["average_id"].to_numpy()
# the "average" selectbox's state is the single source of truth for the selection;
# a click in the 2D scatter writes it before the selectbox is drawn
if st.session_state.get("average") not in set(int(i) for i in ids):
    st.session_state["average"] = int(ids[0])

if dims == "3D":
    fig = px.scatter_3d(plot, x=comps[0], y=comps[1], z=comps[2], color=color_arg,
                        hover_data=hover, custom_data=["average_id"], opacity=0.8)
    fig.update_traces(marker=dict(size=3))
else:
    fig = px.scatter(plot, x=x_col, y=y_col, color=color_arg, hover_data=hover,
                     custom_data=["average_id"], opacity=0.8)
    fig.update_traces(marker=dict(size=6))
sel = plot[plot["average_id"] == st.session_state["average"]]
if len(sel):
    mark = dict(size=14 if dims == "2D" else 8, color="rgba(0,0,0,0)",
                line=dict(color="red", width=3))
    if dims == "3D":
        fig.add_trace(go.Scatter3d(x=sel[comps[0]], y=sel[comps[1]], z=sel[comps[2]],
                                   mode="markers", marker=mark, name="selected",
                                   hoverinfo="skip"))
    else:
        fig.add_trace(go.Scatter(x=sel[x_col], y=sel[y_col], mode="markers", marker=mark,
                                 name="selected", hoverinfo="skip"))
fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=10),
                  legend=dict(title=color if color_arg else None))

left, right = st.columns([3, 2])
with left:
    if dims == "2D":
        event = st.plotly_chart(fig, width="stretch", key="landscape", on_select="rerun",
                                selection_mode="points")
        points = (event or {}).get("selection", {}).get("points", []) if event else []
        if points:
            custom = points[0].get("customdata")
            clicked = int(custom[0]) if custom else None
            # apply a click once (the selection persists across reruns)
            if clicked is not None and clicked != st.session_state.get("last_click"):
                st.session_state["last_click"] = clicked
                st.session_state["average"] = clicked
                st.rerun()
    else:
        st.plotly_chart(fig, width="stretch", key="landscape")
    st.caption("Each point is a class average. Distances reflect the similarity of the best "
               "common lines (CC matrix); click a point (2D) or pick its id to see the pattern.")

with right:
    order = sorted(int(i) for i in ids)
    choice = st.selectbox("average", order, key="average")
    row = table[table["average_id"] == choice].iloc[0]
    ids_file = read_h5(AVERAGES, ["averages/average_id"])
    if ids_file is None:
        missing("classify2d", AVERAGES)
    else:
        where = np.nonzero(ids_file["averages/average_id"] == choice)[0]
        if not len(where):
            st.warning(f"average {choice} is not in {AVERAGES}")
        else:
            arrays = read_h5(AVERAGES, ["averages/intensity", "averages/weight"],
                             index=[int(where[0])])
            img = arrays["averages/intensity"][0].astype(np.float64)
            valid = arrays["averages/weight"][0] > 0
            logimg = log_image(img, valid)
            pat = px.imshow(logimg, origin="lower", color_continuous_scale="viridis",
                            labels=dict(color="log10 I"))
            pat.update_xaxes(showticklabels=False)
            pat.update_yaxes(showticklabels=False)
            pat.update_layout(height=420, margin=dict(l=5, r=5, t=30, b=5),
                              title=f"average #{choice}")
            st.plotly_chart(pat, width="stretch", key="pattern")
    info = {c: row[c] for c in table.columns if c in hover or c.startswith(f"{method}_")}
    st.dataframe(pd.DataFrame({"column": list(info), "value": [str(v) for v in info.values()]}),
                 hide_index=True, width="stretch")

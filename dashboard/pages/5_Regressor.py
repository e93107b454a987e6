"""Regressor: training curves, predicted vs CLPCA coordinates, placed sets (Fig. 3D)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboard.common import averages_table, file_key, missing, path, read_table, read_json, run_picker

st.set_page_config(page_title="Regressor · SPI Landscape", layout="wide")
st.title("Absolute-embedding regressor")
run_picker()


@st.cache_data(max_entries=8, show_spinner=False)
def read_tsv(key: tuple) -> pd.DataFrame:
    return pd.read_csv(key[0], sep="\t")


table = averages_table("nn_1", "regress", ("embed", "classify2d"))
if table is None:
    missing("regress", "results/parts/regress.parquet")
    st.stop()

metrics = read_json("metrics/regress.json")
if metrics:
    val = metrics.get("validation", {})
    rows = [{"component": k, "validation MSE": v, "validation R²": val.get("r2", {}).get(k)}
            for k, v in val.get("mse", {}).items()]
    c1, c2 = st.columns([1, 2])
    c1.metric("train / val averages", f"{metrics.get('n_train', '?')} / {metrics.get('n_val', '?')}")
    c1.metric("features", f"{metrics.get('n_features', '?'):,}" if isinstance(metrics.get("n_features"), int)
              else "?")
    c2.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption("Paper (800/200 of 1,000 averages): validation MSE 0.088, 0.059, 0.042.")

curves = go.Figure()
for name in ("train_loss", "val_loss"):
    tsv = path(f"dvclive/regress/plots/metrics/{name}.tsv")
    if tsv.exists():
        df = read_tsv(file_key(tsv))
        curves.add_trace(go.Scatter(x=df["step"], y=df[name], mode="lines", name=name))
if curves.data:
    curves.update_layout(title="Training curves (standardised MSE per epoch)", xaxis_title="epoch",
                         yaxis_title="loss", yaxis_type="log", height=340, margin=dict(t=50, b=40))
    st.plotly_chart(curves, width="stretch")
else:
    st.info("No per-epoch losses yet (dvclive/regress).")

targets = [k for k in (1, 2, 3) if f"pc_{k}" in table.columns and f"nn_{k}" in table.columns]
if targets:
    fig = make_subplots(rows=1, cols=len(targets), subplot_titles=[f"component {k}" for k in targets])
    split = table["split"].astype(str) if "split" in table.columns else pd.Series(["all"] * len(table))
    for col, k in enumerate(targets, start=1):
        for name, colour in (("train", "#9ecae1"), ("val", "#d62728"), ("all", "#4C78A8")):
            sel = (split == name).to_numpy()
            if not sel.any():
                continue
            fig.add_trace(go.Scattergl(x=table[f"pc_{k}"][sel], y=table[f"nn_{k}"][sel], mode="markers",
                                       marker=dict(size=4, color=colour), name=name,
                                       showlegend=col == 1), 1, col)
        lo = float(np.nanmin(table[[f"pc_{k}", f"nn_{k}"]].to_numpy()))
        hi = float(np.nanmax(table[[f"pc_{k}", f"nn_{k}"]].to_numpy()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="grey", dash="dot"),
                                 showlegend=False), 1, col)
        fig.update_xaxes(title_text=f"CLPCA pc_{k}", row=1, col=col)
        fig.update_yaxes(title_text=f"predicted nn_{k}", row=1, col=col)
    fig.update_layout(title="Predicted vs CLPCA coordinates", height=380, margin=dict(t=60, b=40))
    st.plotly_chart(fig, width="stretch")
else:
    st.info("No CLPCA coordinates to compare with (results/parts/embed.parquet).")

st.subheader("Placed sets on the reference landscape (Fig. 3D)")
placed_dir = path("results/placed")
files = sorted(placed_dir.glob("*.parquet")) if placed_dir.exists() else []
if not files:
    st.info("No placed sets yet: `spicompute place --model models/regressor.pt --averages other.h5 "
            "--out results/placed/other.parquet`.")
    st.stop()
name = st.selectbox("placed set", [f.name for f in files], key="placed_set")
axes = st.selectbox("axes", ["1 vs 2", "2 vs 3", "1 vs 3"], key="placed_axes")
a, b = (int(x) for x in axes.split(" vs "))
placed = read_table(f"results/placed/{name}")
ref_x = table[f"pc_{a}"] if f"pc_{a}" in table.columns else table[f"nn_{a}"]
ref_y = table[f"pc_{b}"] if f"pc_{b}" in table.columns else table[f"nn_{b}"]
over = go.Figure()
over.add_trace(go.Scattergl(x=ref_x, y=ref_y, mode="markers", name="reference landscape",
                            marker=dict(size=4, color="lightgrey")))
over.add_trace(go.Scattergl(x=placed[f"nn_{a}"], y=placed[f"nn_{b}"], mode="markers",
                            name=f"{name} ({len(placed)})", marker=dict(size=6, color="#d62728")))
over.update_layout(xaxis_title=f"CLPCA-{a}", yaxis_title=f"CLPCA-{b}", height=480,
                   margin=dict(t=30, b=40))
st.plotly_chart(over, width="stretch")

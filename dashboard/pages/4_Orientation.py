"""Orientation: gain, best CC and class blur of every average vs the cube reference (Fig. 4C).

Reads results/averages.parquet (or the orient/embed parts), data/orient.h5
(best-fit reference slices) and data/averages.h5.
"""

from __future__ import annotations


import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard.common import averages_table, grid_step, log_image, missing, read_h5, run_picker, vae_class_blur
from dashboard.figures import image_grid

st.set_page_config(page_title="Orientation · SPI Landscape", layout="wide")
st.title("Orientation and gain")
run_picker()


table = averages_table("gain", "orient", ("embed", "classify2d", "vae"))
if table is None:
    missing("orient", "results/parts/orient.parquet")
    st.stop()

finite = np.isfinite(table["gain"].to_numpy(dtype=float))
c1, c2, c3, c4 = st.columns(4)
c1.metric("averages", f"{len(table):,}")
c2.metric("median gain", f"{np.median(table['gain'][finite]):.3f}" if finite.any() else "—")
c3.metric("mean best CC", f"{table['best_cc'].mean():.3f}")
c4.metric("gain undefined", f"{int((~finite).sum())}")
is_round = (~table["orientation_fitted"].astype(bool)).to_numpy() if "orientation_fitted" in table.columns else None
if is_round is not None and is_round.any():
    st.caption(f"{int(is_round.sum())} averages are round (no centrosymmetric angular contrast, "
               "`vae.isotropic_below`): the VAE slices each at a random orientation of its own. Their fitted "
               "orientation here is the "
               "reference's roundest view, not the particle's (docs/vae_volumes.md, \"Round averages\").")

left, right = st.columns(2)
hist = go.Figure(go.Histogram(x=table["gain"][finite], nbinsx=40, marker_color="#4C78A8"))
hist.update_layout(title="Gain = best CC / mean CC over orientations", xaxis_title="gain",
                   yaxis_title="averages", height=380, margin=dict(t=50, b=40))
left.plotly_chart(hist, width="stretch")

if "pc_2" in table.columns:
    color = table["best_cc"]
    scatter = go.Figure(go.Scattergl(
        x=table["pc_2"], y=table["gain"], mode="markers",
        marker=dict(size=5, color=color, colorscale="Viridis", colorbar=dict(title="best CC")),
        text=[f"average {a}" for a in table["average_id"]]))
    scatter.update_layout(title="CLPCA-2 vs gain (Fig. 4C)", xaxis_title="CLPCA-2 (pc_2)",
                          yaxis_title="gain", height=380, margin=dict(t=50, b=40))
    right.plotly_chart(scatter, width="stretch")
else:
    right.info("No CLPCA coordinates yet — run `dvc repro embed` for the gain vs CLPCA-2 plot.")

if {"blur_out_deg", "blur_in_deg"} <= set(table.columns):
    st.subheader("Class blur: how far each class's members spread in orientation")
    blur_fig = go.Figure()
    for col, name, colour in (("blur_out_deg", "out of plane (detector axes)", "#4C78A8"),
                              ("blur_in_deg", "in plane (beam axis)", "#F58518")):
        blur_fig.add_trace(go.Scattergl(x=table["gain"], y=table[col], mode="markers", name=name,
                                        marker=dict(size=5, color=colour, opacity=0.7),
                                        text=[f"average {a}" for a in table["average_id"]]))
    used = vae_class_blur()
    if used:
        for value, colour in zip(used, ("#4C78A8", "#F58518")):
            blur_fig.add_hline(y=value, line_dash="dash", line_color=colour)
    blur_fig.update_layout(title="Class blur against gain (dashed: what the VAE used)", xaxis_title="gain",
                           yaxis_title="± turn of the kernel (degrees)", height=340, margin=dict(t=50, b=40),
                           legend=dict(orientation="h", y=-0.25))
    st.plotly_chart(blur_fig, width="stretch", key="orient_blur")
    st.caption("Fitted against the reference with the VAE's 7-slice kernel (docs/regress_orient.md). Only the "
               "high-gain averages (the reference's shape) measure a spread; `vae.class_blur_deg: auto` takes "
               "the medians of the top quarter of gains among the selected averages.")

st.subheader("An average and its best-fit reference slice")
ids = table.sort_values("gain", ascending=False)["average_id"].to_numpy()
chosen = st.selectbox("average (sorted by gain)", ids, index=0, key="orient_average")
row = table[table["average_id"] == chosen].iloc[0]
blur_text = (f", class blur {row['blur_out_deg']:.1f}° out of plane / {row['blur_in_deg']:.1f}° in plane"
             if "blur_out_deg" in row and "blur_in_deg" in row else "")
st.caption(f"average {chosen}: gain {row['gain']:.3f}, best CC {row['best_cc']:.3f}{blur_text}, "
           f"q = ({row['qw']:.3f}, {row['qx']:.3f}, {row['qy']:.3f}, {row['qz']:.3f}) "
           "(scalar first, model→lab)"
           + (f"; round (anisotropy {row['anisotropy']:.3f}): the VAE slices it at a random orientation, not this one"
              if "orientation_fitted" in row and not bool(row["orientation_fitted"]) else ""))

orient_ids = read_h5("data/orient.h5", ["average_id"])
avg_ids = read_h5("data/averages.h5", ["averages/average_id"])
if orient_ids is None or avg_ids is None:
    st.info("Images need data/orient.h5 and data/averages.h5.")
    st.stop()
i_orient = np.flatnonzero(orient_ids["average_id"] == chosen)
i_avg = np.flatnonzero(avg_ids["averages/average_id"] == chosen)
if not len(i_orient) or not len(i_avg):
    st.warning(f"average {chosen} is not in data/orient.h5 or data/averages.h5 (stale outputs?).")
    st.stop()
fit = read_h5("data/orient.h5", ["best_slice"], index=i_orient[:1])
avg = read_h5("data/averages.h5", ["averages/intensity", "averages/weight"], index=i_avg[:1])
image = avg["averages/intensity"][0].astype(float)
valid = avg["averages/weight"][0] > 0
ref = fit["best_slice"][0].astype(float)


fig = image_grid([log_image(image, valid), log_image(ref, valid)],
                 ["average (log10 I)", "reference slice (log10 I)"],
                 grid_step("data/averages.h5", "averages"), shared_scale=False, panel_height=400)
st.plotly_chart(fig, width="stretch", key="orient_pair")
st.caption("Each panel on its own log scale (the average in photons, the reference in model "
           "units); grey = never observed in the average.")

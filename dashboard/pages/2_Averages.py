"""2D class averages: gallery (log scale, sorted by occupancy) and EMC convergence.

Reads data/averages.h5 (classify2d or import-dragonfly2d), the per-iteration
dvclive series in dvclive/classify2d/plots/metrics/run_<b>/<metric>.tsv and
metrics/classify2d.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.common import file_key, grid_step, log_image, missing, path, read_h5, read_json, run_picker
from dashboard.data import loaders
from dashboard.figures import image_grid

st.set_page_config(page_title="Averages · SPI Landscape", layout="wide")
st.title("2D class averages")
run_picker()

AVERAGES = "data/averages.h5"
LIVE = "dvclive/classify2d/plots/metrics"
META = ["averages/average_id", "averages/run", "averages/model", "averages/n_frames"]


@st.cache_data(max_entries=8, show_spinner=False)
def _live_series(key: tuple) -> pd.DataFrame:
    """All dvclive TSVs under the folder as one long table (run, metric, step, value)."""
    series = loaders.read_dvclive(key[0], "run_*/*.tsv", skip_partial=True) if Path(key[0]).is_dir() else {}
    rows = [pd.DataFrame({"run": name.split("/")[0].removeprefix("run_"), "metric": name.split("/")[1],
                          "step": frame["step"], "value": frame[name]}) for name, frame in series.items()]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["run", "metric", "step", "value"])


def live_series() -> pd.DataFrame:
    folder = path(LIVE)
    stamp = tuple(file_key(p) for p in sorted(folder.glob("run_*/*.tsv"))) if folder.exists() \
        else ()
    return _live_series((str(folder), stamp))


meta = read_h5(AVERAGES, META)
if meta is None:
    missing("classify2d", AVERAGES)
    st.stop()

table = pd.DataFrame({"average_id": meta["averages/average_id"], "run": meta["averages/run"],
                      "model": meta["averages/model"], "n_frames": meta["averages/n_frames"]})
table["row"] = np.arange(len(table))
runs = sorted(table["run"].unique().tolist())

c1, c2, c3, c4 = st.columns(4)
c1.metric("averages", f"{len(table):,}")
c2.metric("runs", f"{len(runs)}")
c3.metric("median occupancy", f"{table['n_frames'].median():.1f}")
c4.metric("empty (< 1 frame)", f"{int((table['n_frames'] < 1).sum())}")

st.subheader("Gallery")
g1, g2, g3, g4 = st.columns(4)
run_choice = g1.selectbox("run", ["all"] + [str(r) for r in runs], key="run")
n_show = g2.slider("averages shown", 1, min(60, len(table)), min(24, len(table)), key="n_show")
order = g3.selectbox("sort by", ["occupancy (high first)", "occupancy (low first)",
                                 "average_id"], key="order")
log_scale = g4.checkbox("log scale", value=True, key="log")

shown = table if run_choice == "all" else table[table["run"] == int(run_choice)]
if order.startswith("occupancy"):
    shown = shown.sort_values("n_frames", ascending=order.endswith("(low first)"),
                              kind="stable")
else:
    shown = shown.sort_values("average_id", kind="stable")
shown = shown.head(n_show)

arrays = read_h5(AVERAGES, ["averages/intensity", "averages/weight"],
                 index=shown["row"].to_numpy())
# read_h5 returns rows in sorted-index order: put them back in display order
sorted_rows = np.sort(shown["row"].to_numpy())
pos = np.searchsorted(sorted_rows, shown["row"].to_numpy())
images = arrays["averages/intensity"][pos].astype(np.float64)
valid = arrays["averages/weight"][pos] > 0
images = log_image(images, valid) if log_scale else np.where(valid, images, np.nan)

cols = 6 if len(shown) > 4 else len(shown)
labels = [f"#{a} · run {r} · {n:.0f} fr" for a, r, n in
          zip(shown["average_id"], shown["run"], shown["n_frames"])]
fig = image_grid(images, labels, grid_step(AVERAGES, "averages"), cols=cols,
                 colorbar="log10 I" if log_scale else "I", panel_height=210)
st.plotly_chart(fig, width="stretch", key="gallery")
step = grid_step(AVERAGES, "averages")
st.caption("Intensity in photons per pixel at unit fluence on the (qx, qy) grid (qx to the right, "
           "qy up, beam at the centre" + (f", {step:.3g} nm⁻¹ per pixel" if step else "") +
           "); grey = never observed. Occupancy = posterior-weighted number of member frames.")

st.subheader("Occupancy")
occ = go.Figure()
for r in runs:
    sel = table[table["run"] == r].sort_values("n_frames", ascending=False)
    occ.add_trace(go.Scatter(x=np.arange(1, len(sel) + 1), y=sel["n_frames"], mode="lines+markers",
                             name=f"run {r}"))
occ.update_layout(xaxis_title="rank", yaxis_title="frames", height=300,
                  margin=dict(l=10, r=10, t=10, b=10))
st.plotly_chart(occ, width="stretch", key="occupancy")

st.subheader("Convergence")
series = live_series()
if series.empty:
    st.info("No per-iteration log (dvclive/classify2d) — imported averages, or the stage has "
            "not run.")
else:
    metrics = sorted(series["metric"].unique())
    default = metrics.index("loglik") if "loglik" in metrics else 0
    metric = st.selectbox("metric", metrics, index=default, key="metric")
    sub = series[series["metric"] == metric]
    conv = go.Figure()
    for r, grp in sub.groupby("run"):
        conv.add_trace(go.Scatter(x=grp["step"], y=grp["value"], mode="lines+markers",
                                  name=f"run {r}"))
    conv.update_layout(xaxis_title="iteration", yaxis_title=metric, height=320,
                       margin=dict(l=10, r=10, t=10, b=10),
                       yaxis_type="log" if metric == "model_change" else "linear")
    st.plotly_chart(conv, width="stretch", key="convergence")

summary = read_json("metrics/classify2d.json")
if summary:
    purity = summary.get("shape_purity") or {}
    sorting = summary.get("photon_sorting_f")
    truth_sorting = summary.get("truth_sorting_f") or {}
    if purity or sorting is not None:
        st.subheader("Class quality")
        cols = st.columns(3)
        if purity:
            cols[0].metric("shape purity (simulation truth)", f"{purity['emc_mean']:.2f}",
                           f"{purity['emc_minus_baseline']:+.2f} vs naive radial-profile clustering "
                           f"({purity['naive_baseline']:.2f})")
        if sorting is not None:
            cols[1].metric("photon sorting (ANOVA F of log photons between classes)",
                           f"{sorting:.1f}",
                           help="About 1 when classes ignore photons per frame. Photons are "
                                "fluence x the particle's scattering power in its view, so classes "
                                "that separate views and sizes (as they should) raise it; only "
                                "simulation truth tells fluence sorting apart.")
        if truth_sorting.get("fluence") is not None:
            strength = truth_sorting.get("scattering_strength")
            cols[2].metric("fluence sorting (simulation truth)", f"{truth_sorting['fluence']:.1f}",
                           None if strength is None else
                           f"F {strength:.0f} by scattering strength (photons / fluence)",
                           delta_color="off",
                           help="ANOVA F of the true fluence between classes: ~1 means the classes "
                                "ignore the beam's fluence (wanted).")
    with st.expander("metrics/classify2d.json"):
        st.json(summary)

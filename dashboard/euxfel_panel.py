"""Frames page panel for EuXFEL (AGIPD 1M) input: hit rate over trains, lit-pixel histogram
with the hit threshold, and a few hits on the assembled detector (extra-geom)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard.common import file_key, path, plain, read_json
from dashboard.data import OutputError, OutputMissing, loaders
from dashboard.data import euxfel as eux
from dashboard.figures import image_grid

HITS = "results/hits.parquet"
HIST = "metrics/frames_lit_histogram.csv"
METRICS = "metrics/frames.json"


@st.cache_data(max_entries=4, show_spinner=False)
def _train_rates(key: tuple):
    try:
        table = loaders.read_table(key[0], columns=["train_id", "is_hit"])
    except OutputMissing:
        return None
    return eux.hit_rate_by_train(table)


@st.cache_data(max_entries=8, show_spinner="Assembling the detector image…")
def _assembled(key: tuple, index: tuple, factor: int):
    from spicompute.io.frames import read_frame_subset

    counts, fid, det = read_frame_subset(key[0], list(index))
    geom, note = eux.load_geometry(eux.frames_geometry_path(key[0]))
    qx, qy = eux.assembled_q_axes(det.q, geom, factor)
    return eux.assemble(counts, det.mask, geom, factor), fid, note, qx, qy


def render(frames_path, n_frames: int) -> None:
    """Draw the EuXFEL panel for the frames file at ``frames_path`` (AGIPD 1M layout)."""
    st.subheader("EuXFEL run: hit finding")
    metrics = read_json(METRICS) or {}
    if metrics:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("frames read", f"{metrics.get('frames_read', 0):,}")
        c2.metric("hits", f"{metrics.get('hits', 0):,}")
        c3.metric("hit rate", f"{100 * metrics.get('hit_rate', 0):.2f} %")
        c4.metric("lit-pixel threshold", f"{metrics.get('hit_threshold', float('nan')):.1f}")
        st.caption(f"Run {metrics.get('run')} at {metrics.get('input')}; photon energy "
                   f"{metrics.get('photon_energy_kev', float('nan')):.3f} keV "
                   f"({metrics.get('photon_energy_source', '?')}); threshold rule: "
                   f"{metrics.get('threshold_rule', '?')}.")
    try:
        rates = _train_rates(file_key(path(HITS)))
    except OutputError as exc:
        st.warning(plain(str(exc)))
        rates = None
    if rates is not None and len(rates):
        fig = go.Figure(go.Scatter(x=rates["train_id"], y=100 * rates["hit_rate"], mode="lines+markers",
                                   name="hit rate", customdata=rates[["frames", "hits"]],
                                   hovertemplate="train %{x}<br>%{y:.2f} %% (%{customdata[1]} of "
                                                 "%{customdata[0]} frames)<extra></extra>"))
        fig.update_layout(xaxis_title="train id", yaxis_title="hit rate (%)", height=300,
                          margin=dict(l=10, r=10, t=20, b=10))
        st.plotly_chart(fig, width="stretch", key="eux_hit_rate")
    try:
        hist = eux.lit_histogram(path(HIST))
    except OutputError as exc:
        st.info(f"No lit-pixel histogram: {plain(str(exc))}")
        hist = None
    if hist is not None:
        fig = go.Figure(go.Bar(x=hist["lit_pixels"], y=hist["frames"],
                               width=hist["bin_high"] - hist["bin_low"], name="frames",
                               marker_color=np.where(hist.get("above_threshold", False), "#d62728", "#1f77b4")))
        thr = metrics.get("hit_threshold")
        if thr is not None:
            fig.add_vline(x=thr, line_dash="dash", line_color="black",
                          annotation_text=f"threshold {thr:.1f}")
        fig.update_layout(xaxis_title="lit pixels per frame", yaxis_title="frames", yaxis_type="log",
                          height=320, margin=dict(l=10, r=10, t=20, b=10))
        st.plotly_chart(fig, width="stretch", key="eux_lit_hist")
    n_show = st.slider("hits shown on the assembled detector", 1, 6, 3, key="eux_n_show")
    factor = st.select_slider("display binning (pixels per block)", [1, 2, 4, 8], value=4, key="eux_factor")
    seed = st.number_input("sample (seed)", min_value=0, value=0, step=1, key="eux_seed")
    index = np.sort(np.random.default_rng(int(seed)).choice(n_frames, size=min(n_show, n_frames),
                                                            replace=False))
    images, fid, note, qx, qy = _assembled(file_key(frames_path), tuple(int(i) for i in index),
                                           int(factor))
    fig = image_grid(np.log10(np.asarray(images, np.float64) + 1), [f"frame {f}" for f in fid],
                     x=qx, y=qy, cols=len(fid), zmin=0, colorbar="log10(n+1)", panel_height=380)
    st.plotly_chart(fig, width="stretch", key="eux_assembled")
    st.caption(f"Photons per {factor}×{factor} block on the assembled AGIPD 1M ({note}); "
               "q of the row and column through the beam; grey: gaps and masked pixels.")

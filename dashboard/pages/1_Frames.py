"""Frames: example diffraction patterns and photon statistics of data/frames.h5."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard.common import file_key, missing, path, read_h5, read_json, run_picker
from dashboard.data import drill
from dashboard.figures import image_grid

from spicompute.io.frames import read_frame_subset

st.set_page_config(page_title="Frames · SPI Landscape", layout="wide")
st.title("Frames")
run_picker()

FRAMES = "data/frames.h5"
frames_path = path(FRAMES)
if not frames_path.exists():
    missing("frames", FRAMES)
    st.stop()


@st.cache_data(max_entries=16, show_spinner=False)
def load_examples(key: tuple, index: tuple):
    counts, fid, det = read_frame_subset(key[0], list(index))
    return counts, fid, det.mask, det.shape, det.wavelength_nm, det.q_max_nm, det.q


summary = read_h5(FRAMES, ["frames/photons", "frames/frame_id"])
photons = summary["frames/photons"]
n = len(photons)
truth = read_h5("data/truth.h5", ["truth/class_name", "truth/melt_t"])
labels = None
if truth and "truth/class_name" in truth:
    labels = np.asarray(truth["truth/class_name"]).astype(str)

col1, col2, col3, col4 = st.columns(4)
col1.metric("frames", f"{n:,}")
col2.metric("mean photons / frame", f"{photons.mean():,.0f}")
col3.metric("min / max", f"{photons.min():,} / {photons.max():,}")

n_show = st.slider("frames shown", 1, 12, 6)
seed = st.number_input("sample (seed)", min_value=0, value=0, step=1)
index = np.sort(np.random.default_rng(int(seed)).choice(n, size=min(n_show, n), replace=False))
counts, fid, mask, shape, wavelength, q_max, det_q = load_examples(file_key(frames_path),
                                                            tuple(int(i) for i in index))
col4.metric("detector", f"{shape[0]}×{shape[1]}" if shape else f"{len(mask)} px")
st.caption(f"λ = {wavelength:.4f} nm, q_max = {q_max:.3f} rad/nm. Log scale; masked pixels grey.")

from dashboard.data.euxfel import is_agipd_frames  # noqa: E402

if shape is None and is_agipd_frames(frames_path):  # EuXFEL run: hit finding + assembled hits
    from dashboard.euxfel_panel import render as render_euxfel

    render_euxfel(frames_path, n)
elif shape is None:
    st.warning("This detector is not a regular image; frames cannot be drawn as images.")
else:
    titles = [f"frame {f}" + (f" · {labels[i]}" if labels is not None else "")
              for i, f in zip(index, fid)]
    img = np.log10(np.asarray(counts, dtype=np.float64).reshape(len(index), -1) + 1)
    img[:, ~np.asarray(mask, bool)] = np.nan  # masked pixels: not drawn (grey)
    qx_axis, qy_axis = drill.detector_q_axes(det_q, shape)
    fig = image_grid(img.reshape(len(index), *shape), titles, x=qx_axis, y=qy_axis, cols=6,
                     zmin=0, colorbar="log10(n+1)", panel_height=260)
    st.plotly_chart(fig, width="stretch", key="frames")

st.subheader("Photons per frame")
hist = go.Figure()
if labels is not None and len(labels) == n:
    for name in sorted(set(labels)):
        hist.add_trace(go.Histogram(x=photons[labels == name], name=name, opacity=0.7,
                                    nbinsx=60))
    hist.update_layout(barmode="overlay")
else:
    hist.add_trace(go.Histogram(x=photons, nbinsx=60, name="frames"))
hist.update_layout(xaxis_title="photons per frame", yaxis_title="frames", height=340,
                   margin=dict(l=10, r=10, t=20, b=10))
classify = read_json("metrics/classify2d.json")
cut = float(classify.get("resolved_min_photons") or 0)
if cut > 0:   # the hit-strength cut classify2d applied: a beam halo shows as a shelf below it
    hist.add_vline(x=cut, line_dash="dash", line_color="#444444",
                   annotation_text=f"classify2d.min_photons {cut:g}", annotation_position="top right")
st.plotly_chart(hist, width="stretch", key="photon_hist")
if cut > 0:
    st.caption(f"{classify.get('resolved_n_weak_frames', 0):,} frames with fewer than {cut:g} photons on the "
               "fitted pixels were not classified (classify2d.min_photons; dashed).")
if labels is not None:
    st.caption("Simulated data: colours are the ground-truth classes from data/truth.h5.")

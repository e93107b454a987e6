"""Training curves (dvclive) of the absolute-embedding regressor and the VAE."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.common import file_key, path, run_picker
from dashboard.data import OutputError, loaders

st.set_page_config(page_title="Training · SPI Landscape", layout="wide")
st.title("Training curves")
run_picker()

MODELS = {"regress": "Absolute-embedding regressor (dvclive/regress)",
          "vae": "VAE (dvclive/vae)"}


@st.cache_data(max_entries=16, show_spinner=False)
def curves(key: tuple) -> dict[str, pd.DataFrame]:
    return loaders.read_dvclive(key[0])


shown = 0
for model, title in MODELS.items():
    folder = path(f"dvclive/{model}/plots/metrics")
    st.subheader(title)
    if not folder.is_dir():
        st.info(f"No dvclive/{model} in this run — run `dvc repro {model}` "
                "(dvclive logs are kept in the workspace, not in git or the cache).")
        continue
    try:
        data = curves(file_key(folder) + tuple(file_key(p) for p in sorted(folder.glob("*.tsv"))))
    except OutputError as exc:
        st.error(f"Cannot read {exc.path}: {exc.problem}.")
        continue
    if not data:
        st.info(f"dvclive/{model} holds no curves yet.")
        continue
    loss = {k: v for k, v in data.items() if "loss" in k or k in ("recon",)}
    other = {k: v for k, v in data.items() if k not in loss}
    cols = st.columns(2 if other else 1)
    for col, group, label in ((cols[0], loss, "loss"), (cols[-1], other, "other")):
        if not group or (group is other and not other):
            continue
        fig = go.Figure()
        for name, frame in group.items():
            fig.add_trace(go.Scatter(x=frame["step"], y=frame[name], mode="lines", name=name))
        fig.update_layout(height=340, xaxis_title="step (epoch)", yaxis_title=label,
                          yaxis_type="log" if label == "loss" and all(
                              (f[n] > 0).all() for n, f in group.items()) else "linear",
                          margin=dict(l=10, r=10, t=30, b=10))
        col.plotly_chart(fig, width="stretch", key=f"{model}_{label}")
    shown += 1

"""SPI Landscape dashboard — home page: what the pipeline has produced.

Run: ``streamlit run dashboard/app.py`` (``make dashboard``).  The pages in
dashboard/pages/ browse frames, class averages, the CLPCA landscape,
orientations, the regressor and DVC experiments.  Set ``SPI_WORKSPACE`` to
show another checkout's outputs.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st

from dashboard.common import current_rev, path, run_picker, workspace
from dashboard.data import OutputError, loaders, runs
from dashboard.figures import fmt_value

# (relative path, producing stage, what it holds)
OUTPUTS = [
    ("data/frames.h5", "frames", "photon counts + detector geometry"),
    ("data/truth.h5", "frames", "simulation ground truth (simulated data only)"),
    ("data/averages.h5", "classify2d", "2D EMC class averages (all bootstrap runs)"),
    ("results/frames.parquet", "classify2d", "frame -> average assignment per run"),
    ("data/ccmatrix.h5", "ccmatrix", "common-line CC matrix"),
    ("results/parts/embed.parquet", "embed", "CLPCA / Isomap / spectral / t-SNE coordinates"),
    ("models/regressor.pt", "regress", "absolute-embedding MLP (state dict)"),
    ("results/parts/regress.parquet", "regress", "regressor coordinates nn_1..3"),
    ("results/parts/orient.parquet", "orient", "best orientation, CC and gain"),
    ("results/parts/select.parquet", "select", "averages chosen for the VAE"),
    ("results/parts/vae.parquet", "vae", "VAE latent coordinates per average"),
    ("data/volumes.h5", "volumes", "3D intensities along the latent"),
    ("results/averages.parquet", "tables", "one row per average, all columns"),
]


def output_table() -> pd.DataFrame:
    rev = current_rev()
    rows = []
    for rel, stage, what in OUTPUTS:
        exists, size = runs.output_info(workspace(), rev, rel)
        when = "not produced yet"
        if exists and rev == "workspace":
            when = dt.datetime.fromtimestamp(path(rel).stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
        elif exists:
            state = runs.readable(str(workspace()), rev, rel)
            when = "in this revision" if state == runs.HERE else state
            exists = state == runs.HERE
        rows.append({"present": exists, "output": rel, "stage": stage, "holds": what,
                     "size": f"{size / 1e6:.2f} MB" if exists and size is not None else "—",
                     "modified": when})
    return pd.DataFrame(rows)


def metrics_table() -> pd.DataFrame:
    rows = []
    for p in sorted(path("metrics").glob("*.json")):
        try:
            data = loaders.read_json(p)
        except OutputError as exc:
            st.warning(f"Ignoring {p.name}: {exc.problem}.")
            continue
        flat = pd.json_normalize(data, sep=".").to_dict(orient="records")
        for key, value in (flat[0] if flat else {}).items():
            if isinstance(value, (int, float, str, bool)):
                rows.append({"file": p.name, "metric": key, "value": fmt_value(value)})
    return pd.DataFrame(rows)


st.set_page_config(page_title="SPI Landscape", layout="wide")
st.title("SPI Landscape")
run_picker()
st.caption(f"Workspace: `{workspace()}` — the dashboard reads pipeline outputs, never recomputes.")

table = output_table()
done = int(table.pop("present").sum())
st.subheader(f"Pipeline outputs ({done} of {len(table)} present)")
st.dataframe(table, hide_index=True, width="stretch")
if done == 0:
    st.info("Nothing produced yet: run `dvc repro` (or `make demo`) in the workspace.")

metrics = metrics_table()
if len(metrics):
    st.subheader("Metrics")
    st.dataframe(metrics, hide_index=True, width="stretch")

params_file = path("params.yaml")
if params_file.exists():
    with st.expander("params.yaml"):
        st.code(params_file.read_text(), language="yaml")

"""Experiments: DVC experiments side by side — parameters, metrics, landscapes."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.common import workspace, run_picker

st.set_page_config(page_title="Experiments · SPI Landscape", layout="wide")
st.title("Experiments")
run_picker()

META = ["Experiment", "rev", "typ", "Created", "parent", "State", "Executor"]


@st.cache_data(ttl=30, show_spinner="Reading DVC experiments…")
def experiments(repo: str, num: int) -> pd.DataFrame:
    import dvc.api

    rows = dvc.api.exp_show(repo=repo, num=num)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["name"] = table["Experiment"].fillna(table["rev"])
    return table


@st.cache_data(max_entries=16, show_spinner="Loading results of the revision…")
def averages_at(repo: str, rev: str) -> pd.DataFrame | None:
    """results/averages.parquet of a revision (workspace: the file on disk)."""
    if rev == "workspace":
        p = Path(repo) / "results" / "averages.parquet"
        return pd.read_parquet(p) if p.exists() else None
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(repo, rev=rev)
        with fs.open("results/averages.parquet", "rb") as fh:
            return pd.read_parquet(io.BytesIO(fh.read()))
    except Exception:  # not produced in that revision, or its cache is not local
        return None


repo = str(workspace())
if not (Path(repo) / ".dvc").exists():
    st.info(f"`{repo}` is not a DVC project: no experiments to compare.")
    st.stop()
num = st.number_input("commits of history to include", min_value=1, max_value=50, value=1)
try:
    table = experiments(repo, int(num))
except Exception as exc:  # a broken repo should not take the page down
    st.error(f"Could not read experiments: {exc}")
    st.stop()
if table.empty:
    st.info("No experiments yet: run `dvc exp run -S section.key=value`.")
    st.stop()

value_cols = [c for c in table.columns if c not in META + ["name"]]
varying = [c for c in value_cols if table[c].astype(str).nunique() > 1]
show_all = st.toggle("show columns that are equal everywhere", value=False)
cols = ["name", "typ", "Created"] + (value_cols if show_all else varying)
st.dataframe(table[cols], hide_index=True, width="stretch")
st.caption(f"{len(table)} revisions; {len(varying)} parameter/metric columns differ.")

names = table["name"].tolist()
chosen = st.multiselect("compare", names, default=names[: min(2, len(names))])
if len(chosen) >= 2:
    sub = table.set_index("name").loc[chosen]
    diff = sub[[c for c in value_cols if sub[c].astype(str).nunique() > 1]].T
    st.subheader("What differs")
    st.dataframe(diff.astype(str), width="stretch")

    st.subheader("Landscapes (CLPCA-1 vs CLPCA-2)")
    frames = {n: averages_at(repo, str(table.set_index("name").loc[n, "rev"])) for n in chosen}
    ref_name = chosen[0]
    ref = frames[ref_name]
    fig = go.Figure()
    for n, df in frames.items():
        if df is None or "pc_1" not in df:
            st.caption(f"{n}: no results/averages.parquet with CLPCA columns in that revision.")
            continue
        xy = df[["pc_1", "pc_2", "pc_3"]].to_numpy()
        note = ""
        if n != ref_name and ref is not None and "pc_1" in ref and \
                set(df["average_id"]) == set(ref["average_id"]):
            from spicompute.embedding import procrustes_align

            order = df.set_index("average_id").loc[ref["average_id"]]
            xy, _, _, rel = procrustes_align(ref[["pc_1", "pc_2", "pc_3"]].to_numpy(),
                                             order[["pc_1", "pc_2", "pc_3"]].to_numpy())
            note = f" (Procrustes-aligned, residual {rel:.2f})"
        fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name=n + note,
                                   marker=dict(size=5, opacity=0.6)))
    fig.update_layout(xaxis_title="CLPCA-1", yaxis_title="CLPCA-2", height=520)
    st.plotly_chart(fig, width="stretch", key="compare_landscapes")

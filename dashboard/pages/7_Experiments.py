"""Runs: the workspace, commits with results and every DVC experiment — pick, compare.

Read through DVC's Python API (exp_show, params_show, metrics_show,
DVCFileSystem for outputs from the cache); nothing is re-run.  Two runs side
by side: params diff, metrics diff, both landscapes after Procrustes
alignment, matched averages next to each other, which clusters correspond.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard.common import (averages_table, grid_step, list_runs, log_image, metrics_of, params_of,
                              read_h5, run_picker, workspace)
from dashboard.data import compare, runs, tables
from dashboard.figures import image_grid

st.set_page_config(page_title="Runs · SPI Landscape", layout="wide")
st.title("Runs and experiments")
run_picker()

repo = str(workspace())
if not runs.is_dvc_repo(repo):
    st.info(f"`{repo}` is not a DVC project: only the workspace can be browsed.")
    st.stop()
n1, n2 = st.columns([3, 1])
num = n1.number_input("commits of history to include", min_value=1, max_value=50, value=1)
if n2.button("Refresh", help="Re-read experiments now (the list is cached for 2 minutes)."):
    list_runs.clear()
    params_of.clear()
    metrics_of.clear()
available = list_runs(repo, int(num))
params = {r.rev: params_of(repo, r.rev) for r in available}
metrics = {r.rev: metrics_of(repo, r.rev) for r in available}
table = runs.runs_table(repo, available, params, metrics)
table.insert(0, "name", [r.name for r in available])
states = [runs.availability(repo, r) for r in available]
table["outputs"] = [s if s == runs.HERE else f"{s}: {runs.bring_command(r, s)}"
                    for r, s in zip(available, states)]
st.dataframe(table.drop(columns=["run"]), hide_index=True, width="stretch")
commits = [r for r in available if r.kind == "commit"]
if commits and not metrics.get(commits[0].rev):
    st.warning("The commit has no metrics in git: run `make baseline` (commits dvc.lock and the "
               "small metrics/*.json of the default run) so experiments compare against it.")
st.caption(f"{len(available)} runs. Pick one in the sidebar to browse it on every page. "
           "'changed params' is relative to the first commit (the baseline).")

st.subheader("Compare two runs")
labels = {r.rev: f"{r.name} · {r.kind}" for r in available}
revs = [r.rev for r in available]
# A = the baseline commit, B = an experiment: "B − A" is what the experiment changed
default_a = next((r.rev for r in available if r.kind == "commit"), revs[0])
default_b = next((r.rev for r in available if r.kind == "experiment"), revs[0])
c1, c2 = st.columns(2)
rev_a = c1.selectbox("run A", revs, index=revs.index(default_a), format_func=labels.get, key="run_a")
rev_b = c2.selectbox("run B", revs, index=revs.index(default_b), format_func=labels.get, key="run_b")
if rev_a == rev_b:
    st.info("Pick two different runs.")
    st.stop()

d1, d2 = st.columns(2)
with d1:
    st.markdown("**Parameters that differ**")
    pdiff = runs.diff(params[rev_a], params[rev_b]).rename(columns={"a": "A", "b": "B"})
    if len(pdiff):
        st.dataframe(pdiff.drop(columns=["change"]), hide_index=True, width="stretch")
    else:
        st.caption("Same parameters.")
with d2:
    st.markdown("**Metrics that differ**")
    mdiff = runs.diff(metrics[rev_a], metrics[rev_b]).rename(columns={"a": "A", "b": "B",
                                                                      "change": "B − A"})
    mdiff = mdiff[~mdiff["key"].str.contains("seconds")]
    if len(mdiff):
        st.dataframe(mdiff, hide_index=True, width="stretch")
        st.caption("B − A: the value in run B minus the value in run A.")
    elif not metrics[rev_a] or not metrics[rev_b]:
        st.caption("Metrics missing for one run (not committed, or its stages did not run).")
    else:
        st.caption("Same metrics.")

ta = averages_table("pc_1", "embed", ("classify2d",), rev=rev_a)
tb = averages_table("pc_1", "embed", ("classify2d",), rev=rev_b)
if ta is None or tb is None:
    st.info("One of the runs has no landscape (results/parts/embed.parquet) in the cache: "
            "`dvc exp pull` / `dvc pull` it, or run its pipeline.")
    st.stop()
cols = [c for c in tables.components(ta, "pc") if c in tb.columns][:3]
try:
    aligned, rel = compare.align_landscapes(ta, tb, cols)
except ValueError as exc:
    st.info(str(exc))
    st.stop()

st.markdown(f"**Landscapes after Procrustes alignment** (B mapped onto A; relative residual "
            f"{rel:.2f}: 0 = the same shape, ~1 = unrelated)")
fig = go.Figure()
fig.add_trace(go.Scattergl(x=aligned[cols[0]], y=aligned[cols[1]], mode="markers",
                           name=f"A: {labels[rev_a]}", customdata=aligned["average_id"],
                           marker=dict(size=6, color="#4C78A8", opacity=0.7)))
fig.add_trace(go.Scattergl(x=aligned[f"{cols[0]}_other"], y=aligned[f"{cols[1]}_other"],
                           mode="markers", name=f"B: {labels[rev_b]} (aligned)",
                           customdata=aligned["average_id"],
                           marker=dict(size=6, color="#F58518", opacity=0.7, symbol="x")))
fig.update_layout(height=480, xaxis_title=cols[0], yaxis_title=cols[1],
                  margin=dict(l=10, r=10, t=30, b=10))
st.plotly_chart(fig, width="stretch", key="compare_landscapes")

st.markdown("**Matched averages** (same average_id in both runs; largest moves first)")
moved = aligned.sort_values("distance", ascending=False)
st.dataframe(moved.head(50).round(4), hide_index=True, width="stretch")
pick = st.selectbox("show average in both runs", moved["average_id"].tolist(), key="matched")
panels = []
for rev in (rev_a, rev_b):
    ids = read_h5("data/averages.h5", ["averages/average_id"], rev=rev)
    if ids is None or "averages/average_id" not in ids:
        continue
    where = np.nonzero(ids["averages/average_id"] == pick)[0]
    if len(where):
        arr = read_h5("data/averages.h5", ["averages/intensity", "averages/weight"],
                      index=[int(where[0])], rev=rev)
        img = arr["averages/intensity"][0].astype(np.float64)
        panels.append((log_image(img, arr["averages/weight"][0] > 0), labels[rev]))
if panels:
    pf = image_grid([im for im, _ in panels], [t for _, t in panels],
                    grid_step("data/averages.h5", "averages", rev=rev_a), panel_height=300)
    st.plotly_chart(pf, width="stretch", key="matched_pair")

if "cluster" in ta and "cluster" in tb:
    st.markdown("**Which clusters correspond** (averages shared by A's row and B's column)")
    st.dataframe(compare.cluster_correspondence(ta, tb), hide_index=True, width="stretch")

"""The structural landscape: CLPCA space (and Isomap / spectral / t-SNE) of all averages.

Marks which averages the ``select`` stage keeps for the VAE (by default the
cube-end family found without truth).  Box/lasso a region of the 2D scatter,
name it and save it as a selection (``selections/<name>.json``, read by the
``select`` stage with ``select.mode: file``) to override that choice.  Click a point to
drill down: its average, the best-fit reference slice, member frames turned
into the average's orientation.  A banner warns when a component follows
occupancy, signal level or the bootstrap run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import actions
from dashboard.common import (averages_table, current_rev, file_key, log_image, missing, path,
                              grid_step, plain, read_h5, read_json, read_table, run_picker,
                              workspace)
from dashboard.data import OutputError, density, diagnostics, drill, selections, tables, training
from dashboard.figures import (cluster_label, energy_contours, fmt_value, image_grid,
                               landscape_scatter, markdown_table)

st.set_page_config(page_title="Landscape · SPI Landscape", layout="wide")
st.title("Structural landscape")
run_picker()

METHODS = {"pc": "CLPCA (PCA of the CC matrix)", "isomap": "Isomap", "spectral": "Spectral",
           "tsne": "t-SNE"}
AVERAGES = "data/averages.h5"

table = averages_table("pc_1", "embed", ("classify2d", "orient", "select", "vae"))
if table is None:
    missing("embed", "results/parts/embed.parquet")
    st.stop()

available = [m for m in METHODS if tables.components(table, m)]
metrics = read_json("metrics/embed.json")


@st.cache_data(max_entries=4, show_spinner="Checking the landscape against nuisances…")
def nuisance_table(key_frames: tuple, key_h5: tuple, key_truth: tuple, comps: tuple,
                   avg: pd.DataFrame) -> pd.DataFrame:
    from dashboard.data import loaders

    photons, frames = None, None
    try:
        frames = loaders.read_table(key_frames[0], ["frame_id", "average_id"])
        h5 = loaders.read_h5(key_h5[0], ["frames/frame_id", "frames/photons"])
        photons = diagnostics.mean_photons_per_average(frames, h5["frames/frame_id"],
                                                       h5["frames/photons"])
    except OutputError:
        pass
    # simulated data: the members' true melt parameter and particle size are shape references
    # (size is structure too: at 1,500 photons a component follows a 3 % size jitter)
    shape_cols = []
    for field, label in (("melt_t", "truth melt"), ("size_nm", "truth size")):
        try:
            truth = loaders.read_h5(key_truth[0], ["truth/frame_id", f"truth/{field}"])
        except OutputError:
            continue
        if frames is not None:
            avg = avg.assign(**{label: diagnostics.mean_photons_per_average(
                frames, truth["truth/frame_id"], truth[f"truth/{field}"]).reindex(
                avg["average_id"].to_numpy()).to_numpy()})
            shape_cols.append(label)
    shape_cols = tuple(shape_cols)
    return diagnostics.nuisance_correlations(avg, list(comps), photons, shape_cols)


pcs = tables.components(table, "pc")
if pcs:
    diag = nuisance_table(file_key(path("results/frames.parquet")),
                          file_key(path("data/frames.h5")), file_key(path("data/truth.h5")),
                          tuple(pcs), table)
    diag = diagnostics.with_stability(diag, metrics.get("component_stability"))
    warning = diagnostics.banner(diag)
    if warning:
        st.warning(warning, icon="⚠️")
    sized = diagnostics.size_axes(diag)
    if sized:
        st.info(f"{', '.join(sized)} follows the averages' particle size (the fringe spacing, "
                "column `size_scale`): that axis is size, not shape. If the sample has a size spread "
                "that is not part of the structural change, rerun with `ccmatrix.size_normalise: true` "
                "(the common lines then compare shape at a common size; docs/ccmatrix_embed.md).",
                icon="📏")
    with st.expander("Diagnostics: components against occupancy, photons per frame, bootstrap run, "
                     "and their reproducibility"):
        st.markdown(markdown_table(diag))
        st.caption("Spearman rho with n_frames and with the mean photons per frame of the members; "
                   "eta (correlation ratio) with the bootstrap run. Flagged when |value| > 0.5 "
                   "and larger than the correlation with any shape reference. "
                   "stability: |r| between the component as recomputed from two disjoint halves of "
                   "the bootstrap runs (alternate averages when there is one run); null 95%: the same "
                   "on shuffled, structureless CC matrices. A shape axis is reproduced (near 1), a noise axis "
                   "is not. rho size scale: Spearman with the averages' relative particle size from the "
                   "fringe spacing of their radial profiles (docs/ccmatrix_embed.md).")

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
comps = tables.components(table, method)
dims = s2.radio("view", ["2D", "3D"] if len(comps) >= 3 else ["2D"], key="dims",
                horizontal=True, help="Box/lasso selection works in the 2D view.")
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



@st.cache_data(max_entries=8, show_spinner=False)
def landscape_density(points: np.ndarray, weights: np.ndarray | None):
    return density.weighted_density(points, weights)


ids = table["average_id"].to_numpy()
# the "average" selectbox's state is the single source of truth for the drill-down;
# a click in the 2D scatter writes it before the selectbox is drawn
if st.session_state.get("average") not in set(int(i) for i in ids):
    st.session_state["average"] = int(ids[0])

plot, thinned = tables.thin(table, keep_ids=[st.session_state["average"]])
if thinned:
    st.info(f"Showing {len(plot):,} of {len(table):,} averages (a uniform sample) to keep the "
            "browser responsive; selections still use every average inside the box.")
plot = plot.copy()
hover = [c for c in ("average_id", "run", "model", "n_frames", "cluster", "selected", "reason") if c in plot]
color_arg = None
if color in plot:
    if color == "cluster":
        plot[color] = [cluster_label(v) for v in plot[color].astype("Int64")]
    elif not pd.api.types.is_float_dtype(plot[color]):
        plot[color] = plot[color].astype("Int64").astype(str)
    color_arg = color
orders = {}
if color_arg and not pd.api.types.is_numeric_dtype(plot[color_arg]):  # legend in numeric order
    levels = plot[color_arg].unique().tolist()
    orders = {color_arg: sorted(levels, key=lambda v: (not v.lstrip("-").isdigit(),
                                                       int(v) if v.lstrip("-").isdigit() else 0, v))}

if dims == "3D":
    fig = px.scatter_3d(plot, x=comps[0], y=comps[1], z=comps[2], color=color_arg,
                        hover_data=hover, custom_data=["average_id"], opacity=0.8,
                        category_orders=orders)
    fig.update_traces(marker=dict(size=3))
else:
    fig = landscape_scatter(plot, x_col, y_col, color_arg, hover,
                            order=orders.get(color_arg) if color_arg else None)
marks = training.training_marks(plot)
if marks is not None:
    show_marks = st.checkbox("mark the averages the select stage drops", value=True, key="show_training",
                             help="✕: not used to train the VAE; ◆: the cube-end seed of select.mode family")
    st.caption(training.training_caption(read_json("metrics/select.json"), training.training_marks(table)))
    if show_marks:
        # Scatter3d knows fewer symbols than Scatter: "x" and "diamond-open" exist in both
        for mask, name, symbol, colour in ((marks["dropped"], "dropped by select", "x", "black"),
                                           (marks["seed"], "cube-end seed", "diamond-open", "crimson")):
            if not mask.any():
                continue
            part = plot[mask]
            style = dict(symbol=symbol, size=7 if dims == "2D" else 4, color=colour,
                         line=dict(color=colour, width=1))
            if dims == "3D":
                fig.add_trace(go.Scatter3d(x=part[comps[0]], y=part[comps[1]], z=part[comps[2]],
                                           mode="markers", marker=style, name=name, hoverinfo="skip"))
            else:
                fig.add_trace(go.Scatter(x=part[x_col], y=part[y_col], mode="markers", marker=style,
                                         name=name, hoverinfo="skip"))
density_note = None
if dims == "2D":
    show_density = st.checkbox("energy landscape: −log density of the averages weighted by their "
                               "member frames", value=True, key="show_density")
    if show_density:
        weights = table["n_frames"].to_numpy(np.float64) if "n_frames" in table else None
        try:
            dens = landscape_density(table[[x_col, y_col]].to_numpy(np.float64), weights)
        except ValueError as exc:
            density_note = f"No density: {exc}."
        else:
            fig.add_trace(energy_contours(dens))
            density_note = dens.caption([x_col, y_col], weights is not None)
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
# plotly reports a plain click as a point selection only outside its box/lasso drag modes,
# so the mouse mode is an explicit choice, clicking (with pan) first
MOUSE = {"click: drill down": "pan", "drag: box select": "select", "drag: lasso select": "lasso"}
mouse = st.radio("mouse", list(MOUSE), key="mouse", horizontal=True,
                 help="Click a point to show its average, or drag a box / lasso around "
                      "averages to save them as a selection.") if dims == "2D" else None
# the legend goes under the plot: at the right it would sit on a colour bar's title
fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=10),
                  legend=dict(title=color if color_arg else None, orientation="h",
                              yanchor="top", y=-0.08, x=0),
                  dragmode=MOUSE[mouse] if dims == "2D" else None)

left, right = st.columns([3, 2])
with left:
    region: list[int] = []
    if dims == "2D":
        event = st.plotly_chart(fig, width="stretch", key="landscape", on_select="rerun",
                                selection_mode=("points", "box", "lasso"))
        chosen = (event or {}).get("selection", {}) if event else {}
        points = chosen.get("points", [])
        box = chosen.get("box", [])
        lasso = chosen.get("lasso", [])
        region = selections.ids_from_event(points)
        if box and thinned:  # a box covers the averages the thinned plot does not draw
            b = box[0]
            region = selections.ids_in_box(table, x_col, y_col, b["x"], b["y"])
        if len(region) == 1 and not box and not lasso:
            clicked = region[0]
            # apply a click once (the selection persists across reruns)
            if clicked != st.session_state.get("last_click"):
                st.session_state["last_click"] = clicked
                st.session_state["average"] = clicked
                st.rerun()
            region = []
    else:
        st.plotly_chart(fig, width="stretch", key="landscape")
    if density_note:
        st.caption(density_note)
    st.caption("Each point is a class average. Distances reflect the similarity of the best "
               "common lines (CC matrix). 2D: in the mouse mode *click* a point to drill down; "
               "in *box* or *lasso* mode drag around a region to select it and save it for "
               "the pipeline.")
    st.caption(diagnostics.landscape_settings_note(read_json("metrics/ccmatrix.json")))

    if region:
        st.subheader(f"{len(region)} averages selected")
        if current_rev() != "workspace":
            st.info("Selections are saved into the workspace: switch the run to `workspace`.")
        else:
            with st.form("save_selection", clear_on_submit=False):
                name = st.text_input("selection name", key="selection_name",
                                     help="letters, digits, '.', '_' or '-' (<= 64)")
                note = st.text_input("note", key="selection_note")
                overwrite = st.checkbox("replace an existing selection of that name")
                saved = st.form_submit_button("Save selection")
            if saved:
                try:
                    out = selections.save(workspace(), name, region, note=note,
                                          overwrite=overwrite)
                except (ValueError, FileExistsError) as exc:
                    st.error(plain(exc))
                else:
                    st.success(f"Saved {len(region)} averages to selections/{out.name}. "
                               "The pipeline trains on it only with `select.mode: file` and "
                               f"`select.file: selections/{out.name}`: "
                               f"`{actions.use_selection_command(out.stem)}`, or set it on the "
                               "Selections page.")

with right:
    order = sorted(int(i) for i in ids)
    choice = st.selectbox("average", order, key="average")
    row = table[table["average_id"] == choice].iloc[0]
    ids_file = read_h5(AVERAGES, ["averages/average_id"])
    if ids_file is None or "averages/average_id" not in ids_file:
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
            panels = [(logimg, f"average #{choice}")]
            fit_ids = read_h5("data/orient.h5", ["average_id"])
            if fit_ids is not None and "average_id" in fit_ids:
                w2 = np.nonzero(fit_ids["average_id"] == choice)[0]
                if len(w2):
                    ref = read_h5("data/orient.h5", ["best_slice"], index=[int(w2[0])])
                    if ref is not None and "best_slice" in ref and \
                            ref["best_slice"][0].shape == img.shape:
                        ref_img = ref["best_slice"][0].astype(np.float64)
                        panels.append((log_image(ref_img, valid & (ref_img > 0)),
                                       "reference slice"))
            pat = image_grid([im for im, _ in panels], [t for _, t in panels],
                             grid_step(AVERAGES, "averages"), panel_height=300,
                             shared_scale=len(panels) == 1)
            st.plotly_chart(pat, width="stretch", key="pattern")
    info = {c: row[c] for c in table.columns if c in hover or c.startswith(f"{method}_")}
    shown = [cluster_label(v) if c == "cluster" else fmt_value(v) for c, v in info.items()]
    st.markdown(markdown_table(pd.DataFrame({"column": list(info), "value": shown})))

st.subheader(f"Member frames of average #{choice}")
frames_table = read_table("results/frames.parquet")
frames_file = path("data/frames.h5")
if frames_table is None or not frames_file.exists():
    missing("classify2d", "results/frames.parquet and data/frames.h5")
else:
    n_show = st.slider("frames shown", 1, 12, 6, key="n_members")
    members = drill.sample_members(frames_table, choice, n_show)
    if not len(members):
        st.info("No frames were assigned to this average.")
    else:
        @st.cache_data(max_entries=16, show_spinner=False)
        def member_images(key: tuple, frame_ids: tuple, angles: tuple):
            return drill.member_frame_images(key[0], pd.DataFrame(
                {"frame_id": list(frame_ids), "rotation_deg": list(angles)}))

        try:
            images, fids, (qx, qy) = member_images(file_key(frames_file),
                                                   tuple(members["frame_id"].tolist()),
                                                   tuple(members["rotation_deg"].tolist()))
        except (OutputError, ValueError) as exc:
            st.warning(f"Cannot draw member frames: {exc}")
        else:
            angle = dict(zip(members["frame_id"], members["rotation_deg"]))
            mf = image_grid(np.log10(1 + np.asarray(images, np.float64)),
                            [f"frame {f} · {angle[f]:.0f}°" for f in fids], x=qx, y=qy, cols=6,
                            colorbar="log10(1 + n)", panel_height=220)
            st.plotly_chart(mf, width="stretch", key="members")
            st.caption("Photon counts, log10(1 + n), each frame turned back by its in-plane "
                       "rotation into the average's orientation (most confident first).")

"""Volumes: the VAE latent and the 3D intensities / shapes along it (paper Figs. 5 and 6).

Reads results/parts/vae.parquet (or results/averages.parquet), data/volumes.h5,
and, when the phase stage has run, data/phased.h5 and results/volumes.parquet.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import actions
from dashboard.common import (
    attempt,
    averages_table,
    current_rev,
    file_key,
    grid_step,
    missing,
    path,
    read_h5,
    read_table,
    run_picker,
    vae_class_blur,
    workspace,
)
from dashboard.data import density, drill, loaders, selections
from dashboard.figures import energy_contours, image_grid
from spicompute.views import DIRECTIONS, block_mean, central_section, frame_for, log_display, projection, quantize_uint8

st.set_page_config(page_title="Volumes · SPI Landscape", layout="wide")
st.title("VAE latent and volumes")
run_picker()

VOLUMES, PHASED = "data/volumes.h5", "data/phased.h5"


def volume_vs_z_figure(phased: pd.DataFrame, truth: pd.DataFrame | None) -> go.Figure:
    """Phased particle volume along z_1 (Fig. 5D), with the simulation truth when it exists.

    phased : results/volumes.parquet (z_1, particle_volume_nm3[, converged])
    truth : results/volumes_truth.parquet (z_1, true_volume_nm3, t_hat[, members_volume_nm3,
        members_melt, members_size]), or None / empty.  Two truth lines: V at the matched melt t̂
        (nominal size), and the mean true volume of the particles the VAE put at each z (the
        member frames of the averages nearest it: their own melt and size)
    """
    vt = phased.sort_values("z_1")
    fig = go.Figure()
    conv = vt["converged"].astype(bool) if "converged" in vt else pd.Series(True, index=vt.index)
    fig.add_trace(go.Scatter(x=vt["z_1"], y=vt["particle_volume_nm3"], mode="lines+markers", name="phased",
                             marker=dict(symbol=np.where(conv, "circle", "x"), size=8, color="#4C78A8")))
    if truth is not None and len(truth) and {"z_1", "true_volume_nm3"} <= set(truth.columns):
        tt = truth.sort_values("z_1")
        fig.add_trace(go.Scatter(x=tt["z_1"], y=tt["true_volume_nm3"], mode="lines", name="truth V(t̂)",
                                 line=dict(color="#E45756", dash="dash"),
                                 text=[f"t̂ = {t:.2f}" for t in tt["t_hat"]] if "t_hat" in tt else None))
        if "members_volume_nm3" in tt and tt["members_volume_nm3"].notna().any():
            fig.add_trace(go.Scatter(
                x=tt["z_1"], y=tt["members_volume_nm3"], mode="lines", name="truth: the particles at z",
                line=dict(color="#54A24B", dash="dot"),
                text=[f"members' melt {m:.2f}, size {s:.3f}" for m, s in zip(tt["members_melt"], tt["members_size"])]
                if {"members_melt", "members_size"} <= set(tt.columns) else None))
    fig.update_layout(title="Particle volume along z (Fig. 5D; × = phasing did not converge)",
                      xaxis_title="z_1", yaxis_title="volume (nm³)", height=320, margin=dict(t=50, b=40),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def frame_text() -> str:
    """The (u, v) display axes of every direction, as text."""
    def vec(a) -> str:
        return "(" + ", ".join(f"{x:+.2f}" for x in a) + ")"
    return "; ".join(f"{name}: u = {vec(frame_for(d)[0])}, v = {vec(frame_for(d)[1])}"
                     for name, d in DIRECTIONS.items())


def safe(load, what: str):
    """Run a loader; a corrupt file becomes a message naming it, not a traceback."""
    try:
        return load()
    except Exception as exc:  # h5py/pyarrow raise many types for damaged files
        st.error(f"Could not read {what}: {exc.__class__.__name__}: {exc}. Re-run the stage that writes it.")
        st.stop()


table = safe(lambda: averages_table("z_1", "vae", ("embed", "orient", "classify2d")), "the VAE latents")
if table is None:
    missing("vae", "results/parts/vae.parquet")
    st.stop()
zcols = sorted([c for c in table.columns if c.startswith("z_") and not c.startswith("z_logvar")])
trained = table["vae_trained"].astype(bool) if "vae_trained" in table else pd.Series(True, index=table.index)

c1, c2, c3, c4 = st.columns(4)
c1.metric("averages encoded", f"{len(table):,}")
c2.metric("trained on", f"{int(trained.sum()):,}")
c3.metric("latent dimension", len(zcols))
blur = vae_class_blur()
c4.metric("class blur", "—" if not blur else f"{blur[0]:.1f}° / {blur[1]:.1f}°",
          help="The orientation spread each class average was rendered with in the VAE's loss: the mean of "
               "slices at ± the first turn about the detector axes (out of plane) and ± the second about the "
               "beam (in plane); vae.class_blur_deg, auto = measured by the orient stage.")

left, right = st.columns(2)
if len(zcols) == 1:
    hist = go.Figure()
    hist.add_trace(go.Histogram(x=table.loc[trained, "z_1"], nbinsx=40, name="trained", marker_color="#4C78A8"))
    if (~trained).any():
        hist.add_trace(go.Histogram(x=table.loc[~trained, "z_1"], nbinsx=40, name="not selected",
                                    marker_color="#BBBBBB"))
    hist.update_layout(barmode="overlay", title="Latent z (Fig. 5B)", xaxis_title="z", yaxis_title="averages",
                       height=360, margin=dict(t=50, b=40))
else:
    hist = px.scatter(table, x="z_1", y="z_2", color="pc_2" if "pc_2" in table else None, opacity=0.8,
                      title="Latent space (Fig. 6A)")
    hist.update_layout(height=360, margin=dict(t=50, b=40))
weights = table["n_frames"].to_numpy(np.float64) if "n_frames" in table else None
try:
    latent_density = density.weighted_density(table[zcols[:2]].to_numpy(np.float64), weights)
except ValueError as exc:
    latent_density, density_note = None, f"No latent density: {exc}."
else:
    density_note = latent_density.caption(zcols[:2], weights is not None)
if latent_density is not None and len(zcols) == 1:
    hist.add_trace(go.Scatter(x=latent_density.axes[0], y=latent_density.energy, yaxis="y2",
                              mode="lines", name="−log density", line=dict(color="#333333")))
    hist.update_layout(yaxis2=dict(title="−log ρ/ρmax", overlaying="y", side="right",
                                   showgrid=False),
                       legend=dict(orientation="h", y=-0.25))
elif latent_density is not None:
    hist.add_trace(energy_contours(latent_density))
left.plotly_chart(hist, width="stretch", key="latent_hist")
left.caption(density_note)
if "pc_2" in table.columns:
    color = table["gain"] if "gain" in table.columns else None
    sc = go.Figure(go.Scattergl(x=table["z_1"], y=table["pc_2"], mode="markers",
                                marker=dict(size=5, color=color, colorscale="Viridis",
                                            colorbar=dict(title="gain") if color is not None else None),
                                customdata=table[["average_id"]].to_numpy(),
                                text=[f"average {a}" for a in table["average_id"]]))
    sc.update_layout(title="z against CLPCA-2, coloured by gain (Fig. 5A)", xaxis_title="z_1",
                     yaxis_title="CLPCA-2", height=360, margin=dict(t=50, b=40))
    sc.update_layout(dragmode="select")
    with right:
        event = st.plotly_chart(sc, width="stretch", key="z_vs_pc2", on_select="rerun",
                                selection_mode=("box", "lasso"))
    latent_region = selections.ids_from_event(((event or {}).get("selection") or {}).get("points", []))
    if latent_region:
        with right.form("latent_region"):
            st.write(f"{len(latent_region)} averages selected in the latent")
            region_name = st.text_input("selection name", key="latent_region_name")
            if st.form_submit_button("Save as averages selection"):
                ok, out = attempt(selections.save, workspace(), region_name, latent_region,
                                  doing="Cannot save the selection")
                if ok:
                    st.success(f"Saved selections/{out.name}. The pipeline trains on it only "
                               f"with `{actions.use_selection_command(out.stem)}` (or set it on "
                               "the Selections page).")
else:
    right.info("No CLPCA coordinates yet — run `dvc repro embed`.")

meta = safe(lambda: read_h5(VOLUMES, ["volumes/z", "volumes/source"]), VOLUMES)
if meta is None:
    missing("volumes", VOLUMES)
    st.stop()
zs = np.asarray(meta["volumes/z"], dtype=np.float64)
sources = [s.decode() if isinstance(s, bytes) else str(s) for s in meta["volumes/source"]]

@st.cache_data(max_entries=32, show_spinner=False)
def volume_figures(key: tuple, index: int, dq3: float | None,
                   iso_edge: int = 32) -> tuple[go.Figure, go.Figure, int]:
    """(isosurface figure, central-sections figure, edge in voxels) of volume ``index``;
    the isosurface is drawn on a block-mean grid of at most ``iso_edge`` voxels per edge
    (the browser's isosurface cost grows with the voxel count: 32³ keeps a slider step
    near 1 s in software WebGL).  Every revisit of a volume is a cache hit."""
    volume = loaders.read_h5(key[0], ["volumes/intensity"], index=[index])["volumes/intensity"][0]
    volume = volume.astype(np.float64)
    seen_voxels = loaders.read_h5(key[0], ["volumes/observed"])["volumes/observed"].astype(bool)
    masked = np.where(seen_voxels, volume, 0.0)
    shown, factor = block_mean(masked, iso_edge)
    q8, _, _ = quantize_uint8(log_display(shown, decades=3.0))
    n = shown.shape[0]
    axis = np.arange(n, dtype=np.uint8)
    X, Y, Z = np.meshgrid(axis, axis, axis, indexing="ij")
    iso = go.Figure(go.Isosurface(x=X.ravel(), y=Y.ravel(), z=Z.ravel(), value=q8.ravel(), isomin=96, isomax=255,
                                  surface_count=3, caps=dict(x_show=False, y_show=False, z_show=False),
                                  colorscale="Viridis", opacity=0.35, showscale=False,
                                  flatshading=True))  # smooth shading costs ~3x in software WebGL
    iso.update_layout(height=480, margin=dict(l=0, r=0, t=30, b=0),
                      title=f"log intensity isosurfaces ({n}³{', ' + str(factor) + '× block mean' if factor > 1 else ''})",
                      scene=dict(xaxis_title="qx", yaxis_title="qy", zaxis_title="qz"))
    # a section pixel counts as observed when the interpolated observed-mask is >= 1/2
    panels = [np.where(central_section(seen_voxels.astype(np.float64), d) >= 0.5,
                       log_display(central_section(masked, d), decades=4.0), np.nan)
              for d in DIRECTIONS.values()]
    sec_fig = image_grid(panels, [f"{name} central section" for name in DIRECTIONS], dq3, cols=1,
                         axis_names=("q·u", "q·v"), colorbar="log10 I", panel_height=230)
    return iso, sec_fig, volume.shape[0]


@st.cache_data(max_entries=32, show_spinner=False)
def projection_figure(key: tuple, index: int, dx: float | None) -> go.Figure:
    """The three projections of phased density ``index`` (cached like :func:`volume_figures`)."""
    dens = loaders.read_h5(key[0], ["phased/density"], index=[index])["phased/density"][0]
    return image_grid([projection(dens, d) for d in DIRECTIONS.values()],
                      [f"projection along {name}" for name in DIRECTIONS], dx, space="real",
                      cols=3, colorscale="gray", colorbar="density", axis_names=("x·u", "x·v"),
                      panel_height=280)


ISO_DETAIL = {"fast (≤ 32³)": 32, "full (≤ 64³)": 64}


@st.fragment
def volume_viewer():
    """One volume of the series and what belongs to it: the latent slider, the 3D view and
    central sections, the averages nearest to it, its phased shape, marking its point.
    A fragment: moving the slider reruns only this part of the page, not the latent
    plots and densities above it (the slider step is what a reviewer does most)."""
    st.subheader("A volume along the latent coordinate")
    if zs.shape[1] == 1:
        labels = [f"{i}: z = {z[0]:+.2f}" + ("" if s in ("line", "grid") else f" ({s})")
                  for i, (z, s) in enumerate(zip(zs, sources))]
        pick = st.select_slider("latent point", options=list(range(len(zs))), format_func=lambda i: labels[i],
                                key="volume_index")
    else:
        a1, a2 = st.columns(2)
        u1 = np.unique(zs[:, 0].round(6))
        u2 = np.unique(zs[:, 1].round(6))
        v1 = a1.select_slider("z_1", options=list(u1), format_func=lambda v: f"{v:+.2f}", key="pick_z1")
        v2 = a2.select_slider("z_2", options=list(u2), format_func=lambda v: f"{v:+.2f}", key="pick_z2")
        pick = int(np.argmin((zs[:, 0] - v1) ** 2 + (zs[:, 1] - v2) ** 2))
    pick = int(pick)
    detail = st.radio("3D view", list(ISO_DETAIL), horizontal=True, key="iso_detail",
                      help="The isosurface is drawn on a block-mean grid of at most this many voxels; "
                           "the sections always use every voxel. 'full' makes each slider step slower.")
    iso, sec_fig, size = safe(lambda: volume_figures(file_key(path(VOLUMES)), pick, grid_step(VOLUMES, "/"),
                                                     ISO_DETAIL[detail]), VOLUMES)
    st.caption(f"volume {pick} of {len(zs)} at z = {np.array2string(zs[pick], precision=2)} — {size}³ voxels, "
               f"source: {sources[pick]}")

    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(iso, width="stretch", key="volume3d")
    with right:
        st.plotly_chart(sec_fig, width="stretch", key="sections")
        st.caption("Central sections through q = 0 perpendicular to each direction n; x along u, "
                   "y along v of the right-handed frame (u, v, n): " + frame_text() +
                   ". Grey: never observed (outside the measured q range or behind the beam stop).")

    st.subheader("Which averages made this volume")
    if zs.shape[1] == len(drill.latent_columns(table)):
        k_near = st.slider("nearest averages in latent space", 1, 24, 8, key="k_near")
        near = drill.nearest_in_latent(table, zs[pick], k_near)
        show = [c for c in ("average_id", "latent_distance", "n_frames", "cluster", "pc_1", "pc_2",
                            "gain") if c in near]
        n1, n2 = st.columns([2, 3])
        n1.dataframe(near[show].round(4), hide_index=True, width="stretch")
        frames_table = read_table("results/frames.parquet")
        if frames_table is None:
            n2.info("No results/frames.parquet: member frames need `dvc repro classify2d`.")
        else:
            members = frames_table[frames_table["average_id"].isin(near["average_id"])]
            n2.metric("member frames of these averages", f"{len(members):,}")
            sample = members.sort_values("posterior_max", ascending=False).head(200) \
                if "posterior_max" in members else members.head(200)
            n2.dataframe(sample[[c for c in ("frame_id", "average_id", "rotation_deg", "posterior_max")
                                 if c in sample]], hide_index=True, width="stretch", height=260)
            n2.caption("Pick one of these averages on the Landscape page to see its frames, "
                       "turned into the average's orientation.")

    st.subheader("Real-space shape of this volume (phase retrieval)")
    phased_meta = safe(lambda: read_h5(PHASED, ["phased/z"]), PHASED)
    if phased_meta is None:
        missing("phase", PHASED)
    elif pick < len(phased_meta["phased/z"]):
        proj_fig = safe(lambda: projection_figure(file_key(path(PHASED)), pick,
                                                  grid_step(PHASED, "phased", "dx_nm")), PHASED)
        st.plotly_chart(proj_fig, width="stretch", key="projections")

    st.subheader("Mark a latent point for the volumes stage")
    with st.form("latent_point"):
        name = st.text_input("selection name (letters, digits, . _ -)", key="latent_name")
        z_text = st.text_input("z (comma-separated, one value per latent dimension)",
                               value=", ".join(f"{v:.3f}" for v in zs[pick]), key="latent_z")
        note = st.text_input("note", key="latent_note")
        if st.form_submit_button("Save selection"):
            from spicompute.landscape.selections import write_selection

            def save_point():
                point = [float(v) for v in z_text.split(",")]
                if len(point) != zs.shape[1]:
                    raise ValueError(f"need {zs.shape[1]} values, got {len(point)}")
                if not np.all(np.isfinite(point)):
                    raise ValueError(f"z must be finite numbers, got {z_text!r}")
                return write_selection(selections.folder(workspace()), name, kind="latent_points",
                                       points=[point], note=note)

            ok, saved = attempt(save_point, doing="Cannot save the latent point")
            if ok:
                st.success(f"Saved selections/{saved.name} — `dvc repro volumes` adds its volume.")


volume_viewer()

st.subheader("Real-space shapes along the latent")
phased_meta = safe(lambda: read_h5(PHASED, ["phased/z"]), PHASED)
if phased_meta is not None:
    vt = safe(lambda: read_table("results/volumes.parquet"), "results/volumes.parquet")
    if vt is not None and "particle_volume_nm3" in vt.columns and "z_1" in vt.columns:
        truth_rows = safe(lambda: read_table("results/volumes_truth.parquet"), "results/volumes_truth.parquet")
        st.plotly_chart(volume_vs_z_figure(vt, truth_rows), width="stretch", key="volume_vs_z")

    shapes2d = safe(lambda: read_h5(PHASED, ["averages2d/density", "averages2d/average_id"]), PHASED)
    if shapes2d is not None and "averages2d/density" in shapes2d:
        st.subheader("2D phasing of class averages (Fig. 1B)")
        dens2d, ids2d = shapes2d["averages2d/density"], shapes2d["averages2d/average_id"]
        n2d = min(6, len(ids2d))
        fig = image_grid(np.asarray(dens2d[:n2d]), [f"average {int(i)}" for i in ids2d[:n2d]],
                         grid_step(PHASED, "averages2d", "dx_nm"), space="real", cols=6,
                         colorscale="gray", colorbar=None, axis_names=("x", "y"),
                         shared_scale=False, panel_height=200)
        st.plotly_chart(fig, width="stretch", key="phased2d")

st.subheader("Export for ChimeraX and slides")
if current_rev() != "workspace":
    st.info("Exports are written into the workspace: switch the run to `workspace`.")
else:
    with st.form("export_volumes"):
        export_name = st.text_input("export folder name (exports/<name>/)", value="volumes",
                                    key="export_name")
        do_export = st.form_submit_button("Export MRC + ChimeraX + GIF")
    if do_export:
        ok, out = attempt(actions.export_volumes, workspace(), export_name,
                          doing="Cannot export the volumes")
        if ok:
            files = sorted(p.name for p in out.iterdir())
            st.success(f"Wrote {len(files)} files to `exports/{out.name}/`: MRC volumes (voxel "
                       "size in Å in the header), `series.cxc` (open it in ChimeraX: "
                       f"`open exports/{out.name}/series.cxc`), `series.gif`, `index.csv`.")

    st.subheader("Trajectory between two points of the latent")
    d_latent = zs.shape[1]
    with st.form("trajectory"):
        t_name = st.text_input("name (trajectories/<name>.h5)", value="path", key="traj_name")
        by = st.radio("ends", ["two averages", "two latent points"], horizontal=True, key="traj_by")
        e1, e2 = st.columns(2)
        ids_sorted = sorted(int(i) for i in table["average_id"])
        a_start = e1.selectbox("start average", ids_sorted, index=0, key="traj_a0")
        a_end = e2.selectbox("end average", ids_sorted, index=len(ids_sorted) - 1, key="traj_a1")
        z_start = e1.text_input("start z (comma-separated)", value=", ".join(f"{v:.3f}" for v in zs[0]),
                                key="traj_z0")
        z_end = e2.text_input("end z (comma-separated)", value=", ".join(f"{v:.3f}" for v in zs[-1]),
                              key="traj_z1")
        n_points = st.slider("volumes along the path", 2, 60, 12, key="traj_n")
        path_kind = st.radio("path", ["straight", "graph"] if d_latent >= 2 else ["straight"],
                             horizontal=True, key="traj_path",
                             help="graph: through the trained averages' nearest-neighbour graph "
                                  "(stays where data are; d >= 2)")
        also_export = st.checkbox("also export it (MRC + ChimeraX + GIF)", value=True,
                                  key="traj_export")
        do_traj = st.form_submit_button("Decode trajectory")
    if do_traj:
        ends = dict(start_average=a_start, end_average=a_end) if by == "two averages" else \
            dict(start=z_start, end=z_end)
        ok, out = attempt(actions.trajectory, workspace(), t_name, n_points=n_points,
                          path=path_kind, doing="Cannot decode the trajectory", **ends)
        if ok:
            msg = f"Wrote `trajectories/{out.name}` ({n_points} volumes)"
            if also_export:
                ok2, folder = attempt(actions.export_volumes, workspace(), f"trajectory_{out.stem}",
                                      volumes=f"trajectories/{out.name}", phased="",
                                      doing="Cannot export the trajectory")
                if ok2:
                    msg += f" and `exports/{folder.name}/` (MRC, series.cxc, series.gif)"
            st.success(msg + ".")

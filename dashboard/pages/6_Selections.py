"""Selections: the named subsets of averages the pipeline reads (selections/*.json).

List, inspect, rename, delete, and export as frame ids (CSV) for other tools.
Selections are made on the Landscape page (box/lasso) and on the Volumes page.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import actions
from dashboard.common import (attempt, averages_table, current_rev, plain, read_table, run_picker,
                              workspace)
from dashboard.data import selections
from spicompute.errors import InputError

st.set_page_config(page_title="Selections · SPI Landscape", layout="wide")
st.title("Selections")
run_picker()

FORMAT_LABELS = {"cxi": "CXI (spicompute frames reads it)", "dragonfly": "Dragonfly photons + detector",
                 "csv": "CSV of frame ids (+ EuXFEL run ids)"}

folder = selections.folder(workspace())
files = sorted(folder.glob("*.json")) if folder.is_dir() else []
docs, broken = [], []
for f in files:
    try:
        docs.append(selections.read_selection(f))
    except InputError as exc:
        broken.append(str(exc))
for msg in broken:
    st.warning("Ignoring a selection file: " + plain(msg))
if not docs:
    st.info("No selections yet: box- or lasso-select a region on the Landscape page and name it.")
    st.stop()

listing = pd.DataFrame([{
    "name": d["name"], "kind": d["kind"],
    "size": len(d.get("average_ids", d.get("points", []))) if "rule" not in d else None,
    "rule": str(d.get("rule", "")), "created": d["created_at"], "note": d["note"]} for d in docs])
st.dataframe(listing, hide_index=True, width="stretch")
st.caption(f"Folder: {folder}. The select stage reads the one `kind: averages` file named by "
           "`select.file` when `select.mode: file` (see below); the volumes stage reads every "
           "`kind: latent_points` file.")

names = [d["name"] for d in docs]
# the selection chosen before this run was deleted or renamed meanwhile (another tab, a colleague):
# say so, and act on nothing in this run -- the forms below would otherwise apply to another selection
vanished = st.session_state.get("selection")
vanished = vanished if vanished is not None and vanished not in names else None
if vanished:
    st.warning(f"Selection {plain(vanished)} no longer exists (deleted or renamed in another tab or by a "
               "colleague); nothing was changed. The list below is current.")
name = st.selectbox("selection", names, key="selection")
doc = docs[names.index(name)]
st.text(f"note: {doc['note']}" if doc["note"] else "no note")  # user text, shown as text

avg = averages_table("average_id", "classify2d", ("embed",))
frames = read_table("results/frames.parquet")
usable = False  # the selection's frames are known in this run: offer exporting and using it
if doc["kind"] == "averages":
    if avg is None or frames is None:
        st.info("Frame ids need results/parts/classify2d.parquet and results/frames.parquet "
                "(`dvc repro classify2d`).")
    else:
        try:
            ids = selections.frame_ids(doc, avg, frames)
        except InputError as exc:
            st.error(plain(exc))
        else:
            usable = True
            st.metric("frames in the selected averages", f"{len(ids):,}")
            st.download_button("Export frame ids (CSV)", ids.to_csv(index=False),
                               file_name=f"{doc['name']}_frame_ids.csv", mime="text/csv",
                               key="export")
    if not usable:
        pass
    elif current_rev() != "workspace":
        st.info("Exports and params changes are made in the workspace: switch the run to "
                "`workspace`.")
    else:
        st.subheader("Export the member frames")
        with st.form("export_frames"):
            fmt = st.radio("format", list(FORMAT_LABELS), format_func=FORMAT_LABELS.get,
                           horizontal=True, key="frames_format")
            go_export = st.form_submit_button("Export frames")
        if go_export:
            ok, written = attempt(actions.export_selection_frames, workspace(), name, fmt,
                                  doing=f"Cannot export the frames of {name}")
            if ok:
                st.success("Wrote " + ", ".join(f"`{p.relative_to(workspace())}`" for p in written)
                           + f" (same as `spicompute export-frames --selection {name} --format "
                           f"{fmt}`). The `.frames.csv` maps the exported order to frame_id"
                           " (and run, train_id, pulse_id for EuXFEL input).")

        st.subheader("Train the VAE on this selection")
        current = selections.params_select(workspace())
        st.markdown(
            "The `select` stage uses a selection only when params.yaml says so: "
            f"`select.mode: file` and `select.file: selections/{name}.json` "
            f"(now: `mode: {current.get('mode', '?')}`, `file: {current.get('file', '') or chr(39) * 2}`). "
            "With any other mode `dvc repro` re-runs `select` when a selection changes but "
            "ignores it. Either run it as an experiment (params.yaml unchanged):")
        st.code(actions.use_selection_command(name), language="bash")
        st.markdown("or set it in params.yaml and run `dvc repro`:")
        if st.button(f"Set select.mode: file, select.file: selections/{name}.json in params.yaml",
                     key="use_selection"):
            ok, _ = attempt(actions.use_selection_in_params, workspace(), name,
                            doing="Cannot change params.yaml")
            if ok:
                st.success(f"params.yaml now selects selections/{name}.json: `dvc repro` re-runs "
                           "select, vae and the stages after them on it.")

c1, c2 = st.columns(2)
with c1.form("rename"):
    new = st.text_input("new name", key="new_name")
    if st.form_submit_button("Rename") and not vanished:
        if attempt(selections.rename, workspace(), name, new, doing=f"Cannot rename {name}")[0]:
            st.success(f"Renamed to {new}.")
            st.rerun()
with c2.form("delete"):
    sure = st.checkbox(f"delete {name}", key="confirm_delete")
    if st.form_submit_button("Delete") and sure and not vanished:
        if attempt(selections.delete, workspace(), name, doing=f"Cannot delete {name}")[0]:
            st.rerun()

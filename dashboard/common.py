"""Streamlit glue for the pages: the chosen run, cached loaders, messages.

All data access goes through :mod:`dashboard.data` (no Streamlit there); this
module adds caching keyed on file identity (path, mtime, size — a revision's
files live under a folder named by its sha, so they are immutable), the run
picker shared by every page (``st.session_state["run_rev"]``), and turning a
missing or corrupt output into a message instead of a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.data import OutputCorrupt, OutputError, OutputMissing, file_identity, loaders
from dashboard.data import runs as runs_mod
from dashboard.data import tables

REPO_ROOT = Path(__file__).resolve().parent.parent


def workspace() -> Path:
    """The project whose outputs (and DVC experiments) the dashboard shows."""
    return Path(os.environ.get("SPI_WORKSPACE", REPO_ROOT))


def current_rev() -> str:
    return st.session_state.get("run_rev", runs_mod.WORKSPACE)


def run_root(rev: str | None = None) -> Path:
    """Local folder holding the outputs of the chosen run (or of ``rev``)."""
    return runs_mod.run_dir(workspace(), rev or current_rev())


def path(relative: str, rev: str | None = None) -> Path:
    """Local path of an output of the chosen run, or of ``rev`` (fetched from the DVC
    cache for a revision)."""
    return runs_mod.materialize(workspace(), rev or current_rev(), relative)


def file_key(p: Path) -> tuple:
    return file_identity(p)


@st.cache_data(ttl=120, max_entries=4, show_spinner="Reading DVC experiments…")
def list_runs(repo: str, num: int = 5) -> list[runs_mod.Run]:
    try:
        return runs_mod.list_runs(repo, num)
    except Exception:  # not a git repo, a broken .dvc: the workspace alone
        return [runs_mod.Run("workspace", runs_mod.WORKSPACE, "workspace")]


def _remember_run() -> None:
    st.session_state["run_rev"] = st.session_state["_run_picker"]


def run_picker() -> runs_mod.Run:
    """Sidebar choice of the run every page browses (kept across pages)."""
    available = list_runs(str(workspace()))
    revs = [r.rev for r in available]
    if current_rev() not in revs:
        st.session_state["run_rev"] = runs_mod.WORKSPACE
    state = {r.rev: runs_mod.availability(str(workspace()), r) for r in available}
    labels = {r.rev: f"{r.label} · {r.kind}" + ("" if state[r.rev] == runs_mod.HERE
                                                  else f" · outputs {state[r.rev]}")
              for r in available}
    st.session_state["_run_picker"] = current_rev()
    st.sidebar.selectbox("run", revs, key="_run_picker", format_func=labels.get,
                         on_change=_remember_run,
                         help="The workspace, each commit with results and each DVC experiment.")
    run = available[revs.index(current_rev())]
    if run.rev != runs_mod.WORKSPACE:
        st.sidebar.caption(f"Browsing {run.kind} {run.rev[:10]} (outputs from the DVC cache).")
    if state[run.rev] != runs_mod.HERE:
        st.sidebar.warning(f"The outputs of this run are {state[run.rev]}. Bring them with "
                           f"`{runs_mod.bring_command(run, state[run.rev])}`.")
    return run


def page_header(title: str, page_title: str | None = None) -> runs_mod.Run:
    """set_page_config, the title and the run picker: the first lines of every page."""
    st.set_page_config(page_title=f"{page_title or title} · SPI Landscape", layout="wide")
    st.title(title)
    return run_picker()


@st.cache_data(ttl=30, max_entries=64, show_spinner=False)
def params_of(repo: str, rev: str) -> dict:
    return runs_mod.params_of(repo, rev)


@st.cache_data(ttl=30, max_entries=64, show_spinner=False)
def metrics_of(repo: str, rev: str) -> dict:
    return runs_mod.metrics_of(repo, rev)


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def plain(text: str) -> str:
    """User-supplied text made inert for Streamlit's markdown (messages, titles):
    every markdown/HTML punctuation character is backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", str(text))


def show_error(exc: OutputError) -> None:
    """A one-line message for an output that cannot be shown, then stop the page."""
    if isinstance(exc, OutputMissing):
        st.info(f"No `{Path(exc.path).name}` in this run yet ({exc.path}): run `dvc repro`.")
    else:
        st.error(f"Cannot read {exc.path}: {exc.problem}. Re-run the stage that writes it "
                 "(`dvc repro -f <stage>`).")
    st.stop()


def attempt(action, *args, doing: str, **kwargs) -> tuple[bool, object]:
    """(True, ``action(*args, **kwargs)``), or (False, None) after a message that says what to do.

    For every user action that writes (save, rename, delete a selection): the
    project's own errors and the file races of several tabs or users become
    an ``st.error`` line, never the generic error box.
    """
    from spicompute.errors import InputError, ParameterError
    from spicompute.errors import OutputError as CannotWrite

    try:
        return True, action(*args, **kwargs)
    except FileExistsError as exc:
        st.error(f"{doing}: {plain(exc)}. Choose another name.")
    except FileNotFoundError as exc:
        name = Path(exc.filename).name if getattr(exc, "filename", None) else plain(exc)
        st.error(f"{doing}: {plain(name)} no longer exists (changed in another tab or by a colleague?). "
                 "Reload the page to see the current files.")
    except (CannotWrite, PermissionError) as exc:
        st.error(f"{doing}: {plain(' '.join(str(exc).split()))}. The folder is not writable for the "
                 "dashboard: ask its owner, or run the dashboard on a workspace you can write to.")
    except (InputError, ParameterError, ValueError) as exc:
        st.error(f"{doing}: {plain(' '.join(str(exc).split()))}. Correct it and try again.")
    return False, None


@st.cache_data(max_entries=32, show_spinner=False)
def _read_parquet(key: tuple) -> pd.DataFrame:
    return loaders.read_table(key[0])


def read_table(relative: str, rev: str | None = None) -> pd.DataFrame | None:
    """A Parquet table of the run; None when absent; a corrupt file stops the page."""
    p = path(relative, rev)
    try:
        return _read_parquet(file_key(p))
    except OutputMissing:
        return None
    except OutputCorrupt as exc:
        show_error(exc)


@st.cache_data(max_entries=32, show_spinner=False)
def _read_h5(key: tuple, datasets: tuple[str, ...], index: tuple | None) -> dict:
    return loaders.read_h5(key[0], datasets, index=index, optional=datasets)


def read_h5(relative: str, datasets: list[str], index=None, rev: str | None = None) -> dict | None:
    """Arrays from an HDF5 file of the run (optionally rows ``index``, returned sorted);
    None when absent; a corrupt file stops the page with a message."""
    p = path(relative, rev)
    idx = None if index is None else tuple(int(i) for i in np.sort(np.asarray(index)))
    try:
        return _read_h5(file_key(p), tuple(datasets), idx)
    except OutputMissing:
        return None
    except OutputCorrupt as exc:
        show_error(exc)


@st.cache_data(max_entries=32, show_spinner=False)
def _read_json(key: tuple) -> dict:
    return loaders.read_json(key[0])


def read_json(relative: str) -> dict:
    """A metrics JSON of the run; {} when absent; invalid JSON shows a warning and gives {}."""
    p = path(relative)
    try:
        return _read_json(file_key(p))
    except OutputMissing:
        return {}
    except OutputCorrupt as exc:
        st.warning(f"Ignoring {exc.path}: {exc.problem}.")
        return {}


def vae_class_blur() -> list[float] | None:
    """[out of plane, in plane] degrees the VAE was trained with (metrics/vae.json), or None."""
    blur = read_json("metrics/vae.json").get("class_blur_deg")
    if isinstance(blur, (int, float)):   # one number: the same turn about every axis
        return [float(blur), float(blur)]
    return [float(v) for v in blur] if blur else None


def missing(stage: str, output: str) -> None:
    """Friendly notice for a page whose stage has not produced its output yet (in the
    workspace), or whose output a browsed revision lacks or has not in the local cache."""
    rev = current_rev()
    if rev == runs_mod.WORKSPACE:
        st.info(f"No `{output}` yet — run `dvc repro {stage}` (or `make demo`).")
        return
    run = next((r for r in list_runs(str(workspace())) if r.rev == rev), None)
    first = output.split(" and ")[0].split(",")[0].strip()
    state = runs_mod.readable(str(workspace()), rev, first)
    kind = run.kind if run else "commit"
    if run is None:
        run = runs_mod.Run(rev[:7], rev, kind)
    st.info(f"`{output}` is {state} for this {kind} ({rev[:7]}): bring it with "
            f"`{runs_mod.bring_command(run, state) or f'dvc repro {stage}'}`.")


def averages_table(needs: str, part: str, extra_parts: tuple[str, ...] = (),
                   rev: str | None = None) -> pd.DataFrame | None:
    """The per-average table a page needs (see :func:`dashboard.data.tables.averages_table`);
    None when the stage has not run, a corrupt file stops the page with a message."""
    root = run_root(rev)
    for rel in ["results/averages.parquet", f"results/parts/{part}.parquet"] + \
            [f"results/parts/{p}.parquet" for p in extra_parts]:
        path(rel, rev)  # fetch a revision's files before reading the folder
    keys = tuple(file_key(root / "results" / "parts" / f"{p}.parquet") for p in (part,) + extra_parts)
    try:
        return _averages_table(str(root), needs, part, tuple(extra_parts),
                               file_key(root / "results" / "averages.parquet"), keys)
    except OutputMissing:
        return None
    except OutputCorrupt as exc:
        show_error(exc)


@st.cache_data(max_entries=16, show_spinner=False)
def _averages_table(root: str, needs: str, part: str, extra: tuple, key_joined, key_parts) -> pd.DataFrame:
    return tables.averages_table(root, needs, part, extra)


def log_image(images: np.ndarray, valid: np.ndarray, decades: float = 4.0) -> np.ndarray:
    """log10 of intensities for display, NaN where not observed.

    The floor is ``decades`` orders of magnitude below the 99.9th percentile of
    the observed values: EMC models carry values down to 1e-40 in unvisited
    corners, which would otherwise stretch the colour scale over 40 decades.
    """
    from spicompute.views import log_display

    images = np.where(valid, np.asarray(images, dtype=np.float64), 0.0)
    return np.where(valid, log_display(images, decades), np.nan)


@st.cache_data(max_entries=32, show_spinner=False)
def _h5_attrs(key: tuple, group: str) -> dict:
    import h5py

    try:
        with h5py.File(key[0], "r") as h5:
            return {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v)
                    for k, v in h5[group].attrs.items()} if group in h5 else {}
    except OSError:
        return {}


def h5_attrs(relative: str, group: str = "/", rev: str | None = None) -> dict:
    """Attributes of one group of an HDF5 file of the run ({} when the file or group is
    absent or unreadable: the attributes only label axes)."""
    p = path(relative, rev)
    return _h5_attrs(file_key(p), group) if p.exists() else {}


def grid_step(relative: str, group: str, name: str = "dq_nm",
              rev: str | None = None) -> float | None:
    """A positive finite grid spacing attribute (rad/nm or nm), or None (axes then in pixels)."""
    value = h5_attrs(relative, group, rev).get(name)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None

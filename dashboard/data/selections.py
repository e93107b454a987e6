"""Selections written back into the pipeline (format: :mod:`spicompute.landscape.selections`).

The dashboard turns a box/lasso selection on a scatter into a list of
``average_id`` and writes ``selections/<name>.json`` with
:func:`spicompute.landscape.selections.write_selection`; the ``select`` stage depends on
``selections/``, so ``dvc status`` reports it changed and ``dvc repro`` picks
it up.  Names are validated by the same module (never joined blindly).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd

from spicompute.landscape.selections import (
    list_selections,
    read_selection,
    selection_path,
    validate_name,
    write_selection,
)

__all__ = ["ids_from_event", "save", "rename", "delete", "frame_ids", "frame_ids_csv",
           "list_selections", "read_selection", "validate_name", "folder"]


def folder(root: str | Path) -> Path:
    """The selections folder of a workspace."""
    return Path(root) / "selections"


def ids_from_event(points: list[dict]) -> list[int]:
    """average_ids of the points of a plotly selection event (``customdata[0]``), sorted."""
    ids = set()
    for p in points or []:
        custom = p.get("customdata")
        if custom is None:
            continue
        value = custom[0] if isinstance(custom, (list, tuple)) else custom
        try:
            ids.add(int(value))
        except (TypeError, ValueError):
            continue
    return sorted(ids)


def ids_in_box(table: pd.DataFrame, x: str, y: str, x_range, y_range) -> list[int]:
    """average_ids with x in x_range and y in y_range (inclusive), sorted."""
    xs, ys = table[x].to_numpy(), table[y].to_numpy()
    keep = (xs >= min(x_range)) & (xs <= max(x_range)) & (ys >= min(y_range)) & (ys <= max(y_range))
    return sorted(int(i) for i in table["average_id"].to_numpy()[keep])


def save(root: str | Path, name: str, average_ids, note: str = "", overwrite: bool = False) -> Path:
    """Write an averages selection; ValueError for a bad name or no ids."""
    ids = [int(i) for i in average_ids]
    if not ids:
        raise ValueError("the selection is empty: select some points first")
    return write_selection(folder(root), name, kind="averages", average_ids=ids, note=note,
                           overwrite=overwrite)


def delete(root: str | Path, name: str) -> None:
    selection_path(folder(root), name).unlink()


def rename(root: str | Path, old: str, new: str) -> Path:
    """Rename a selection (the file and its ``name`` field); FileExistsError if taken."""
    src = selection_path(folder(root), old)
    if not src.is_file():  # deleted or renamed in another tab meanwhile
        raise FileNotFoundError(errno.ENOENT, "selection file not found", str(src))
    sel = read_selection(src)
    dst = selection_path(folder(root), new)
    if dst.exists():
        raise FileExistsError(f"selection {new!r} exists")
    kwargs = {k: sel[k] for k in ("average_ids", "rule", "points") if k in sel}
    out = write_selection(folder(root), new, kind=sel["kind"], note=sel.get("note", ""), **kwargs)
    os.unlink(src)
    return out


def frame_ids(selection: dict, averages: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """Frames belonging to the selected averages: ``frame_id`` (+ ``input_id`` when present).

    averages: the per-average table (rules are evaluated on it); frames:
    results/frames.parquet.  One row per frame, sorted, no duplicates.  A selection
    naming averages this run does not have raises InputError (as the export does).
    """
    from spicompute.errors import InputError
    from spicompute.landscape.selections import members

    if "average_ids" in selection:
        unknown = np.setdiff1d(np.asarray(selection["average_ids"], np.int64),
                               averages["average_id"].to_numpy())
        if unknown.size:
            raise InputError(selection.get("name", "selection"), "average_ids",
                             f"{unknown.size} averages are not in this run "
                             f"(e.g. {int(unknown[0])}): made on another run?")
    ids = averages["average_id"].to_numpy()[members(averages, selection)]
    rows = frames[np.isin(frames["average_id"].to_numpy(), ids)]
    cols = ["frame_id"] + [c for c in ("input_id", "source_id") if c in frames.columns]
    return rows[cols].drop_duplicates("frame_id").sort_values("frame_id").reset_index(drop=True)


def frame_ids_csv(selection: dict, averages: pd.DataFrame, frames: pd.DataFrame) -> str:
    return frame_ids(selection, averages, frames).to_csv(index=False)


def params_select(root: str | Path) -> dict:
    """The ``select`` section of the workspace's params.yaml ({} when absent or unreadable)."""
    import yaml

    try:
        doc = yaml.safe_load((Path(root) / "params.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    section = doc.get("select") if isinstance(doc, dict) else None
    return section if isinstance(section, dict) else {}

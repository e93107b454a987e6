"""Which averages train the VAE: the select stage's choice drawn on the Landscape.

The ``select`` stage (default ``select.mode: family``) writes
``results/parts/select.parquet`` (``selected``, ``reason``, and in mode
family ``family``, ``family_seed``); the ``tables`` stage copies those
columns into ``results/averages.parquet``.  The Landscape page marks the
dropped averages; a box/lasso selection saved there and
``select.mode: file`` override the choice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def training_marks(table: pd.DataFrame) -> dict | None:
    """Masks over ``table`` rows: kept (selected), dropped, seed (cube end); None before select ran."""
    if "selected" not in table.columns:
        return None
    kept = table["selected"].fillna(False).to_numpy(bool)
    seed = table["family_seed"].fillna(False).to_numpy(bool) if "family_seed" in table.columns \
        else np.zeros(len(table), bool)
    return {"kept": kept, "dropped": ~kept, "seed": seed}


def training_caption(metrics: dict, marks: dict) -> str:
    """One sentence: the select mode, how many averages it keeps, and against truth when recorded."""
    mode = metrics.get("mode", "?")
    n_kept, n = int(marks["kept"].sum()), len(marks["kept"])
    text = (f"select.mode **{mode}** keeps {n_kept:,} of {n:,} averages for the VAE "
            f"(✕ = dropped{', ◆ = cube-end seed' if marks['seed'].any() else ''}).")
    purity, recall = metrics.get("family_purity"), metrics.get("family_recall")
    if isinstance(purity, (int, float)) and isinstance(recall, (int, float)):
        text += (f" Against the simulation truth: {purity:.1%} of the kept averages are cube–sphere family, "
                 f"{recall:.1%} of the family's usable averages are kept.")
    text += (" To override, box/lasso a region below, save it, and set `select.mode: file` with "
             "`select.file: selections/<name>.json`.")
    return text

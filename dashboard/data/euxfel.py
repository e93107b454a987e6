"""EuXFEL (AGIPD 1M) views of the frames stage's outputs, Streamlit-free.

* :func:`hit_rate_by_train` — hits / frames per train from ``results/hits.parquet``,
  optionally averaged over blocks of trains for long runs.
* :func:`lit_histogram` — the lit-pixel histogram CSV written by the frames stage.
* :func:`is_agipd_frames` / :func:`frames_geometry_path` — whether a frames file holds the
  unassembled AGIPD 1M layout, and which ``.geom`` made it (from its provenance).
* :func:`assemble` — module data (n, 16, 512, 128) -> images with extra-geom's
  ``position_modules``, block-reduced for display.
* :func:`assembled_q_axes` — the q (rad/nm) of the assembled image's columns and rows, so
  the hits are drawn in the one image convention (q axes, beam at q = 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from dashboard.data.loaders import OutputCorrupt, OutputMissing

AGIPD_SHAPE = (16, 512, 128)


def hit_rate_by_train(table: pd.DataFrame, max_points: int = 2000) -> pd.DataFrame:
    """Per-train hit statistics: columns ``train_id, frames, hits, hit_rate``.

    table : the hits table (needs ``train_id`` and ``is_hit``).
    max_points : above this many trains, consecutive trains are pooled into equal blocks
        (``train_id`` = first train of the block) so a plot stays light.
    """
    if table.empty:
        return pd.DataFrame({"train_id": [], "frames": [], "hits": [], "hit_rate": []})
    g = table.groupby("train_id", sort=True)["is_hit"].agg(["size", "sum"]).reset_index()
    g.columns = ["train_id", "frames", "hits"]
    if len(g) > max_points:
        block = int(np.ceil(len(g) / max_points))
        key = np.arange(len(g)) // block
        g = g.groupby(key).agg(train_id=("train_id", "first"), frames=("frames", "sum"),
                               hits=("hits", "sum")).reset_index(drop=True)
    g["hits"] = g["hits"].astype(np.int64)
    g["hit_rate"] = g["hits"] / g["frames"]
    return g


def lit_histogram(path: str | Path) -> pd.DataFrame:
    """The lit-pixel histogram CSV (``lit_pixels, bin_low, bin_high, frames, above_threshold``)."""
    path = Path(path)
    if not path.is_file():
        raise OutputMissing(path, "not produced yet")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise OutputCorrupt(path, f"unreadable CSV ({exc.__class__.__name__})") from None
    need = {"lit_pixels", "bin_low", "bin_high", "frames"}
    if not need <= set(df.columns):
        raise OutputCorrupt(path, f"missing columns {sorted(need - set(df.columns))}")
    return df


def is_agipd_frames(path: str | Path) -> bool:
    """True when the frames file's detector is the unassembled AGIPD 1M layout."""
    try:
        with h5py.File(path, "r") as h5:
            det = h5.get("detector")
            return det is not None and "module_shape" in det.attrs and \
                tuple(int(v) for v in det.attrs["module_shape"]) == AGIPD_SHAPE
    except OSError:
        return False


def frames_geometry_path(path: str | Path) -> str:
    """``data.geometry`` recorded in the frames file's provenance ("" = the default geometry)."""
    with h5py.File(path, "r") as h5:
        raw = h5.attrs.get("spicompute_params", "{}")
    try:
        params = json.loads(raw)
    except (TypeError, ValueError):
        return ""
    return str(params.get("data", {}).get("geometry") or "")


def load_geometry(geom_path: str = ""):
    """extra-geom AGIPD 1M geometry: the recorded ``.geom`` when it exists here, else the
    default.  Returns (geometry, note) where note says which was used."""
    from spicompute.io.euxfel import load_agipd_geometry

    if geom_path and Path(geom_path).is_file():
        return load_agipd_geometry(geom_path), f"geometry {geom_path}"
    note = "default AGIPD 1M geometry" + (f" ({geom_path} not found here)" if geom_path else "")
    return load_agipd_geometry(None), note


def block_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Sum of ``factor`` x ``factor`` blocks of a 2D image (NaN = no pixel; a block of only
    NaN stays NaN).  Shape (H // factor, W // factor)."""
    if factor <= 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor)
    empty = np.isnan(blocks).all(axis=(1, 3))
    out = np.nansum(blocks, axis=(1, 3))
    out[empty] = np.nan
    return out


def assemble(counts: np.ndarray, mask: np.ndarray, geom, factor: int = 4) -> np.ndarray:
    """Assembled detector images of unassembled frames.

    counts : (n, P) photons with P = 16 * 512 * 128 (module, slow scan, fast scan order).
    mask : (P,) bool good pixels (masked pixels -> NaN).
    geom : extra-geom AGIPD_1MGeometry; factor : block size of the display reduction.
    Returns (n, H', W') float photons per block (NaN outside modules / fully masked blocks).
    """
    counts = np.asarray(counts, dtype=np.float32)
    data = counts.reshape(len(counts), *AGIPD_SHAPE).copy()
    data[:, ~np.asarray(mask, bool).reshape(AGIPD_SHAPE)] = np.nan
    images, _ = geom.position_modules(data)
    return np.stack([block_reduce(img, factor) for img in images])


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of the finite values of ``factor`` x ``factor`` blocks (NaN where none)."""
    return block_reduce(image, factor) / block_reduce(np.where(np.isfinite(image), 1.0, np.nan), factor)


def _axis_from_image(values: np.ndarray, centre: float) -> np.ndarray:
    """One coordinate per column of a 2D image of that coordinate (NaN in gaps): per column
    the finite value in the row nearest ``centre``; columns without any are interpolated."""
    rows = np.arange(values.shape[0], dtype=np.float64)[:, None]
    dist = np.where(np.isfinite(values), np.abs(rows - centre), np.inf)
    nearest = np.argmin(dist, axis=0)
    axis = values[nearest, np.arange(values.shape[1])]
    known = np.isfinite(axis)
    if known.sum() < 2:
        raise ValueError("the geometry places fewer than two columns of pixels")
    index = np.arange(len(axis), dtype=np.float64)
    return np.interp(index, index[known], axis[known])


def assembled_q_axes(q: np.ndarray, geom, factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(qx per column (W',), qy per row (H',)) in rad/nm of :func:`assemble`'s images.

    q : (P, 3) per-pixel q-vectors of the frames file (rad/nm), P = 16 * 512 * 128.
    The per-pixel qx and qy are assembled with the same geometry and block factor as the
    counts; a flat detector's q is not separable, so each column takes the qx of the row
    nearest the beam (and each row the qy of the column nearest it), as the Frames page does
    for regular detectors.  Gaps and the central hole get interpolated values.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (int(np.prod(AGIPD_SHAPE)), 3):
        raise ValueError(f"expected per-pixel q of shape ({int(np.prod(AGIPD_SHAPE))}, 3), got {q.shape}")
    planes, _ = geom.position_modules(np.stack([q[:, 0], q[:, 1]]).reshape(2, *AGIPD_SHAPE))
    qx, qy = (_block_mean(plane, factor) for plane in planes)
    # the beam is where |q| is smallest among the placed pixels
    qq = np.where(np.isfinite(qx) & np.isfinite(qy), qx ** 2 + qy ** 2, np.inf)
    beam_row, beam_col = np.unravel_index(np.argmin(qq), qq.shape)
    return _axis_from_image(qx, beam_row), _axis_from_image(qy.T, beam_col)

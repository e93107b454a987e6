"""Drill-down: a point -> its member frames (de-rotated); a latent point -> nearest averages."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.ndimage import map_coordinates


def sample_members(frames: pd.DataFrame, average_id: int, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` member frames of one average (rows of results/frames.parquet),
    a seeded sample sorted by posterior (most confident first)."""
    rows = frames[frames["average_id"].to_numpy() == int(average_id)]
    if len(rows) > n:
        rows = rows.iloc[np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))]
    if "posterior_max" in rows:
        rows = rows.sort_values("posterior_max", ascending=False)
    return rows.reset_index(drop=True)


def derotate(image: np.ndarray, angle_deg: float, centre: tuple[float, float]) -> np.ndarray:
    """Undo an in-plane rotation: the frame in its average's orientation.

    2D EMC models a frame as its average turned counter-clockwise by
    ``theta`` (``rotation_deg``) about the beam centre, with array axis 0 = qy
    and axis 1 = qx.  So the average's point q is read at ``Rot(theta) q`` of
    the frame (nearest neighbour; NaN pixels stay NaN, outside is NaN).
    image: (H, W); centre: (row, col) of q = 0 in pixels.
    """
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = yy - centre[0], xx - centre[1]
    t = np.radians(angle_deg)
    xs = np.cos(t) * x - np.sin(t) * y + centre[1]
    ys = np.sin(t) * x + np.cos(t) * y + centre[0]
    return map_coordinates(np.asarray(image, dtype=np.float64), [ys, xs], order=0,
                           mode="constant", cval=np.nan)


def beam_centre(q: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    """(row, col) of q_perp = 0 on a regular detector, from the pixels' q (P, 3) in nm^-1,
    by a least-squares fit of qx, qy linear in column/row."""
    rows, cols = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
    design = np.stack([cols, rows, np.ones_like(cols)], axis=1).astype(np.float64)
    coef_x, *_ = np.linalg.lstsq(design, q[:, 0], rcond=None)
    coef_y, *_ = np.linalg.lstsq(design, q[:, 1], rcond=None)
    a = np.array([[coef_x[0], coef_x[1]], [coef_y[0], coef_y[1]]])
    col, row = np.linalg.solve(a, -np.array([coef_x[2], coef_y[2]]))
    return float(row), float(col)


def detector_q_axes(q: np.ndarray, shape: tuple[int, int],
                    centre: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(qx per column (W,), qy per row (H,)) in nm^-1 of a regular detector's image.

    q: the pixels' q-vectors (H * W, 3).  A flat detector's q is not separable, so the
    columns take the qx of the row through the beam and the rows the qy of the column
    through it (``centre`` (row, col), default :func:`beam_centre`; clipped to the detector)
    -- the axes every page draws a detector image on, with q = 0 at the beam.
    """
    h, w = shape
    grid = np.asarray(q, dtype=np.float64).reshape(h, w, -1)
    row, col = centre if centre is not None else beam_centre(np.asarray(q, dtype=np.float64), shape)
    r = int(np.clip(round(row), 0, h - 1))
    c = int(np.clip(round(col), 0, w - 1))
    return grid[r, :, 0], grid[:, c, 1]


def latent_columns(table: pd.DataFrame) -> list[str]:
    cols, k = [], 1
    while f"z_{k}" in table.columns:
        cols.append(f"z_{k}")
        k += 1
    return cols


def nearest_in_latent(table: pd.DataFrame, point, k: int = 8) -> pd.DataFrame:
    """The ``k`` averages whose latent mean ``z`` is nearest to ``point`` (d,),
    with a ``latent_distance`` column, nearest first."""
    cols = latent_columns(table)
    point = np.atleast_1d(np.asarray(point, dtype=np.float64))
    if len(cols) != point.size:
        raise ValueError(f"latent point has {point.size} coordinates, the table {len(cols)}")
    z = table[cols].to_numpy(np.float64)
    d = np.linalg.norm(z - point[None], axis=1)
    ok = np.isfinite(d)
    order = np.argsort(np.where(ok, d, np.inf), kind="stable")[:min(k, int(ok.sum()))]
    out = table.iloc[order].copy()
    out["latent_distance"] = d[order]
    return out.reset_index(drop=True)


def member_frame_images(frames_h5: str, members: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Member frames as images in their average's orientation.

    frames_h5: data/frames.h5; members: rows of results/frames.parquet
    (``frame_id``, ``rotation_deg``).  Returns (images (n, H, W) float64 photon
    counts, NaN on masked pixels, de-rotated by :func:`derotate`; frame_ids
    (n,) in the order of ``members``; (qx (W,), qy (H,)) axes from :func:`detector_q_axes`).  Raises ValueError for a detector that
    is not a regular image.
    """
    from spicompute.io.frames import read_frame_subset

    from dashboard.data.loaders import read_h5

    ids_all = read_h5(frames_h5, ["frames/frame_id"])["frames/frame_id"]
    lookup = pd.Series(np.arange(len(ids_all)), index=ids_all)
    wanted = members["frame_id"].to_numpy()
    rows = lookup.reindex(wanted).dropna().astype(np.int64).to_numpy()
    if len(rows) == 0:
        return np.zeros((0, 1, 1)), np.zeros(0, np.int64), (np.zeros(1), np.zeros(1))
    counts, fid, det = read_frame_subset(frames_h5, rows)
    if det.shape is None:
        raise ValueError("the detector is not a regular image")
    h, w = det.shape
    centre = beam_centre(np.asarray(det.q), (h, w))
    mask = np.asarray(det.mask).astype(bool).reshape(h, w)
    by_id = {int(f): i for i, f in enumerate(fid)}
    angle = dict(zip(members["frame_id"].to_numpy().tolist(),
                     members["rotation_deg"].to_numpy().tolist())) if "rotation_deg" in members \
        else {}
    images, out_ids = [], []
    for f in wanted:
        if int(f) not in by_id:
            continue
        img = np.asarray(counts[by_id[int(f)]], dtype=np.float64).reshape(h, w)
        img = np.where(mask, img, np.nan)
        a = angle.get(f, 0.0)
        images.append(derotate(img, a if np.isfinite(a) else 0.0, centre))
        out_ids.append(int(f))
    return np.stack(images), np.asarray(out_ids), detector_q_axes(det.q, (h, w), centre)

"""Orientation sampling and the cube's symmetry groups.

Quaternions are (w, x, y, z), scalar first, model->lab: a frame taken at
orientation R samples the model intensity at ``R^T q``.

Sampling
    Dragonfly-style refinement of the 600-cell (Loh & Elser 2009, PRE 80,
    026705): the 120 vertices of the 600-cell are unit quaternions; every
    tetrahedral cell is subdivided into a barycentric lattice of step
    ``1 / num_div``; lattice points are projected onto the unit 3-sphere.
    ``q`` and ``-q`` are the same rotation, so half of the points are kept:
    ``10 (5 n^3 + n)`` rotations.  Coordinates are carried exactly in
    Z[tau] (tau the golden ratio), so points shared by neighbouring cells are
    identified without floating-point tolerance.  Each point has a weight
    (Dragonfly's: the volume of its Voronoi cell, approximated from its
    distance to a containing cell's centre; 5/6 and 35/36 factors on
    vertices and edges).  This module's implementation is written from the
    published construction; the order of points is ours (vertices, edges,
    faces, cell interiors, each sorted by their exact coordinates).

Symmetry
    The cube's proper rotation group O (24 elements, scipy's
    ``Rotation.create_group("O")`` order, identity at index 3).  An intensity
    ``I`` with ``I(g q) = I(q)`` for all g in O makes ``R`` and ``R g``
    indistinguishable.  The full point group Oh = O x {1, -1} adds the
    inversion, which acts trivially on diffraction intensities (Friedel:
    ``I(-q) = I(q)``), so orientations are reduced modulo O only;
    :func:`octahedral_matrices` gives all 48 signed permutation matrices for
    code that symmetrises volumes.

Fundamental zone (documented tie rule)
    A rotation q is kept when the identity is the group element g that
    brings ``q g`` closest to the identity rotation, i.e. minimises
    ``d = 1 - w(q g)^2``.  Minima equal within ``TIE_TOL`` are ties;
    ``ties="first"`` (default) resolves them to the first tied element in
    the group order (so a boundary point is kept only when no element before
    the identity ties with it), ``ties="all"`` keeps every tied boundary
    point.  At ``num_div = 20``: 400,200 rotations -> 16,407 (``"first"``,
    the paper's count) or 16,447 (``"all"``).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.spatial.transform import Rotation

from spicompute.errors import ParameterError
from spicompute.orient.quaternions import canonical, quat_conjugate, quat_multiply, quat_to_rotation, rotation_to_quat
from spicompute.orient.symmetry import cube_group

TAU = (1.0 + np.sqrt(5.0)) / 2.0
TIE_TOL = 1e-9


# --------------------------------------------------------------------------- quaternion algebra

# scalar-first <-> scipy conversions live with the slicing code, shared by every stage
to_rotation = quat_to_rotation
from_rotation = rotation_to_quat


# --------------------------------------------------------------------------- groups

def _scalar_with_group(q: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``w(q g)`` for every q and every g: (N, 4), (G, 4) -> (N, G).

    Evaluated elementwise in a fixed operation order (not BLAS), so the
    rounding -- which decides exact geometric ties under ``ties="first"`` --
    is the same on every machine.
    """
    q = np.asarray(q, dtype=np.float64)
    g = np.asarray(group, dtype=np.float64)
    return (((q[:, None, 0] * g[None, :, 0]) - q[:, None, 1] * g[None, :, 1])
            - q[:, None, 2] * g[None, :, 2]) - q[:, None, 3] * g[None, :, 3]


def fundamental_zone_mask(q: np.ndarray, group: np.ndarray | None = None, *,
                          ties: str = "first", identity_index: int | None = None) -> np.ndarray:
    """Which rotations lie in the fundamental zone of ``group``, (N,) bool.

    q : (N, 4) unit quaternions; group : (G, 4), default :func:`cube_group`.
    A rotation is kept when the identity minimises ``d = 1 - w(q g)^2`` over
    the group (see the module docstring for the tie rule).
    """
    if ties not in ("first", "all"):
        raise ParameterError("ties", f"must be 'first' or 'all', got {ties!r}")
    group = cube_group() if group is None else np.asarray(group, dtype=np.float64)
    if identity_index is None:
        identity_index = int(np.argmax(np.abs(group[:, 0])))
    d = 1.0 - _scalar_with_group(q, group) ** 2  # (N, G)
    if ties == "all":
        return d[:, identity_index] <= d.min(axis=1) + TIE_TOL
    return np.argmin(d, axis=1) == identity_index


def reduce_to_zone(q: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Symmetry-equivalent ``q g`` closest to the identity, with w >= 0, (N, 4)."""
    group = cube_group() if group is None else np.asarray(group, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    best = np.argmax(np.abs(_scalar_with_group(q, group)), axis=1)
    return canonical(quat_multiply(q, group[best]))


def misorientation_deg(q1: np.ndarray, q2: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Smallest rotation angle between R1 and R2 g over g in ``group``, degrees.

    q1, q2 : (N, 4) (or broadcastable).  ``group=None`` uses O; pass
    ``np.array([[1, 0, 0, 0]])`` for the plain (asymmetric) angle.
    """
    group = cube_group() if group is None else np.asarray(group, dtype=np.float64)
    m = quat_multiply(quat_conjugate(q1), q2)
    shape = m.shape[:-1]
    w = np.abs(_scalar_with_group(m.reshape(-1, 4), group)).max(axis=1)
    return np.degrees(2.0 * np.arccos(np.clip(w, 0.0, 1.0))).reshape(shape)


def nearest_misorientation_deg(q: np.ndarray, reference: np.ndarray, group: np.ndarray | None = None,
                               chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each q, the closest reference rotation modulo ``group``.

    q : (N, 4), reference : (K, 4).  Returns (angle_deg (N,), index (N,)).
    Chunked matrix products: |w(q^-1 r g)| = |q . (r g)| over all (r, g).
    """
    group = cube_group() if group is None else np.asarray(group, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    expanded = quat_multiply(ref[:, None, :], group[None, :, :]).reshape(-1, 4)  # (K*G, 4)
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    best_w = np.empty(len(q))
    best_i = np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), chunk):
        w = np.abs(q[s:s + chunk] @ expanded.T)
        arg = np.argmax(w, axis=1)
        best_w[s:s + chunk] = w[np.arange(len(arg)), arg]
        best_i[s:s + chunk] = arg // len(group)
    return np.degrees(2.0 * np.arccos(np.clip(best_w, 0.0, 1.0))), best_i


# --------------------------------------------------------------------------- 600-cell sampling

def _vertices_ztau() -> np.ndarray:
    """The 120 vertices of the 600-cell in Z[tau]/2: int (120, 4, 2), value (a + b tau)/2."""
    verts = []
    for signs in itertools.product((-1, 1), repeat=4):  # 16 of (+-1/2)^4
        verts.append([[s, 0] for s in signs])
    for axis in range(4):  # 8 of (+-1, 0, 0, 0)
        for s in (-1, 1):
            v = [[0, 0] for _ in range(4)]
            v[axis] = [2 * s, 0]
            verts.append(v)
    even = [p for p in itertools.permutations(range(4))
            if sum(p[i] > p[j] for i in range(4) for j in range(i + 1, 4)) % 2 == 0]
    for si, sj, sk in itertools.product((-1, 1), repeat=3):  # 96 of even perms of (tau, 1, 1/tau, 0)/2
        base = [[0, si], [sj, 0], [-sk, sk], [0, 0]]  # tau/2, 1/2, (tau-1)/2 = 1/(2 tau), 0
        for p in even:
            verts.append([base[p[i]] for i in range(4)])
    return np.asarray(verts, dtype=np.int64)


def _ztau_value(v: np.ndarray, scale: float) -> np.ndarray:
    return (v[..., 0] + TAU * v[..., 1]) / scale


def _cells(vert: np.ndarray) -> np.ndarray:
    """The 600 tetrahedral cells as sorted vertex-index quadruples, (600, 4)."""
    x = _ztau_value(vert, 2.0)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    edge2 = (1.0 / TAU) ** 2
    adj = np.abs(d2 - edge2) < 1e-6
    i, j, k = np.nonzero(adj[:, :, None] & adj[:, None, :] & adj[None, :, :])
    tri = np.stack([i, j, k], 1)
    tri = tri[(tri[:, 0] < tri[:, 1]) & (tri[:, 1] < tri[:, 2])]
    n_vert = len(x)
    fourth = adj[tri[:, 0]] & adj[tri[:, 1]] & adj[tri[:, 2]]  # (T, 120)
    fourth &= np.arange(n_vert)[None, :] > tri[:, 2:3]
    t_idx, l_idx = np.nonzero(fourth)
    cells = np.concatenate([tri[t_idx], l_idx[:, None]], axis=1)
    if cells.shape != (600, 4):  # pragma: no cover - a construction bug, not user input
        raise RuntimeError(f"600-cell construction found {cells.shape[0]} cells")
    return cells


def _barycentric(n: int) -> np.ndarray:
    """All (c0, c1, c2, c3) >= 0 with sum n, int (C(n+3, 3), 4)."""
    c = np.stack(np.meshgrid(*[np.arange(n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    c = c[c.sum(1) <= n]
    return np.concatenate([n - c.sum(1, keepdims=True), c], axis=1)


def sample_orientations(num_div: int) -> tuple[np.ndarray, np.ndarray]:
    """Dragonfly-style quaternion sampling of SO(3).

    Parameters
    ----------
    num_div : n >= 1, subdivisions of each 600-cell edge; the angular step is
        about ``2 / (tau n)`` rad (``sampling_step_deg``).

    Returns
    -------
    quats : (10 (5 n^3 + n), 4) float64 unit quaternions (scalar first).
    weights : (same,) float64, Dragonfly's relative volume weights
        (normalised to sum 1).
    """
    n = int(num_div)
    if n < 1 or n != num_div:
        raise ParameterError("num_div", f"must be an integer >= 1, got {num_div!r}")
    vert = _vertices_ztau()  # (120, 4, 2)
    cells = _cells(vert)  # (600, 4)
    bary = _barycentric(n)  # (B, 4)
    cell_v = vert[cells]  # (600, 4 vertices, 4 coords, 2)
    # exact lattice points in units of 1/(2n): sum_i c_i V_i  -> (600, B, 4, 2)
    pts = np.einsum("bi,cikt->cbkt", bary, cell_v)
    flat = pts.reshape(-1, 8)
    span = 4 * n + 1  # coordinates lie in [-2n, 2n]
    key = np.zeros(len(flat), dtype=np.int64)
    for col in range(8):
        key = key * span + (flat[:, col] + 2 * n)
    _, first = np.unique(key, return_index=True)
    pts_u = flat[first]  # (2 * 10(5n^3+n), 8)
    cell_of = first // len(bary)
    kind = (bary[first % len(bary)] > 0).sum(axis=1)  # 1 vertex, 2 edge, 3 face, 4 cell
    # keep one of q, -q: first non-zero exact coordinate positive (Dragonfly's rule)
    nz = pts_u != 0
    lead = pts_u[np.arange(len(pts_u)), np.argmax(nz, axis=1)]
    half = lead > 0
    pts_u, cell_of, kind = pts_u[half], cell_of[half], kind[half]
    expected = 10 * (5 * n**3 + n)
    if len(pts_u) != expected:  # pragma: no cover
        raise RuntimeError(f"sampling produced {len(pts_u)} points, expected {expected}")
    vq = _ztau_value(pts_u.reshape(-1, 4, 2), 2.0 * n)  # unnormalised (N, 4)
    vc = _ztau_value(cell_v[cell_of], 2.0).sum(axis=1)  # cell centre direction (N, 4)
    nq = np.linalg.norm(vq, axis=1)
    w = (vq * vc).sum(1) / (nq**4 * np.linalg.norm(vc, axis=1))
    w *= np.select([kind == 1, kind == 2], [5.0 / 6.0, 35.0 / 36.0], 1.0)
    order = np.lexsort((np.arange(len(kind)), kind))
    quats = vq[order] / nq[order, None]
    weights = w[order]
    return quats, weights / weights.sum()


def sampling_step_deg(num_div: int) -> float:
    """Nominal angular step of the sampling: rotation angle of one lattice step, degrees."""
    return float(np.degrees(2.0 * (1.0 / TAU) / num_div))


def fundamental_orientations(num_div: int, *, ties: str = "first",
                             group: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sampling of :func:`sample_orientations` reduced to the fundamental zone of O.

    Returns (quats (K, 4) with w >= 0, weights (K,) normalised to sum 1).
    """
    quats, weights = sample_orientations(num_div)
    keep = fundamental_zone_mask(quats, group, ties=ties)
    w = weights[keep]
    return canonical(quats[keep]), w / w.sum()


def local_grid(center: np.ndarray, radius_deg: float, steps: int = 1,
               pattern: str = "grid") -> np.ndarray:
    """Candidate rotations around each centre, ``q_center * exp(v)``.

    center : (N, 4).  ``pattern="grid"``: rotation vectors v on a cubic grid
    of ``(2 steps + 1)^3`` points spanning +-radius_deg per component (centre
    at index S // 2).  ``pattern="axes"``: the centre and +-radius_deg along
    each axis (7 points, centre first).  Returns (N, S, 4), w >= 0.
    """
    if pattern == "grid":
        axis = np.linspace(-1.0, 1.0, 2 * int(steps) + 1) * np.radians(radius_deg)
        vecs = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    elif pattern == "axes":
        vecs = np.concatenate([np.zeros((1, 3)), np.eye(3), -np.eye(3)]) * np.radians(radius_deg)
    else:
        raise ParameterError("refine_pattern", f"must be 'grid' or 'axes', got {pattern!r}")
    center = np.asarray(center, dtype=np.float64).reshape(-1, 4)
    delta = from_rotation(Rotation.from_rotvec(vecs))  # (S, 4)
    delta[np.all(vecs == 0, axis=1)] = [1.0, 0.0, 0.0, 0.0]
    return canonical(quat_multiply(center[:, None, :], delta[None, :, :]))

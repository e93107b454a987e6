"""Score two tools' final 2D models identically on the same Dragonfly photons.

Independent of both tools' code (numpy/scipy/h5py only).  For every frame n, model k and
in-plane rotation r (``--rotations`` over 2 pi, default 72 = 5 deg, which contains both
Dragonfly's Friedel 36-over-pi and our 36-over-2-pi sets) the expected counts are
``W = s * corr_p * M_k(Rot(theta_r) q_p)`` on the good pixels (mask 0), M sampled bilinearly,
``s`` the maximum-likelihood fluence scale of that (n, k, r).  Poisson log-likelihood per
frame (without the data-only ``-sum log K!``):

* ``best``: max over (k, r);
* ``marginal``: log of the mean over (k, r) of exp(loglik) (uniform prior, beta = 1).

    python _score.py PHOTONS DETECTOR N_FRAMES NAME=MODELS[:npz] ...

``MODELS`` is a Dragonfly ``output_NNN.h5`` (``intens`` [k, x, y], step 1 voxel) or our
``.npz`` (``models`` [k, i=qy, j=qx], ``step_vox``).  Prints one JSON object.
"""
from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp


def read_frames(path: str, n: int, n_pix: int) -> sp.csr_matrix:
    """First ``n`` frames of a Dragonfly photon file as counts (n, n_pix)."""
    with h5py.File(path, "r") as h5:
        ones = h5["place_ones"][:n]
        multi = h5["place_multi"][:n]
        cmulti = h5["count_multi"][:n]
    rows, cols, vals = [], [], []
    for i, (o, m, c) in enumerate(zip(ones, multi, cmulti)):
        rows += [np.full(o.size + m.size, i)]
        cols += [o, m]
        vals += [np.ones(o.size), c]
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                 np.concatenate(cols).astype(np.int64))),
                         shape=(len(ones), n_pix))


def load_models(spec: str) -> tuple[np.ndarray, float]:
    """(K, L, L) models indexed [k, x, y] and their grid step in Dragonfly voxels."""
    if spec.endswith(".npz"):
        z = np.load(spec)
        return np.transpose(z["models"], (0, 2, 1)).astype(np.float64), float(z["step_vox"])
    with h5py.File(spec, "r") as h5:
        return np.asarray(h5["intens"][()], np.float64), 1.0


def bilinear(models: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """models (K, L, L) sampled at fractional (x, y) index points (P,): (P, K); 0 outside."""
    L = models.shape[-1]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    out = np.zeros((x.size, models.shape[0]))
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < L) & (yi >= 0) & (yi < L)
        out[ok] += w[ok, None] * models[:, xi[ok], yi[ok]].T
    return out


def score(counts: sp.csr_matrix, qx, qy, corr, models, step, n_rot) -> dict:
    models = np.where(np.isfinite(models), models, 0.0)
    models = np.maximum(models, 0.0)
    c = models.shape[-1] // 2
    k_n = np.asarray(counts.sum(axis=1)).ravel()
    cols = []
    for theta in 2 * np.pi * np.arange(n_rot) / n_rot:
        x = (np.cos(theta) * qx - np.sin(theta) * qy) / step + c
        y = (np.sin(theta) * qx + np.cos(theta) * qy) / step + c
        w = bilinear(models, x, y) * corr[:, None]                   # (P, K)
        w = np.maximum(w, 1e-6 * w.mean(axis=0, keepdims=True))   # same floor for both
        cols.append(w)
    w = np.concatenate(cols, axis=1)                                  # (P, R*K)
    ll = np.asarray(counts @ np.log(w)) - k_n[:, None] * np.log(w.sum(axis=0))[None]
    ll += (k_n * np.log(np.maximum(k_n, 1)) - k_n)[:, None]          # ML scale per (n, k, r)
    return {"best": float(ll.max(axis=1).mean()),
            "marginal": float((logsumexp(ll, axis=1) - np.log(ll.shape[1])).mean())}


def main(argv) -> int:
    photons, detector, n = argv[0], argv[1], int(argv[2])
    with h5py.File(detector, "r") as h5:
        qx, qy, corr, mask = (np.asarray(h5[k][()]) for k in ("qx", "qy", "corr", "mask"))
    good = mask == 0
    counts = read_frames(photons, n, qx.size)[:, np.flatnonzero(good)]
    out = {"frames_scored": int(counts.shape[0]), "pixels": int(good.sum()), "n_rot": 72}
    for spec in argv[3:]:
        name, path = spec.split("=", 1)
        models, step = load_models(path)
        out[name] = score(counts, qx[good], qy[good], corr[good], models, step, 72)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

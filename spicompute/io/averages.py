"""The averages file: 2D class averages on a regular q-grid (our HDF5 layout).

2D EMC class averages (ours, or imported from Dragonfly) live on a square
grid in the detector-plane coordinates (qx, qy); point (i, j) of an ``L x L``
grid has ``qx = (j - c) dq``, ``qy = (i - c) dq``, ``c = L // 2``
(see :func:`spicompute.geometry.grid_q`).  With the wavelength, every grid
point is also a point on the Ewald sphere, which is what the orientation fit
and the VAE slice with.

Layout::

    /averages/intensity   (M, L, L) float32  mean photons per pixel at unit fluence
    /averages/weight      (M, L, L) float32  coverage (0 = never observed)
    /averages/average_id  (M,) int64   global id, 0..M-1
    /averages/run         (M,) int64   bootstrap run
    /averages/model       (M,) int64   model index within the run
    /averages/n_frames    (M,) float64 occupancy (sum of posteriors)
    /averages attrs: dq_nm (rad/nm per grid step), center (index c),
                     wavelength_nm, source ("spicompute" | "dragonfly")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spicompute.errors import InputError
from spicompute.geometry import grid_q
from spicompute.io.frames import open_h5
from spicompute.io.provenance import atomic_path, stamp


@dataclass
class AverageSet:
    """2D class averages on a square (qx, qy) grid.

    intensity : (M, L, L) float32
    weight : (M, L, L) float32, > 0 where the average was observed
    average_id, run, model : (M,) int64
    n_frames : (M,) float64, posterior-weighted number of member frames
    dq_nm : grid step in rad/nm
    wavelength_nm : for Ewald-sphere curvature
    """

    intensity: np.ndarray
    weight: np.ndarray
    average_id: np.ndarray
    run: np.ndarray
    model: np.ndarray
    n_frames: np.ndarray
    dq_nm: float
    wavelength_nm: float
    source: str = "spicompute"

    def __post_init__(self):
        self.intensity = np.asarray(self.intensity, dtype=np.float32)
        if self.intensity.ndim != 3 or self.intensity.shape[1] != self.intensity.shape[2]:
            raise ValueError(f"intensity must be (M, L, L), got {self.intensity.shape}")
        self.weight = np.asarray(self.weight, dtype=np.float32)
        if self.weight.shape != self.intensity.shape:
            raise ValueError("weight and intensity shapes differ")
        m = self.intensity.shape[0]
        for name in ("average_id", "run", "model"):
            arr = np.asarray(getattr(self, name), dtype=np.int64).reshape(-1)
            if arr.shape != (m,):
                raise ValueError(f"{name} must have {m} entries")
            setattr(self, name, arr)
        self.n_frames = np.asarray(self.n_frames, dtype=np.float64).reshape(m)
        self.dq_nm = float(self.dq_nm)
        self.wavelength_nm = float(self.wavelength_nm)

    @property
    def n_averages(self) -> int:
        return int(self.intensity.shape[0])

    @property
    def size(self) -> int:
        """Grid edge L."""
        return int(self.intensity.shape[1])

    @property
    def center(self) -> int:
        return self.size // 2

    @property
    def valid(self) -> np.ndarray:
        """(M, L, L) bool, True where observed."""
        return self.weight > 0

    def q_grid(self, ewald: bool = True) -> np.ndarray:
        """(L, L, 3) q-vectors of the grid, rad/nm (on the Ewald sphere by default)."""
        return grid_q(self.size, self.dq_nm, self.wavelength_nm if ewald else None)

    def subset(self, index) -> "AverageSet":
        index = np.asarray(index)
        return AverageSet(self.intensity[index], self.weight[index], self.average_id[index],
                          self.run[index], self.model[index], self.n_frames[index],
                          self.dq_nm, self.wavelength_nm, self.source)


def write_averages(path: str | Path, averages: AverageSet, *, stage: str = "classify2d",
                   params: dict | None = None) -> None:
    """Write an :class:`AverageSet` atomically."""
    with atomic_path(path) as tmp:
        import h5py

        with h5py.File(tmp, "w") as h5:
            stamp(h5, stage, params)
            g = h5.create_group("averages")
            g.create_dataset("intensity", data=averages.intensity, compression="gzip", shuffle=True)
            g["intensity"].attrs["units"] = "mean photons per pixel at unit fluence scale"
            g.create_dataset("weight", data=averages.weight, compression="gzip", shuffle=True)
            for name in ("average_id", "run", "model", "n_frames"):
                g.create_dataset(name, data=getattr(averages, name))
            g.attrs["dq_nm"] = averages.dq_nm
            g.attrs["center"] = averages.center
            g.attrs["wavelength_nm"] = averages.wavelength_nm
            g.attrs["source"] = averages.source


def read_averages(path: str | Path) -> AverageSet:
    """Read a file written by :func:`write_averages`."""
    with open_h5(path) as h5:
        if "averages" not in h5:
            raise InputError(path, "averages", "group missing (not an averages file?)")
        g = h5["averages"]
        data = {}
        for name in ("intensity", "weight", "average_id", "run", "model", "n_frames"):
            if name not in g:
                raise InputError(path, f"averages/{name}", "dataset missing")
            data[name] = g[name][()]
        for attr in ("dq_nm", "wavelength_nm"):
            if attr not in g.attrs:
                raise InputError(path, f"averages@{attr}", "attribute missing")
        inten = data["intensity"]
        if inten.ndim != 3 or inten.shape[1] != inten.shape[2]:
            raise InputError(path, "averages/intensity", f"must be (M, L, L), got {inten.shape}")
        if inten.shape[0] == 0:
            raise InputError(path, "averages/intensity", "holds no averages")
        if inten.dtype.kind not in "fiu":
            raise InputError(path, "averages/intensity", f"must be numbers, got dtype {inten.dtype}")
        if not np.all(np.isfinite(inten)):
            raise InputError(path, "averages/intensity", "contains NaN or Inf")
        try:
            return AverageSet(dq_nm=g.attrs["dq_nm"], wavelength_nm=g.attrs["wavelength_nm"],
                              source=str(g.attrs.get("source", "spicompute")), **data)
        except ValueError as exc:
            raise InputError(path, "averages", str(exc)) from exc

"""Ground truth of a simulated data set (kept apart from the frames).

Layout::

    /truth/frame_id          (N,)   int64
    /truth/class_name        (N,)   str    cube | melt | sphere | dimer | rod
    /truth/melt_t            (N,)   float  0 cube ... 1 sphere, NaN for contaminants
    /truth/quaternion        (N, 4) float  scalar first, model -> lab
    /truth/fluence           (N,)   float  relative fluence
    /truth/size_scale        (N,)   float  size factor s
    /truth/size_nm           (N,)   float  edge of the cube of equal volume
    /truth/photons_expected  (N,)   float  expected particle photons (background excluded)
    /truth/background_photons (N,)  int    sampled background photons (absent in old files)
    /volumes/intensity       (V, L, L, L) float32 |F|^2 (nm^6); attrs dq_nm, center
    /volumes/name            (V,)   str
    /volumes/melt_t          (V,)   float

Only tests and the dashboard read this file; no pipeline stage depends on it.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from spicompute.io.frames import open_h5
from spicompute.io.provenance import atomic_path, stamp

PER_FRAME = ("frame_id", "class_name", "melt_t", "quaternion", "fluence", "size_scale",
             "size_nm", "photons_expected", "background_photons")
OPTIONAL = ("background_photons",)  # files written before it existed lack it


def write_truth(path: str | Path, truth, params: dict | None = None) -> None:
    """Write a :class:`spicompute.simulation.simulate.Truth` atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        stamp(h5, "frames", params)
        g = h5.create_group("truth")
        for name in PER_FRAME:
            value = getattr(truth, name, None)
            if value is None and name in OPTIONAL:
                continue
            if name == "class_name":
                value = np.asarray(value, dtype=object).astype(h5py.string_dtype())
            g.create_dataset(name, data=value)
        v = h5.create_group("volumes")
        v.create_dataset("intensity", data=truth.volumes, compression="gzip", shuffle=True,
                         chunks=(1,) + truth.volumes.shape[1:])
        v["intensity"].attrs["units"] = "nm^6 (|F|^2 of unit density)"
        v.attrs["dq_nm"] = truth.volume_dq_nm
        v.attrs["center"] = truth.volumes.shape[1] // 2
        v.create_dataset("name", data=np.asarray(truth.volume_names, dtype=object)
                         .astype(h5py.string_dtype()))
        v.create_dataset("melt_t", data=truth.volume_t)


def read_truth(path: str | Path, volumes: bool = False) -> dict:
    """Per-frame truth arrays (and the volumes when asked) as a dict."""
    with open_h5(path) as h5:
        if "truth" not in h5:
            from spicompute.errors import InputError

            raise InputError(path, "truth", "no ground truth (the frames were ingested)")
        out = {name: h5[f"truth/{name}"][()] for name in PER_FRAME if f"truth/{name}" in h5}
        out["class_name"] = np.asarray(out["class_name"]).astype(str)
        if volumes:
            out["volumes"] = h5["volumes/intensity"][()]
            out["volume_dq_nm"] = float(h5["volumes"].attrs["dq_nm"])
            out["volume_name"] = np.asarray(h5["volumes/name"][()]).astype(str)
            out["volume_melt_t"] = h5["volumes/melt_t"][()]
    return out

"""Mock EuXFEL AGIPD 1M runs for tests: extra-data's own mock writers plus injected photons.

``make_proc_run`` writes a corrected (CORR, keV) run like
``extra_data.tests.make_examples.make_modern_spb_proc_run`` but with ``n_seq`` sequence files
per module (to exercise the parallel path); ``inject`` writes chosen frames: Poisson
background everywhere on them plus, for hits, a speckled particle pattern computed on the
detector's own q-vectors (a rotated cube: product of sinc^2), so the pipeline sees
physically sensible hits.  Frames never written read as zeros (HDF5 fill value).
"""

from __future__ import annotations

import os.path as osp

import h5py
import numpy as np

AGIPD = (16, 512, 128)


def make_proc_run(path, n_seq: int = 1, trains_per_seq: int = 64, pulses: int = 32) -> None:
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.detectors import AGIPDModule

    for m in range(16):
        for s in range(n_seq):
            write_file(osp.join(str(path), f"CORR-R0142-AGIPD{m:02d}-S{s:05d}.h5"), [
                AGIPDModule(f"SPB_DET_AGIPD1M-1/CORR/{m}CH0", channel_name="output", raw=False,
                            frames_per_train=pulses, legacy_name=f"SPB_DET_AGIPD1M-1/DET/{m}CH0")
            ], ntrains=trains_per_seq, firsttrain=10000 + s * trains_per_seq, chunksize=pulses,
                format_version="1.2")


def _module_files(path, prefix="CORR"):
    import glob

    return {m: sorted(glob.glob(osp.join(str(path), f"{prefix}-R*-AGIPD{m:02d}-S*.h5")))
            for m in range(16)}


def cube_pattern(q: np.ndarray, edge_nm: float, rng) -> np.ndarray:
    """Intensity of a randomly oriented cube (edge ``edge_nm``) at q (P, 3), max 1."""
    a, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    qm = q @ a
    return np.prod(np.sinc(qm * edge_nm / (2 * np.pi)) ** 2, axis=1)


def inject(path, frames, q: np.ndarray | None, *, bg: float = 2e-4, hit_photons: float = 3000,
           hits=(), unit: float = 6.0, noise: float = 0.05, edge_nm: float = 42.0, seed: int = 0,
           prefix: str = "CORR", raw: bool = False, keep_truth: bool = True):
    """Write photons (x ``unit``, plus Gaussian noise of ``noise`` photons) into ``frames``.

    frames : global frame indices (train-major over all sequence files, as stored).
    hits : subset of ``frames`` that carry a particle pattern of ~``hit_photons`` photons.
    Returns the integer photon truth, (len(frames), 16, 512, 128) int32 (None unless
    ``keep_truth``: large mock runs are written frame by frame in bounded memory).
    """
    import contextlib

    rng = np.random.default_rng(seed)
    frames = np.asarray(frames)
    P = int(np.prod(AGIPD))
    hits = set(int(h) for h in hits)
    kind = "CORR" if prefix == "CORR" else "DET"
    truth = np.zeros((len(frames),) + AGIPD, np.int32) if keep_truth else None
    with contextlib.ExitStack() as stack:
        targets = {m: [] for m in range(16)}  # module -> [(dataset, first frame, n frames)]
        for m, names in _module_files(path, prefix).items():
            offset = 0
            for fname in names:
                h5 = stack.enter_context(h5py.File(fname, "r+"))
                grp = [k for k in h5["INSTRUMENT/SPB_DET_AGIPD1M-1"][kind].keys() if k.startswith(f"{m}CH0")][0]
                ds = h5[f"INSTRUMENT/SPB_DET_AGIPD1M-1/{kind}/{grp}/image/data"]
                targets[m].append((ds, offset, ds.shape[0]))
                offset += ds.shape[0]
        for i, f in enumerate(frames):
            # sparse Poisson background: N ~ Poisson(bg P) photons at uniform pixels
            t = np.bincount(rng.integers(0, P, rng.poisson(bg * P)), minlength=P).astype(np.int32)
            if int(f) in hits:
                pat = cube_pattern(q, edge_nm, rng)
                lam = pat / pat.sum() * hit_photons * rng.uniform(0.7, 1.0)
                t += rng.poisson(lam).astype(np.int32)
            t = t.reshape(AGIPD)
            if keep_truth:
                truth[i] = t
            val = t.astype(np.float32) * np.float32(unit)
            val += rng.normal(0, noise * unit, size=val.shape).astype(np.float32)
            for m in range(16):
                for ds, first, n_file in targets[m]:
                    local = int(f) - first
                    if 0 <= local < n_file:
                        if raw:
                            ds[local, 0] = np.clip(np.round(val[m]), 0, 65535).astype(np.uint16)
                        else:
                            ds[local] = val[m]
    return truth

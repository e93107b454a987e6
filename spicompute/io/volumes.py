"""The volumes file."""

from __future__ import annotations

import numpy as np

from spicompute.errors import InputError


def read_volumes(path) -> dict:
    """Validated contents of a volumes file: intensity (P,L,L,L), z (P,d), observed (L,L,L) bool, dq_nm."""
    from spicompute.io.frames import open_h5

    with open_h5(path) as h5:
        for name in ("volumes/intensity", "volumes/z", "volumes/observed"):
            if name not in h5:
                raise InputError(path, name, "dataset missing")
        inten = h5["volumes/intensity"][()]
        z = h5["volumes/z"][()]
        observed = h5["volumes/observed"][()]
        attrs = dict(h5.attrs)
        attrs.update({k: v for k, v in h5["volumes"].attrs.items() if k not in attrs})
    if inten.ndim != 4 or not inten.shape[1] == inten.shape[2] == inten.shape[3] or inten.shape[0] < 1:
        raise InputError(path, "volumes/intensity", f"must be (P, L, L, L) with P >= 1, got {inten.shape}")
    p, size = inten.shape[0], inten.shape[1]
    if size % 2 == 0 or size < 5:
        raise InputError(path, "volumes/intensity",
                         f"grid edge L must be odd and >= 5 (q = 0 at L // 2), got {size}")
    if not np.all(np.isfinite(inten)):
        raise InputError(path, "volumes/intensity", "contains NaN or Inf")
    if inten.min() < 0:
        raise InputError(path, "volumes/intensity", f"negative intensity ({float(inten.min()):.3g})")
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] != p:
        raise InputError(path, "volumes/z", f"must be ({p}, d), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise InputError(path, "volumes/z", "contains NaN or Inf")
    if observed.shape != (size,) * 3:
        raise InputError(path, "volumes/observed", f"must be {(size,) * 3}, got {observed.shape}")
    observed = np.asarray(observed) != 0
    if not observed.any():
        raise InputError(path, "volumes/observed", "no observed voxel")
    if "dq_nm" not in attrs:
        raise InputError(path, "@dq_nm", "attribute missing")
    try:
        dq = float(np.asarray(attrs["dq_nm"]).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        dq = float("nan")
    if not np.isfinite(dq) or dq <= 0:
        raise InputError(path, "@dq_nm", f"must be a positive number, got {attrs['dq_nm']!r}")
    try:
        center = int(np.asarray(attrs["center"]).reshape(-1)[0]) if "center" in attrs else size // 2
    except (TypeError, ValueError, IndexError):
        center = None
    if center != size // 2:
        raise InputError(path, "@center", f"must be L // 2 = {size // 2}, got {attrs['center']}")
    size_nm = None
    if "particle_size_nm" in attrs:
        try:
            size_nm = float(np.asarray(attrs["particle_size_nm"]).reshape(-1)[0])
        except (TypeError, ValueError):
            raise InputError(path, "@particle_size_nm", f"must be a number, got {attrs['particle_size_nm']!r}") \
                from None
        if not (np.isfinite(size_nm) and size_nm > 0):
            size_nm = None
    return {"intensity": inten, "z": z, "observed": observed, "dq_nm": dq, "size": size,
            "particle_size_nm": size_nm}

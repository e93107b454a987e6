"""Features of 2D averages that are invariant to in-plane rotation.

Recipe (paper section 2.2.3, Fig. 3 A-C):

1. resample each average on a polar grid (``n_theta`` azimuthal bins over
   2 pi, radii ``r_min .. r_max`` in grid steps) with
   :func:`spicompute.landscape.polar.polar_resample`; masked bins are filled with the
   mean of the valid bins at the same radius (so a gap does not inject
   spurious harmonics);
2. divide by the pattern's mean intensity over the valid polar bins (the
   absolute scale of an average -- beam fluence, number of frames -- says
   nothing about the particle's shape);
3. FFT along the azimuth at every radius and keep the magnitudes ``|F_m(r)|``
   (an in-plane rotation by angle a multiplies ``F_m`` by ``exp(-i m a)``);
4. drop odd orders (Friedel symmetry makes them pure noise) and orders
   beyond the speckle-resolution limit at that radius: keep even
   ``m < order_a + order_b * r``;
5. optionally take ``log10(magnitude + log_floor)`` to compress the
   dynamic range;
6. standardise every feature with the training set's mean and standard
   deviation (:class:`Standardizer`).

Invariance: a rotation by a multiple of the azimuthal bin width
``2 pi / n_theta`` is a circular shift of the polar rows, so the features
agree to float32 round-off; other angles differ by the bilinear
interpolation error of resampling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from spicompute.errors import ParameterError
from spicompute.landscape.polar import polar_resample


@dataclass(frozen=True)
class FeatureParams:
    """Parameters of :func:`rotation_invariant_features` (saved with the model)."""

    r_min: int = 4
    r_max: int = 60
    n_theta: int = 180
    order_a: float = 10.0
    order_b: float = 0.25
    log: bool = True
    log_floor: float = 1e-3

    def validate(self, size: int | None = None) -> "FeatureParams":
        if int(self.r_min) < 0 or int(self.r_max) < int(self.r_min):
            raise ParameterError("regress.r_min/r_max",
                                 f"need 0 <= r_min <= r_max, got {self.r_min}, {self.r_max}")
        if size is not None and self.r_max > size // 2 - 1:
            raise ParameterError("regress.r_max",
                                 f"{self.r_max} exceeds the grid radius {size // 2 - 1}")
        if int(self.n_theta) < 4 or int(self.n_theta) % 2:
            raise ParameterError("regress.n_theta", f"must be an even number >= 4, got {self.n_theta}")
        if self.order_a <= 0 or self.order_b < 0:
            raise ParameterError("regress.order_a/order_b", "need order_a > 0 and order_b >= 0")
        if self.log and not self.log_floor > 0:
            raise ParameterError("regress.log_floor", f"must be > 0, got {self.log_floor}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureParams":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    @property
    def radii(self) -> np.ndarray:
        return np.arange(int(self.r_min), int(self.r_max) + 1, dtype=np.float64)


def order_mask(params: FeatureParams) -> np.ndarray:
    """(n_r, n_theta // 2 + 1) bool: which azimuthal orders m are kept at each radius."""
    m = np.arange(params.n_theta // 2 + 1)
    limit = params.order_a + params.order_b * params.radii
    return (m[None, :] % 2 == 0) & (m[None, :] < limit[:, None])


def feature_index(params: FeatureParams) -> tuple[np.ndarray, np.ndarray]:
    """Radius (grid steps) and order m of each feature column, two (F,) arrays."""
    ir, m = np.nonzero(order_mask(params))
    return params.radii[ir], m


def rotation_invariant_features(images: np.ndarray, valid: np.ndarray | None,
                                params: FeatureParams) -> np.ndarray:
    """Unstandardised features of square patterns, (M, F) float32.

    images : (M, L, L) intensities; valid : (M, L, L) bool or None.
    F = ``order_mask(params).sum()``.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (M, L, L), got {images.shape}")
    params.validate(images.shape[1])
    polar, pvalid = polar_resample(images, valid, params.radii, int(params.n_theta))
    polar = polar.astype(np.float64)
    count = pvalid.sum(axis=2, keepdims=True)
    ring_mean = np.where(pvalid, polar, 0.0).sum(axis=2, keepdims=True) / np.maximum(count, 1)
    polar = np.where(pvalid, polar, ring_mean)
    scale = np.where(pvalid, polar, 0.0).sum(axis=(1, 2)) / np.maximum(pvalid.sum(axis=(1, 2)), 1)
    polar /= np.where(scale > 0, scale, 1.0)[:, None, None]
    mag = np.abs(np.fft.rfft(polar, axis=2)) / params.n_theta  # (M, n_r, n_theta//2+1)
    feats = mag[:, order_mask(params)]
    if params.log:
        feats = np.log10(feats + params.log_floor)
    return feats.astype(np.float32)


@dataclass
class Standardizer:
    """Per-column affine standardisation ``(x - mean) / std``."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, eps: float = 1e-8) -> "Standardizer":
        x = np.asarray(x, dtype=np.float64)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > eps, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "Standardizer":
        return cls(np.asarray(data["mean"], dtype=np.float64), np.asarray(data["std"], dtype=np.float64))

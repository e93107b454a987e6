"""The particle family connected to the cube end, found without truth.

The averages of one family (the cube -> sphere melting sequence of the
paper) lie along a chain in common-line space: each is most similar to
its neighbours along the sequence.  Contaminants (dimers, rods, aggregates)
form their own compact groups, touching the chain through a few chance
similarities.  A plain k-nearest-neighbour graph chains such groups into
the family through one bridging pair; a **shared-nearest-neighbour (SNN)**
graph does not: two averages are linked only when they are in each other's
neighbourhood *and* share at least ``min_shared`` of their ``k`` nearest
neighbours, which a chance bridge between two groups does not.

Neighbours are found in the CLPCA space (the first principal components
of the common-line CC rows, ``pc_1..pc_3`` of the embed stage): on two
400-photon simulated sets the full CC rows (Pearson correlation of rows)
chained aggregates into the family at every setting that kept the chain
whole, while three components, which average out the rows' shot noise,
separated them over a wide range of ``k``.

The family is the SNN-connected component holding most of the cube end:
the averages with the highest orientation-fit gain against a cube (the
``seed_fraction`` of usable averages with the highest gain).  The sphere
end (gain ~ 1) is kept through the chain, not through its gain.

At low photon counts (400 + 50 background per frame) the SNN graph is not
enough: contaminant averages are noisy, spread thinly around the chain
rather than in compact groups, and some of them pass the shared-neighbour
test into the family (purity 0.82 on such a set).  They are *sparse*: the
family's averages sit in a dense chain, while a contaminant's k-th nearest
neighbour is far.  A second, complementary test therefore drops the
family members whose k-th neighbour distance (log) lies more than
``density_mads`` robust standard deviations (1.4826 MAD) above the family's
median (:func:`sparse_members`).  Compact contaminant groups are removed
by the SNN graph, sparse ones by density.  Measured on three simulated sets
(docs/vae_volumes.md): purity 0.82 -> 0.96 at 400 photons, 0.93 -> 0.97
and 1.00 -> 1.00 at 1,500, recall >= 0.94 in all.

A shared-neighbour link can still be a chance bridge when a small group is
wedged between two others: with the refined EMC background (1,500 photons)
the rods and aggregates joined the family through **one** SNN link between
a rod and a dimer (purity 0.85).  That bridge closed no triangle of links.
``support_fraction`` (off by default) keeps a link only when at least that
share of k averages are SNN-linked to both its ends (:func:`supported_links`):
0.1 x k fixed that landscape, but on a 90-average landscape of a coarse
detector it cut the chain's sphere half off (recall 1.00 -> 0.57), so the
default removes the bridge's ends instead: see the next paragraph.

What no test in common-line space drops are **dimers** (two touching cubes):
they fit a cube as well as a cube does and sit beside the cube end.  They
are elongated, the family is not: a cube, a melted cube and a sphere have an
isotropic gyration tensor, so every view of them is round at low q, while
a dimer's central speckle is not (:mod:`spicompute.orient.gyration`).
Averages whose low-q anisotropy exceeds ``anisotropy_ratio`` x the cube-end
seed's median (:func:`elongated_members`) are left out of the graph, dimers
and rods alike, so they can neither join nor bridge: purity 0.93-0.97 ->
1.000 on eight simulated sets (two photon levels, two seeds, both EMC
background estimates; the rod-dimer bridge above included), recall >= 0.94.
Where the detector does not resolve the Guinier range the column is NaN
and the test is off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class Family:
    """Result of :func:`find_family` for N averages.

    keep:       (N,) bool   in the family connected to the cube end
    component:  (N,) int    SNN-connected component (-1: not usable)
    seed:       (N,) bool   the cube-end seed averages (highest gain)
    k:          neighbours per average used
    min_shared: shared neighbours needed for a link
    sparse:     (N,) bool   in the cube-end component but dropped as sparse (:func:`sparse_members`)
    min_support: SNN-linked averages a link needs in common (:func:`supported_links`)
    anisotropic: (N,) bool  in the cube-end component but elongated at low q (:func:`elongated_members`)
    anisotropy_limit: the low-q anisotropy above which a member is elongated (None: test off)
    """

    keep: np.ndarray
    component: np.ndarray
    seed: np.ndarray
    k: int
    min_shared: int
    sparse: np.ndarray | None = None
    min_support: int = 0
    anisotropic: np.ndarray | None = None
    anisotropy_limit: float | None = None


def clpca_similarity(coords: np.ndarray) -> np.ndarray:
    """Negative squared Euclidean distance in CLPCA space: (N, c) -> (N, N), larger = closer."""
    x = np.asarray(coords, np.float64)
    sq = (x * x).sum(1)
    return -(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T))


def auto_k(n_usable: int) -> int:
    """Neighbours per average: 2 sqrt of the usable count, at least 10, at most 60.

    The contaminant groups and the family's local density both grow with
    the number of averages; sqrt keeps a neighbourhood small next to the
    family (a few per cent of it) but larger than chance bridges.
    """
    return int(np.clip(round(2.0 * np.sqrt(max(n_usable, 1))), 10, 60))


def _candidates(similarity: np.ndarray, usable: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """(similarity with non-usable columns and self at -inf, k clipped to the usable count - 1)."""
    s = np.array(similarity, np.float64)
    s[:, ~usable] = -np.inf
    np.fill_diagonal(s, -np.inf)
    return s, int(min(k, max(int(usable.sum()) - 1, 1)))


def snn_adjacency(similarity: np.ndarray, usable: np.ndarray, k: int, min_shared: int) -> np.ndarray:
    """(N, N) bool SNN links: i, j among each other's k nearest and sharing >= min_shared of them."""
    usable = np.asarray(usable, bool)
    s, k = _candidates(similarity, usable, k)
    n = len(s)
    nn = np.argpartition(-s, k - 1, axis=1)[:, :k]
    member = np.zeros((n, n), bool)
    member[np.repeat(np.arange(n), k), nn.ravel()] = True
    member[~usable] = False
    m = member.astype(np.float32)
    shared = m @ m.T
    adj = member & member.T & (shared >= min_shared)
    adj[~usable] = False
    adj[:, ~usable] = False
    return adj


def supported_links(adjacency: np.ndarray, min_support: int) -> np.ndarray:
    """(N, N) bool: the links of ``adjacency`` (N, N) bool, symmetric, that at least
    ``min_support`` averages are linked to at both ends (closing that many triangles).

    A chance bridge between two groups joins averages whose linked neighbours
    lie in different groups: it closes no triangle.  0: every link is kept.
    """
    adjacency = np.asarray(adjacency, bool)
    if min_support <= 0:
        return adjacency.copy()
    a = adjacency.astype(np.float32)   # exact integer counts up to 2^24 averages
    return adjacency & ((a @ a) >= min_support)


def kth_neighbour_distance(similarity: np.ndarray, usable: np.ndarray, k: int) -> np.ndarray:
    """(N,) distance from each average to its k-th nearest usable other average.

    similarity: (N, N) :func:`clpca_similarity` (minus squared distance).
    """
    s, k = _candidates(similarity, np.asarray(usable, bool), k)
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1]
    return np.sqrt(np.maximum(-kth, 0.0))


# An end of a 1D chain sees neighbours on one side only: its k-th neighbour lies
# about twice as far as in the middle (up to 2.5x with noise, measured on the
# synthetic chains of tests/landscape/test_family.py).  Sparser than this
# factor x the median is never explained by being an end.
CHAIN_END_RATIO = 3.0


def sparse_members(similarity: np.ndarray, usable: np.ndarray, members: np.ndarray, k: int,
                   n_mads: float, min_ratio: float = CHAIN_END_RATIO) -> np.ndarray:
    """(N,) bool: the ``members`` whose k-th neighbour lies unusually far.

    log(k-th neighbour distance) above the members' median by more than
    ``n_mads`` x 1.4826 MAD of the members (a robust z-score; the log makes
    the spread scale-free) *and* by more than log(``min_ratio``), so that the
    ends of a very evenly sampled chain (tiny MAD) are not cut.  Neighbours
    are searched among all ``usable`` averages, so a contaminant sitting next
    to its own kind is not sparse (the SNN graph handles such groups).
    """
    members = np.asarray(members, bool)
    out = np.zeros(len(members), bool)
    if members.sum() < 3:
        return out
    logd = np.log(np.maximum(kth_neighbour_distance(similarity, usable, k), 1e-300))
    centre = np.median(logd[members])
    spread = 1.4826 * np.median(np.abs(logd[members] - centre))
    out[members] = logd[members] > centre + max(n_mads * spread, np.log(min_ratio))
    return out


def elongated_members(anisotropy: np.ndarray, members: np.ndarray, seed: np.ndarray,
                      ratio: float) -> tuple[np.ndarray, float | None]:
    """((N,) bool: the ``members`` more anisotropic at low q than ``ratio`` x the seed's median,
    that limit or None).

    anisotropy: (N,) :func:`spicompute.orient.gyration.low_q_anisotropy` (NaN: unknown,
    never dropped).  The limit scales with the cube end's own anisotropy, so a family
    of elongated particles (a large seed median) loses nothing; no limit (None) when the
    seed's median is not a positive number.
    """
    anisotropy = np.asarray(anisotropy, np.float64)
    members = np.asarray(members, bool)
    seed_values = anisotropy[np.asarray(seed, bool)]
    seed_values = seed_values[np.isfinite(seed_values)]
    scale = float(np.median(seed_values)) if seed_values.size else np.nan
    if not scale > 0:
        return np.zeros(len(members), bool), None
    limit = ratio * scale
    with np.errstate(invalid="ignore"):
        return members & (anisotropy > limit), limit


def cube_end_seed(gain: np.ndarray, usable: np.ndarray, seed_fraction: float) -> np.ndarray:
    """(N,) bool: the ``seed_fraction`` of the usable averages (at least 3) with the highest gain."""
    usable = np.asarray(usable, bool)
    g = np.where(usable & np.isfinite(gain), np.asarray(gain, np.float64), -np.inf)
    n_use = int(usable.sum())
    seed = np.zeros(len(g), bool)
    seed[np.argsort(-g, kind="stable")[:min(n_use, max(3, int(round(seed_fraction * n_use))))]] = True
    return seed


def find_family(similarity: np.ndarray, gain: np.ndarray, usable: np.ndarray, k: int | None = None,
                shared_fraction: float = 0.5, seed_fraction: float = 0.05,
                density_mads: float | None = 2.0, support_fraction: float = 0.0,
                anisotropy: np.ndarray | None = None, anisotropy_ratio: float | None = 10.0) -> Family:
    """The SNN-connected family holding most of the cube-end seed.

    similarity: (N, N), larger = more alike (e.g. :func:`row_similarity`);
    gain: (N,) orientation-fit gain against a cube (best / mean CC, >= 1);
    usable: (N,) bool, averages allowed in the graph;
    k: neighbours (None: :func:`auto_k`); shared_fraction: share of the k
    neighbours two averages must share to be linked; seed_fraction: share of
    the usable averages (at least 3) with the highest gain that mark the cube end;
    density_mads: drop the component's sparse members (:func:`sparse_members`
    with the same k); None: keep the whole SNN component;
    support_fraction: a link needs ceil(support_fraction x k) averages linked to
    both its ends (:func:`supported_links`; 0: off, the default);
    anisotropy: (N,) low-q anisotropy of each average (None: not measured) and
    anisotropy_ratio: averages above this x the cube-end seed's median
    (:func:`elongated_members`) are left out of the graph, so they can neither
    join the family nor bridge other groups into it (None: off).
    """
    usable = np.asarray(usable, bool)
    gain = np.asarray(gain, np.float64)
    if not usable.any():
        raise ValueError("no usable average")
    anisotropic, limit = np.zeros(len(usable), bool), None
    if anisotropy is not None and anisotropy_ratio is not None:
        anisotropic, limit = elongated_members(anisotropy, usable, cube_end_seed(gain, usable, seed_fraction),
                                               anisotropy_ratio)
        if not (usable & ~anisotropic).any():
            anisotropic, limit = np.zeros(len(usable), bool), None
    usable = usable & ~anisotropic
    n_use = int(usable.sum())
    k = auto_k(n_use) if k is None else int(k)
    min_shared = max(1, int(np.ceil(shared_fraction * k)))
    min_support = int(np.ceil(support_fraction * k))
    adj = supported_links(snn_adjacency(similarity, usable, k, min_shared), min_support)
    _, labels = connected_components(csr_matrix(adj), directed=False)
    labels = np.where(usable, labels, -1)
    seed = cube_end_seed(gain, usable, seed_fraction)
    values, counts = np.unique(labels[seed], return_counts=True)
    # ties: the component with the larger total size (the chain, not a stray pair)
    sizes = np.bincount(labels[usable])[values]
    best = values[np.lexsort((sizes, counts))[-1]]
    keep = labels == best
    sparse = np.zeros(len(keep), bool)
    if density_mads is not None:
        sparse = sparse_members(similarity, usable, keep, k, density_mads)
        keep = keep & ~sparse
    return Family(keep=keep, component=labels, seed=seed, k=k, min_shared=min_shared, sparse=sparse,
                  min_support=min_support, anisotropic=anisotropic, anisotropy_limit=limit)

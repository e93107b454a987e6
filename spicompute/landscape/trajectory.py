"""Paths through the VAE latent space between two points (trajectories).

A straight path is the segment between the end points.  With a latent of
d >= 2 dimensions a straight segment may cross regions no average occupies,
where the decoder extrapolates; the ``graph`` path instead follows the data:
the shortest path (Euclidean edge lengths) through the k-nearest-neighbour
graph of the encoded averages, from the average nearest the start to the one
nearest the end, with the end points themselves at both ends.  Either path is
resampled at ``n_points`` positions evenly spaced in arc length.
"""

from __future__ import annotations

import numpy as np


def resample_polyline(vertices: np.ndarray, n_points: int) -> np.ndarray:
    """(n_points, d) points evenly spaced in arc length along a polyline of (V, d) vertices."""
    vertices = np.asarray(vertices, np.float64)
    seg = np.linalg.norm(np.diff(vertices, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] <= 0:
        raise ValueError("the path has zero length (start and end are the same point)")
    s = np.linspace(0.0, arc[-1], n_points)
    return np.stack([np.interp(s, arc, vertices[:, k]) for k in range(vertices.shape[1])], axis=1)


def straight_path(start: np.ndarray, end: np.ndarray, n_points: int) -> np.ndarray:
    """(n_points, d) evenly spaced points from ``start`` to ``end``."""
    return resample_polyline(np.stack([np.asarray(start, np.float64), np.asarray(end, np.float64)]), n_points)


def bridge_components(graph, z: np.ndarray):
    """Join the pieces of a symmetric distance graph by their shortest gaps (each in turn).

    A k-nearest-neighbour graph falls apart where the averages thin out; a path may cross
    such a gap, but only by its shortest link (as a minimum spanning tree would).
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    graph = graph.tolil()
    n_comp, label = connected_components(graph, directed=False)
    while n_comp > 1:
        inside = np.flatnonzero(label == label[0])
        outside = np.flatnonzero(label != label[0])
        dist, idx = cKDTree(z[outside]).query(z[inside])
        a = int(np.argmin(dist))
        i, j = inside[a], outside[idx[a]]
        graph[i, j] = graph[j, i] = max(float(dist[a]), 1e-12)
        n_comp, label = connected_components(graph, directed=False)
    return graph.tocsr()


def graph_path(latents: np.ndarray, start: np.ndarray, end: np.ndarray, n_points: int,
               neighbours: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A path from ``start`` to ``end`` through the data's k-nearest-neighbour graph.

    latents : (M, d) encoded averages (latent means)
    Returns (points (n_points, d), visited (V,) indices into ``latents`` of the averages
    the path passes through).  Pieces of the graph are joined by their shortest gaps.
    """
    from scipy.sparse.csgraph import dijkstra
    from sklearn.neighbors import kneighbors_graph

    z = np.asarray(latents, np.float64)
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    k = int(min(neighbours, len(z) - 1))
    if k < 1:
        raise ValueError("need at least two encoded averages for a graph path")
    graph = kneighbors_graph(z, k, mode="distance")
    graph = bridge_components(graph.maximum(graph.T), z)  # symmetric, and one piece
    first = int(np.argmin(np.linalg.norm(z - start, axis=1)))
    last = int(np.argmin(np.linalg.norm(z - end, axis=1)))
    dist, pred = dijkstra(graph, directed=False, indices=first, return_predecessors=True)
    visited = [last]
    while visited[-1] != first:
        visited.append(int(pred[visited[-1]]))
    visited = np.asarray(visited[::-1], np.int64)
    vertices = np.concatenate([start[None], z[visited], end[None]])
    keep = np.concatenate([[True], np.linalg.norm(np.diff(vertices, axis=0), axis=1) > 0])
    return resample_polyline(vertices[keep], n_points), visited

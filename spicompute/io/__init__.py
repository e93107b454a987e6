"""File formats only: readers and writers, no science.

Our frames HDF5 (:mod:`~spicompute.io.frames`, streamed: :mod:`~spicompute.io.stream`), CXI,
Dragonfly photon/detector files and 2D output, the EuXFEL AGIPD geometry, class averages,
volumes, truth, MRC, results tables, provenance stamps, atomic writes and HDF5 in memory
(:mod:`~spicompute.io.storage`).  May import: ``errors``, ``geometry`` and each other.
"""

"""File formats: our frames/averages HDF5, CXI, Dragonfly, results tables."""

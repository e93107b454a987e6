"""Which input format a file is."""

from __future__ import annotations

from pathlib import Path

from spicompute.errors import InputError
from spicompute.io.cxi import is_cxi
from spicompute.io.dragonfly import is_dragonfly_photons
from spicompute.io.frames import open_h5


def detect_format(path: str | Path, dataset: str = "") -> str:
    """'cxi', 'dragonfly' or 'hdf5' from the file's content."""
    with open_h5(path) as h5:
        if is_cxi(h5):
            return "cxi"
        if is_dragonfly_photons(h5):
            return "dragonfly"
        if dataset and dataset in h5:
            return "hdf5"
        if dataset:
            raise InputError(path, dataset, "dataset missing (data.dataset)")
        if "frames" in h5 and "detector" in h5:
            return "frames"
    raise InputError(path, dataset or None,
                     "unrecognised content: no entry_1/data_1/data (CXI), no place_ones/"
                     "place_multi/count_multi (Dragonfly), and data.dataset not given or absent")

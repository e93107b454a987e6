"""Getting frames in: any supported input -> our photon-sparse frames file (the ``frames`` stage).

- :mod:`~spicompute.ingest.formats`     which format a file is (CXI, Dragonfly, our frames, plain HDF5)
- :mod:`~spicompute.ingest.files`       ingest of one file into a FrameSet (checks, empty frames)
- :mod:`~spicompute.ingest.blockwise`   the same, block by block, for files too large to hold
- :mod:`~spicompute.ingest.euxfel`      European XFEL run directories: run -> partitions -> photons + hits -> frames file
- :mod:`~spicompute.ingest.hitfinding`  photon conversion and lit-pixel hit finding (any pixel detector)
- :mod:`~spicompute.ingest.report`      the per-frame hits table and lit-pixel histogram of an ingest

May import: ``errors``, ``params``, ``geometry``, ``execution``, ``io`` (the readers and writers).
"""

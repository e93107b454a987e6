"""Getting frames in: any supported input -> our photon-sparse frames file (the ``frames`` stage).

- :mod:`~spicompute.ingest.formats`     which format a file is (CXI, Dragonfly, our frames, plain HDF5)
- :mod:`~spicompute.ingest.files`       ingest of one file into a FrameSet (checks, empty frames)
- :mod:`~spicompute.ingest.blockwise`   the same, block by block, for files too large to hold
- :mod:`~spicompute.ingest.euxfel_run`  a European XFEL run: configuration, files, photon energy, masks, partitions
- :mod:`~spicompute.ingest.euxfel_convert`  its partitions -> photon-sparse frames + hits (in-process or on Dask)
- :mod:`~spicompute.ingest.euxfel`      the run -> our frames file and the hits table
- :mod:`~spicompute.ingest.hitfinding`  photon conversion and lit-pixel hit finding (any pixel detector)
- :mod:`~spicompute.ingest.report`      the per-frame hits table and lit-pixel histogram of an ingest

May import: ``errors``, ``params``, ``geometry``, ``execution``, ``io`` (the readers and writers).
"""

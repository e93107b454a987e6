"""Bad-input corpus: every input path of the pipeline, broken in every way we know.

Each case builds a small broken input in its own folder, runs the real command line
(``python -m spicompute <stage> ...`` in a subprocess, as ``dvc.yaml`` does) and asserts the
project's rule for bad input: exit status 2, exactly one non-empty line on stderr naming the file
and/or field or the parameter, no traceback, and no output file nor temporary file left in the
output folder (``corpus.check_fails_cleanly``).

One module per input family, all drawing on ``corpus`` (the intact inputs, the broken-file table,
the stage command lines). Every HDF5 input is crossed with every file-level defect of
``corpus.FILE_DEFECTS``; field-level defects are the family's own:

- ``test_plain_hdf5``, ``test_cxi``, ``test_dragonfly``: the ``frames`` stage's input file in each
  format (with its ``data.geometry`` file, the Dragonfly detector file);
- ``test_frames_file``: our frames file, as ``classify2d`` reads it;
- ``test_averages``: the averages file (``ccmatrix``, ``orient``);
- ``test_reference``: the reference volume of ``orient``;
- ``test_selections``: selection files (``select`` mode ``file``);
- ``test_dragonfly2d``: imported Dragonfly 2D output (``import-dragonfly2d``);
- ``test_params``: ``params.yaml`` of every stage;
- ``test_coverage``: every family covers the defect kinds ``corpus.COVERAGE`` claims for it.

Each family also runs its intact inputs through the same command (``slow``: whole stages), so
every error of the corpus is caused by its defect.

This folder is a package so that its modules and its ``conftest`` import as ``bad_inputs.*`` and
shadow neither ``tests/conftest.py`` (imported as ``conftest`` by other tests) nor a test module
of the same name elsewhere.
"""

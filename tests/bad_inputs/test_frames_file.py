"""Our frames file (``frames/counts``, ``detector/q``, ``detector/mask`` ...) as ``classify2d``
reads it."""

from __future__ import annotations

from functools import partial

import numpy as np

from .corpus import Cases, cases_test, classify_cmd, delete, edited_copy, poke, replace

CASES = Cases()


def classify_input(base, d, path):
    return classify_cmd(d, path)


CASES.add_file_defects("frames-file", "frames.h5", classify_input)


def edited_frames(base, d, *, edits, needles):
    """Case: classify2d on a copy of the intact frames.h5 broken by ``edits``."""
    p = edited_copy(base / "frames.h5", d, *edits)
    return classify_cmd(d, p), ["frames.h5", *needles]


CASES.add("frames-file-detector-missing", "missing-field",
          partial(edited_frames, edits=[delete("detector")], needles=["detector", "missing"]))
CASES.add("frames-file-counts-missing", "missing-field",
          partial(edited_frames, edits=[delete("frames/counts")], needles=["frames/counts", "missing"]))
CASES.add("frames-file-mask-wrong-shape", "wrong-shape",
          partial(edited_frames, edits=[replace("detector/mask", np.ones(10, np.uint8))],
                  needles=["detector/mask", "shape"]))
CASES.add("frames-file-negative-counts", "negative",
          partial(edited_frames, edits=[poke("frames/counts", (0, 5), -3)], needles=["frames/counts", "negative"]))
CASES.add("frames-file-q-nan", "non-finite",
          partial(edited_frames, edits=[poke("detector/q", 4, np.nan)], needles=["detector/q", "NaN"]))


def frames_subset(base, d, *, keep, needles):
    """Case: classify2d on the intact frames reduced to the frames ``keep``."""
    from spicompute.io.frames import read_frames, write_frames

    write_frames(d / "frames.h5", read_frames(base / "frames.h5").subset(keep))
    return classify_cmd(d, d / "frames.h5"), needles


CASES.add("frames-file-zero-frames", "nothing-left",
          partial(frames_subset, keep=np.arange(0), needles=["frames.h5", "no frames"]))
# one frame is a valid frames file, but too few to sort into classify2d.n_models = 2 classes
CASES.add("frames-file-single-frame", "nothing-left",
          partial(frames_subset, keep=[0], needles=["classify2d.n_models", "frames"]))


test_bad_input_fails_cleanly = cases_test(CASES)

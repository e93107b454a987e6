"""Streaming frames from the file: lazy reading, chunked writing, and 2D EMC on streamed frames giving
bitwise the in-memory result (same rows, pixels, blocks, float32 counts and kernels)."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from test_emc2d_data import make_frames  # noqa: E402

from spicompute.emc2d.run import EMCConfig, run_bootstrap  # noqa: E402
from spicompute.errors import InputError, ParameterError  # noqa: E402
from spicompute.io.frames import read_frames, write_frames  # noqa: E402
from spicompute.io.stream import FrameFile, write_sparse_frames_stream  # noqa: E402


sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module", params=[(41, 300.0), (33, 60.0)], ids=["41px-300ph", "33px-60ph"])
def frames_file(request, tmp_path_factory):
    """Two geometries (detector sizes) and two photon levels, written photon-sparse."""
    size, photons = request.param
    fs = make_frames(n_frames=260, photons=photons, seed=5, size=size)[0]
    path = tmp_path_factory.mktemp("stream") / "frames.h5"
    write_frames(path, fs, layout="sparse")
    return fs, path


def test_lazy_reading_equals_the_whole_file(frames_file):
    fs, path = frames_file
    ff = FrameFile(path)
    assert (ff.n_frames, ff.n_pixels, ff.layout) == (fs.n_frames, fs.n_pixels, "sparse")
    assert np.array_equal(ff.frame_id, fs.frame_id)
    blocks = [b for _, _, b in ff.iter_blocks(37)]
    assert (sp.vstack(blocks) != fs.counts).nnz == 0
    rows = np.array([0, 3, 4, 100, 259])
    assert (ff.take(rows) != fs.counts[rows]).nnz == 0
    assert np.array_equal(ff.validate(50), fs.photons_per_frame())


def test_chunked_writer_round_trips(frames_file, tmp_path):
    fs, _ = frames_file
    path = tmp_path / "chunked.h5"
    blocks = (fs.counts[a:a + 70] for a in range(0, fs.n_frames, 70))
    nnz = write_sparse_frames_stream(path, blocks, fs.detector, n_frames=fs.n_frames)
    assert nnz == fs.counts.nnz
    back = read_frames(path)   # the ordinary reader accepts it
    assert (back.counts != fs.counts).nnz == 0
    assert np.array_equal(back.detector.q, fs.detector.q)
    with h5py.File(path) as h5:
        assert np.array_equal(h5["frames/photons"][()], fs.photons_per_frame())
    with pytest.raises(ValueError, match="announced"):
        write_sparse_frames_stream(tmp_path / "short.h5", iter([fs.counts[:10]]), fs.detector, n_frames=20)
    assert not (tmp_path / "short.h5").exists()


def test_sizes_claimed_but_not_stored_fail_at_open(frames_file, tmp_path):
    fs, path = frames_file
    bad = tmp_path / "claims.h5"
    bad.write_bytes(path.read_bytes())
    with h5py.File(bad, "a") as h5:
        ptr = h5["frames/indptr"][()]
        del h5["frames/indptr"]
        h5["frames/indptr"] = np.concatenate([ptr[:-1], [ptr[-1] * 1000]])
    with pytest.raises(InputError, match="frames/indptr"):
        FrameFile(bad)
    with h5py.File(bad, "a") as h5:
        del h5["frames/indptr"]
        h5["frames/indptr"] = np.arange(10)
    with pytest.raises(InputError, match="frames/indptr"):
        FrameFile(bad)
    with h5py.File(bad, "a") as h5:
        del h5["frames/indptr"]
        ptr[5] = ptr[7] + 1
        h5["frames/indptr"] = ptr
    with pytest.raises(InputError, match="decreases at frame"):
        FrameFile(bad).validate(64)


@pytest.mark.slow
@pytest.mark.parametrize("n_shards, block", [(1, 64), (3, 50)])
def test_streamed_emc_is_bitwise_the_in_memory_one(frames_file, n_shards, block):
    fs, path = frames_file
    cfg = dict(n_models=3, n_rot=16, n_runs=2, subset_fraction=0.8, max_iter=3, min_iter=3, device="cpu",
               n_shards=n_shards, block_frames=block, prob_min=1e-3)
    mem = run_bootstrap(fs, EMCConfig(**cfg, stream=False))
    ff = FrameFile(path)
    got = run_bootstrap(ff, EMCConfig(**cfg, stream=True))
    assert np.array_equal(got.models, mem.models)
    assert np.array_equal(got.weight, mem.weight)
    assert np.array_equal(got.occupancy, mem.occupancy)
    for a, b in zip(got.frames, mem.frames):
        for key in ("index", "model", "rotation_deg", "posterior_max", "scale"):
            assert np.array_equal(a[key], b[key]), key
    assert got.histories[0][-1]["loglik"] == mem.histories[0][-1]["loglik"]


@pytest.mark.slow
def test_streamed_pruned_emc_with_the_kept_entry_numerator_is_bitwise_the_in_memory_one(frames_file, monkeypatch):
    """The kept-entry numerator reads each block's counts from the shard (``count_block``): streamed
    and in memory, pruned iterations included, the same bits."""
    import spicompute.emc2d.steps as emc

    monkeypatch.setattr(emc, "SPARSE_FRAC", 1.0)    # every sharp or pruned block scatters its entries
    fs, path = frames_file
    cfg = dict(n_models=3, n_rot=16, n_runs=1, subset_fraction=1.0, max_iter=4, min_iter=4, device="cpu",
               n_shards=2, block_frames=50, prob_min=1e-3, prune_mass=1e-6, prune_refresh=3)
    mem = run_bootstrap(fs, EMCConfig(**cfg, stream=False))
    got = run_bootstrap(FrameFile(path), EMCConfig(**cfg, stream=True))
    assert min(r["e_step_share"] for r in mem.histories[0]) < 1.0      # a pruned iteration ran
    assert np.array_equal(got.models, mem.models)
    assert np.array_equal(got.frames[0]["model"], mem.frames[0]["model"])


def test_stream_parameter(tmp_path):
    assert EMCConfig(stream="auto").stream == "auto"
    with pytest.raises(ParameterError, match="classify2d.stream"):
        EMCConfig.from_params({"stream": "yes"})
    with pytest.raises(ParameterError, match="classify2d.engine"):
        EMCConfig.from_params({"stream": True, "engine": "dense"})
    from spicompute.emc2d.run import STREAM_AUTO_FRAMES, use_stream

    assert not use_stream(EMCConfig(), STREAM_AUTO_FRAMES) and use_stream(EMCConfig(), STREAM_AUTO_FRAMES + 1)
    assert use_stream(EMCConfig(stream=True), 10) and not use_stream(EMCConfig(stream=False), 10**7)
    assert "stream" not in EMCConfig().trajectory_key()  # a checkpoint resumes either way


def test_classify2d_stage_streamed_equals_in_memory(frames_file, tmp_path):
    from spicompute.cli import main
    from spicompute.io.averages import read_averages

    fs, path = frames_file
    out = {}
    for stream in ("false", "true"):
        (tmp_path / "params.yaml").write_text(
            "classify2d:\n  n_models: 3\n  n_rot: 12\n  n_runs: 1\n  max_iter: 2\n  min_iter: 2\n"
            f"  device: cpu\n  stream: {stream}\n")
        t = str(tmp_path)
        assert main(["classify2d", "--params", f"{t}/params.yaml", "--frames", str(path), "-q",
                     "--out", f"{t}/avg_{stream}.h5", "--frames-table", f"{t}/f_{stream}.parquet",
                     "--part", f"{t}/p_{stream}.parquet", "--checkpoints", f"{t}/ck_{stream}",
                     "--metrics", f"{t}/m_{stream}.json", "--live", ""]) == 0
        out[stream] = read_averages(tmp_path / f"avg_{stream}.h5")
    assert np.array_equal(out["true"].intensity, out["false"].intensity)
    import json
    import pandas as pd

    assert json.loads((tmp_path / "m_true.json").read_text())["streamed"] is True
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "f_true.parquet"),
                                  pd.read_parquet(tmp_path / "f_false.parquet"))


def test_frames_stage_copies_a_large_frames_file_block_by_block(frames_file, tmp_path, monkeypatch):
    """Above STREAM_INGEST_FRAMES the frames stage validates and copies our layout in blocks (lowered
    here to 100 frames); a frame without photons on good pixels is an error or dropped, as in ingest."""
    import spicompute.ingest.blockwise as stream
    from spicompute.cli import main

    fs, _ = frames_file
    counts = fs.counts.tolil()
    counts[7, :] = 0                                   # an empty frame
    src = tmp_path / "big.h5"
    write_frames(src, type(fs)(counts.tocsr(), fs.frame_id + 1000, fs.detector), layout="sparse")
    monkeypatch.setattr(stream, "STREAM_INGEST_FRAMES", 100)
    t = str(tmp_path)
    args = ["frames", "--params", f"{t}/params.yaml", "-q", "--out", f"{t}/frames.h5", "--truth", f"{t}/truth.h5"]
    (tmp_path / "params.yaml").write_text(f"data:\n  input: {src}\n")
    assert main(args) == 2 and not (tmp_path / "frames.h5").exists()
    (tmp_path / "params.yaml").write_text(f"data:\n  input: {src}\n  empty_frames: drop\n")
    calls = []
    monkeypatch.setattr(stream, "write_sparse_frames_stream",
                        lambda *a, **k: calls.append(1) or write_sparse_frames_stream(*a, **k))
    assert main(args) == 0 and calls
    out = read_frames(tmp_path / "frames.h5")
    keep = np.setdiff1d(np.arange(fs.n_frames), [7])
    assert np.array_equal(out.frame_id, fs.frame_id[keep] + 1000)
    assert (out.counts != fs.counts[keep]).nnz == 0
    assert (tmp_path / "truth.h5").exists()
    (tmp_path / "params.yaml").write_text(f"data:\n  input: {src}\n  empty_frames: dorp\n")
    assert main(args) == 2

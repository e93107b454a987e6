"""The frames stage on a EuXFEL run directory (extra-data mock runs with injected photons)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from spicompute.errors import ParameterError  # noqa: E402
from spicompute.ingest.euxfel import ingest_run
from spicompute.ingest.euxfel_convert import sparse_photons, threshold_sample
from spicompute.ingest.euxfel_run import parse_slice
from spicompute.ingest.hitfinding import to_photons  # noqa: E402
from spicompute.io.euxfel import agipd_q, load_agipd_geometry, static_mask  # noqa: E402
from spicompute.io.frames import read_frames  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.ingest.euxfel_mock import inject, make_proc_run  # noqa: E402

pytestmark = pytest.mark.slow  # whole-stage or whole-pipeline runs: `make test-fast` skips them

pytest.importorskip("extra_data")

E_KEV = 6.0
DIST = 705.0


@pytest.fixture(scope="module")
def q_default():
    return agipd_q(load_agipd_geometry(None), DIST, E_KEV)


@pytest.fixture(scope="module")
def two_sequence_run(tmp_path_factory, q_default):
    """2 sequence files x 4 trains x 32 pulses = 256 frames with Poisson background
    (3e-4 photons/pixel, ~300 lit pixels), cube hits (~2500 photons) on every 8th frame."""
    path = tmp_path_factory.mktemp("run2seq")
    make_proc_run(path, n_seq=2, trains_per_seq=4, pulses=32)
    frames = np.arange(0, 256)
    hits = frames[3::8]
    truth = inject(path, frames, q_default, hits=hits, bg=3e-4, hit_photons=2500, seed=5)
    return path, frames, hits, truth


def _data(path, **kw):
    d = dict(input=str(path), distance_mm=DIST, photon_energy_kev=E_KEV)
    d.update(kw)
    return d


def test_sparse_photons_equal_dense_rule():
    rng = np.random.default_rng(0)
    vals = (rng.poisson(0.05, size=(3, 512, 128)) * E_KEV + rng.normal(0, 0.8, (3, 512, 128))).astype(np.float32)
    vals[0, 0, :4] = [np.nan, np.inf, -np.inf, 0.5 * E_KEV]  # exactly the threshold -> 1 photon
    good = static_mask(1)[3]
    pm = (rng.random((3, 512, 128)) < 0.01).astype(np.uint32)
    f, p, c = sparse_photons(vals, E_KEV, 0.5, good, pm)
    dense = to_photons(vals, E_KEV, 0.5, mask=good[None] & (pm == 0)).reshape(3, -1)
    got = np.zeros_like(dense)
    got[f, p] = c
    np.testing.assert_array_equal(got, dense)
    # integer ADU (raw) input
    adu = np.clip(np.round(np.nan_to_num(vals, posinf=0, neginf=0) * 10), 0, 65535).astype(np.uint16)
    f, p, c = sparse_photons(adu, 10 * E_KEV, 0.5, good)
    got = np.zeros_like(dense)
    got[f, p] = c
    np.testing.assert_array_equal(got, to_photons(adu, 10 * E_KEV, 0.5, mask=good[None]).reshape(3, -1))


def test_run_to_hits_frames_file(two_sequence_run, tmp_path):
    path, frames, hits, truth = two_sequence_run
    m = ingest_run(_data(path), tmp_path / "frames.h5", tmp_path / "hits.parquet")
    edges, hist = m.pop("_histogram")
    assert m["frames_read"] == 256 and m["sequence_partitions"] == 2 and m["trains_read"] == 8
    table = pd.read_parquet(tmp_path / "hits.parquet")
    assert list(table.columns) == ["frame_id", "run", "train_id", "pulse_id", "lit_pixels", "photons", "is_hit"]
    np.testing.assert_array_equal(table.frame_id, np.arange(256))
    np.testing.assert_array_equal(table.train_id, 10000 + np.arange(256) // 32)
    np.testing.assert_array_equal(table.pulse_id, np.arange(256) % 32)
    assert (table.run == 142).all()
    found = set(table.frame_id[table.is_hit])
    assert len(found & set(hits)) >= 0.99 * len(hits)            # every hit recovered
    assert len(found - set(hits)) <= 0.01 * (256 - len(hits))    # < 1 % false positives
    assert hist.sum() == 256 and m["hits"] == len(found)
    fr = read_frames(tmp_path / "frames.h5")
    np.testing.assert_array_equal(fr.frame_id, sorted(found))
    # photons conserved on good pixels for integer-photon input (noise << threshold)
    good = fr.detector.mask
    expect = truth.reshape(len(truth), -1)[np.searchsorted(frames, fr.frame_id)] * good
    np.testing.assert_array_equal(fr.counts.toarray(), expect)
    # q of the unassembled layout, Ewald sphere |k_in + q| = k
    k = 2 * np.pi / fr.detector.wavelength_nm
    assert np.allclose(np.linalg.norm(fr.detector.q + [0, 0, k], axis=1), k)
    assert fr.detector.n_pixels == 16 * 512 * 128
    sel = table.set_index("frame_id").loc[fr.frame_id]
    np.testing.assert_array_equal(sel.photons, fr.photons_per_frame())


def test_dask_identical_to_in_process(two_sequence_run, tmp_path):
    path = two_sequence_run[0]
    ingest_run(_data(path, trains_per_chunk=2), tmp_path / "a.h5", tmp_path / "a.parquet")
    ingest_run(_data(path, scheduler="local:2", trains_per_chunk=2), tmp_path / "b.h5", tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet"))
    a, b = read_frames(tmp_path / "a.h5"), read_frames(tmp_path / "b.h5")
    np.testing.assert_array_equal(a.frame_id, b.frame_id)
    assert (a.counts != b.counts).nnz == 0


def test_selection_and_given_threshold(two_sequence_run, tmp_path):
    path, _, hits, _ = two_sequence_run
    m = ingest_run(_data(path, trains="1:3", pulses="0:16", hit_threshold=600), tmp_path / "f.h5",
                   tmp_path / "h.parquet")
    table = pd.read_parquet(tmp_path / "h.parquet")
    assert m["frames_read"] == 32 and m["hit_threshold"] == 600 and m["threshold_rule"] == "given"
    assert set(table.train_id) == {10001, 10002} and table.pulse_id.max() == 15
    expect = {int(h) for h in hits if (h // 32) in (1, 2) and h % 32 < 16}
    got = table[table.is_hit]
    assert set((got.train_id - 10000) * 32 + got.pulse_id) == expect


def test_user_mask_merged(two_sequence_run, tmp_path):
    path = two_sequence_run[0]
    user = np.ones((16, 512, 128), np.uint8)
    user[0] = 0
    with h5py.File(tmp_path / "mask.h5", "w") as h5:
        h5["mask"] = user
    ingest_run(_data(path, mask=str(tmp_path / "mask.h5")), tmp_path / "f.h5", tmp_path / "h.parquet")
    fr = read_frames(tmp_path / "f.h5")
    module0 = np.zeros(16 * 512 * 128, bool)
    module0[:512 * 128] = True
    assert not fr.detector.mask[module0].any() and fr.counts[:, module0].nnz == 0
    assert fr.detector.mask.sum() == (static_mask(1) & (user > 0)).sum()


def test_bad_scheduler_names_the_parameter(two_sequence_run, tmp_path):
    with pytest.raises(ParameterError, match="data.scheduler"):
        ingest_run(_data(two_sequence_run[0], scheduler="local:two"), tmp_path / "f.h5", tmp_path / "h.parquet")
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "h.parquet").exists()


def test_threshold_sample_spread():
    parts = [np.arange(10, dtype=np.uint64), np.arange(10, 30, dtype=np.uint64)]
    s = threshold_sample(parts, 6)
    flat = np.concatenate(s)
    assert len(flat) == 6 and flat[0] == 0 and flat[-1] == 29 and len(s) == 2
    assert threshold_sample(parts, 100) is parts


@pytest.mark.parametrize("value,ok", [("all", None), ("", None), ("0:10", slice(0, 10)),
                                      ("5:", slice(5, None)), (":8:2", slice(None, 8, 2))])
def test_parse_slice(value, ok):
    assert parse_slice(value, "data.trains") == ok


@pytest.mark.parametrize("value", ["0-10", "a:b", 620, "1:5:0", [1, 2]])
def test_parse_slice_errors(value):
    with pytest.raises(ParameterError, match="data.trains"):
        parse_slice(value, "data.trains")


def _cli(tmp_path, data: dict):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PYTHONPATH=str(REPO), SPICOMPUTE_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "spicompute", "frames", "--params", "params.yaml",
                           "--hits", "results/hits.parquet", "--metrics", "metrics/frames.json",
                           "--lit-histogram", "metrics/frames_lit_histogram.csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _last_line(proc):
    return proc.stderr.strip().splitlines()[-1]


def test_cli_bad_inputs(two_sequence_run, tmp_path):
    path = two_sequence_run[0]
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    cases = [
        (dict(input=str(empty), distance_mm=DIST), "empty_dir: data.input: no EuXFEL run files"),
        (dict(input=str(path), distance_mm=DIST, photon_energy_kev=E_KEV, geometry="agipd.h5"),
         "agipd.h5: data.geometry: AGIPD 1M geometry must be a CrystFEL .geom"),
        (dict(input=str(path), distance_mm=DIST, photon_energy_kev=E_KEV, trains="7-9"),
         "parameter data.trains"),
        (dict(input=str(path), distance_mm=DIST, photon_energy_kev=E_KEV, trains="100:200"),
         "parameter data.trains: selects no train"),
        (dict(input=str(path), distance_mm=DIST), "parameter data.photon_energy_kev"),
        (dict(input=str(path), distance_mm=DIST, photon_energy_kev=E_KEV, hit_sigmaa=3),
         "parameter data.hit_sigmaa: unknown parameter"),
    ]
    for data, expect in cases:
        proc = _cli(tmp_path, data)
        assert proc.returncode == 2, (data, proc.stderr[-2000:])
        line = _last_line(proc)
        assert expect in line, (expect, line)
        assert "Traceback" not in proc.stderr


def test_cli_missing_detector_source(tmp_path):
    """A run directory of the right kind but without AGIPD data (only XGM/camera files)."""
    from extra_data.tests.make_examples import make_spb_run

    run = tmp_path / "run"
    run.mkdir()
    make_spb_run(str(run))
    for f in run.glob("RAW-R0238-AGIPD*.h5"):
        f.unlink()
    proc = _cli(tmp_path, dict(input=str(run), distance_mm=DIST, adu_per_photon=45.0,
                               photon_energy_kev=E_KEV))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "run: data.input: no AGIPD 1M detector source" in _last_line(proc)


def test_cli_writes_report(two_sequence_run, tmp_path):
    path = two_sequence_run[0]
    proc = _cli(tmp_path, dict(input=str(path), distance_mm=DIST, photon_energy_kev=E_KEV, trains="0:2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics" / "frames.json").read_text())
    assert metrics["source"] == "euxfel" and metrics["frames_read"] == 64
    assert metrics["hits"] == 8 and abs(metrics["hit_rate"] - 8 / 64) < 1e-12
    hist = pd.read_csv(tmp_path / "metrics" / "frames_lit_histogram.csv")
    assert hist.frames.sum() == 64
    assert hist.loc[hist.above_threshold, "frames"].sum() == metrics["hits"]
    assert read_frames(tmp_path / "data" / "frames.h5").n_frames == 8
    with h5py.File(tmp_path / "data" / "truth.h5") as h5:
        assert not h5.attrs["simulated"]


def test_raw_spb_run_in_adu(tmp_path, q_default):
    """extra-data's raw-layout run (``make_spb_run``: RAW files, (data, gain) frames, uint16,
    no mask dataset) read as ADU with ``adu_per_photon``."""
    from extra_data.tests.make_examples import make_spb_run

    run = tmp_path / "raw"
    run.mkdir()
    make_spb_run(str(run))
    adu = 45.0
    frames = np.arange(128)                       # trains 0 and 1 (64 pulses each)
    hits = frames[7::16]
    truth = inject(run, frames, q_default, hits=hits, bg=3e-4, unit=adu, noise=0.05, prefix="RAW",
                   raw=True, seed=2)
    m = ingest_run(_data(run, adu_per_photon=adu, trains="0:2"), tmp_path / "f.h5", tmp_path / "h.parquet")
    assert m["unit"] == "ADU" and m["frames_read"] == 128
    assert m["photon_energy_source"] == "params"  # the mock XGM records wavelength 0
    table = pd.read_parquet(tmp_path / "h.parquet")
    assert table.run.iloc[0] == 238 and table.pulse_id.max() == 63
    np.testing.assert_array_equal(table.frame_id[table.is_hit], hits)
    fr = read_frames(tmp_path / "f.h5")
    expect = truth.reshape(len(truth), -1)[hits] * fr.detector.mask
    np.testing.assert_array_equal(fr.counts.toarray(), expect)


PEAK_SCRIPT = """
import re, sys, json
from spicompute.ingest.euxfel import ingest_run
m = ingest_run(dict(input=sys.argv[1], distance_mm=705.0, photon_energy_kev=6.0, trains=sys.argv[2],
                    trains_per_chunk=1), sys.argv[3] + "/f.h5", sys.argv[3] + "/h.parquet")
# VmHWM: this process's peak resident memory (ru_maxrss may carry the forking parent's peak)
hwm_kb = int(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"peak_mb": hwm_kb / 1024,
                  "frames": m["frames_read"], "hits": m["hits"]}))
"""
PEAK_BOUND_MB = 500  # whole mock run = 2048 frames x 4 MB = 8.6 GB of float32


@pytest.mark.slow
def test_peak_memory_bounded_on_full_mock_run(tmp_path, q_default):
    """Peak RSS of a subprocess streaming extra-data's full mock proc run (64 trains x 32
    pulses x 16 modules; 8.6 GB as float32) stays under PEAK_BOUND_MB and within 64 MB of the
    peak for 4 trains: memory does not grow with the run length."""
    from extra_data.tests.make_examples import make_modern_spb_proc_run

    run = tmp_path / "run"
    run.mkdir()
    make_modern_spb_proc_run(str(run))
    inject(run, [5, 700, 2000], q_default, hits=[5, 700, 2000], bg=1e-4)
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), SPICOMPUTE_NO_PROGRESS="1")
    peaks = {}
    for trains in ("0:4", "all"):
        proc = subprocess.run([sys.executable, str(script), str(run), trains, str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[trains] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert peaks["all"]["frames"] == 2048 and peaks["all"]["hits"] == 3
    assert peaks["all"]["peak_mb"] < PEAK_BOUND_MB, peaks
    assert peaks["all"]["peak_mb"] - peaks["0:4"]["peak_mb"] < 64, peaks


def test_simulated_input_writes_the_reports(tmp_path):
    """The frames stage's reports exist for every input kind (DVC declares them)."""
    from spicompute.cli import main
    from tests.conftest import small_simulation_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"].update(small_simulation_params(n_frames=30))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = {k: str(tmp_path / v) for k, v in (("hits", "results/hits.parquet"), ("metrics", "metrics/frames.json"),
                                             ("hist", "metrics/frames_lit_histogram.csv"))}
    assert main(["frames", "--params", str(tmp_path / "params.yaml"), "-q", "--out", str(tmp_path / "f.h5"),
                 "--truth", str(tmp_path / "t.h5"), "--hits", out["hits"], "--metrics", out["metrics"],
                 "--lit-histogram", out["hist"]]) == 0
    frames = read_frames(tmp_path / "f.h5")
    table = pd.read_parquet(out["hits"])
    np.testing.assert_array_equal(table.frame_id, frames.frame_id)
    np.testing.assert_array_equal(table.photons, frames.photons_per_frame())
    np.testing.assert_array_equal(table.lit_pixels, np.diff((frames.counts > 0).tocsr().indptr))
    assert table.is_hit.all() and (table.train_id == -1).all()
    metrics = json.loads(open(out["metrics"]).read())
    assert metrics["source"] == "simulate" and metrics["frames_read"] == 30 and "hit_threshold" not in metrics
    assert pd.read_csv(out["hist"]).frames.sum() == 30


def _set_xgm_wavelength(run_dir, nm: float) -> None:
    for f in sorted(run_dir.glob("RAW-*-DA01-*.h5")):
        with h5py.File(f, "r+") as h5:
            h5["CONTROL/SPB_XTD9_XGM/DOOCS/MAIN/pulseEnergy/wavelengthUsed/value"][:] = nm


def test_photon_energy_from_the_run_or_its_raw_sibling(tmp_path, two_sequence_run):
    """A raw run's XGM records the wavelength; a proc/r<run> directory takes it from the
    matching raw/r<run> (Maxwell layout); data.photon_energy_kev is then not needed."""
    from extra_data import RunDirectory
    from extra_data.tests.make_examples import make_spb_run

    from spicompute.ingest.euxfel import EuxfelConfig, photon_energy

    raw = tmp_path / "p002601" / "raw" / "r0034"
    raw.mkdir(parents=True)
    make_spb_run(str(raw))
    _set_xgm_wavelength(raw, 0.2066)
    energy, source = photon_energy(RunDirectory(str(raw)), EuxfelConfig.from_data(_data(raw, photon_energy_kev=None)))
    assert energy == pytest.approx(1.23984193 / 0.2066, rel=1e-6) and source.startswith("run (SPB_XTD9_XGM")
    proc = tmp_path / "p002601" / "proc" / "r0034"
    shutil.copytree(two_sequence_run[0], proc)
    m = ingest_run(_data(proc, photon_energy_kev=None, trains="0:1"), tmp_path / "f.h5", tmp_path / "h.parquet")
    assert m["photon_energy_kev"] == pytest.approx(1.23984193 / 0.2066, rel=1e-6)
    assert m["photon_energy_source"].startswith(f"raw run {raw}")
    with pytest.raises(ParameterError, match="data.photon_energy_kev"):
        photon_energy(RunDirectory(str(two_sequence_run[0])),
                      EuxfelConfig.from_data(_data(two_sequence_run[0], photon_energy_kev=None)))


def test_histogram_edges_put_the_threshold_between_bins():
    from spicompute.ingest.euxfel import histogram_edges

    for thr, top in ((5.0, 0.0), (312.7, 2000.0), (0.0, 10.0), (1e4, 10.0)):
        edges = histogram_edges(thr, top)
        assert len(edges) == 65 and np.all(np.diff(edges) > 0) and edges[0] == 0
        assert np.floor(thr) + 0.5 in edges and edges[-1] >= 2 * thr


def test_module_missing_trains_is_aligned(tmp_path, q_default):
    """Module 5 has no data for the first train (its file starts one train later): its
    pixels contribute nothing there, the other modules' photons stay on the right frames."""
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.detectors import AGIPDModule

    run = tmp_path / "run"
    run.mkdir()
    for m in range(16):
        first, n = (10001, 2) if m == 5 else (10000, 3)
        write_file(str(run / f"CORR-R0150-AGIPD{m:02d}-S00000.h5"), [
            AGIPDModule(f"SPB_DET_AGIPD1M-1/CORR/{m}CH0", channel_name="output", raw=False,
                        frames_per_train=8, legacy_name=f"SPB_DET_AGIPD1M-1/DET/{m}CH0")
        ], ntrains=n, firsttrain=first, chunksize=8, format_version="1.2")
    # global frame index f is (train f // 8, pulse f % 8) for all modules but 5, whose file
    # starts at train 1: write module 5 separately below
    truth = inject(run, np.arange(24), q_default, hits=[3, 12, 20], bg=5e-4, seed=9)
    m = ingest_run(_data(run, hit_threshold=300), tmp_path / "f.h5", tmp_path / "h.parquet")
    assert m["frames_read"] == 24
    table = pd.read_parquet(tmp_path / "h.parquet")
    np.testing.assert_array_equal(table.train_id, 10000 + np.arange(24) // 8)
    # what module 5 stores at its local frame i belongs to global frame i + 8
    expect = truth.copy()
    expect[:, 5] = 0
    expect[8:, 5] = truth[:16, 5]
    good = static_mask(1)
    expect = expect * good[None]
    np.testing.assert_array_equal(table.photons, expect.reshape(24, -1).sum(axis=1))
    fr = read_frames(tmp_path / "f.h5")
    np.testing.assert_array_equal(fr.counts.toarray(), expect.reshape(24, -1)[fr.frame_id])


@pytest.mark.parametrize("damage", ["fake", "truncated"])
def test_cli_damaged_run_file_is_one_line_naming_it(two_sequence_run, tmp_path, damage):
    """extra-data would skip the file with lines on stderr and lose its frames silently."""
    run = tmp_path / "run"
    shutil.copytree(two_sequence_run[0], run)
    files = sorted(run.glob("CORR-*.h5"))
    if damage == "fake":
        victim = run / files[0].name.replace("-S00000", "-S00007")
        victim.write_text("not an HDF5 file")
    else:
        victim = files[-1]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc = _cli(tmp_path, _data(run))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "Skipping" not in proc.stderr, proc.stderr
    assert f"{victim.name}: data.input: unreadable run file" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_cli_unreadable_run_folder_is_a_permission_error(two_sequence_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_sequence_run[0], run)
    run.chmod(0o000)
    try:
        proc = _cli(tmp_path, _data(run))
    finally:
        run.chmod(0o755)
    assert proc.returncode == 2 and "permission denied" in _last_line(proc), proc.stderr[-2000:]

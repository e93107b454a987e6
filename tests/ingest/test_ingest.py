"""Ingest of CXI, Dragonfly and plain HDF5 files, and the errors for bad input."""

import h5py
import numpy as np
import pytest

from spicompute.cli import main
from spicompute.errors import InputError, ParameterError
from spicompute.ingest.files import ingest
from spicompute.ingest.formats import detect_format
from spicompute.io.cxi import write_cxi
from spicompute.io.dragonfly import read_dragonfly_photons, write_dragonfly_detector, write_dragonfly_photons
from spicompute.io.frames import read_frames, write_frames
from tests.conftest import INTEROP

DF = INTEROP / "dragonfly"


@pytest.fixture()
def frames(small_simulation):
    fs = small_simulation[0]
    return fs.subset(np.arange(60))


def test_frames_file_round_trip_dense_and_sparse(tmp_path, frames):
    for layout in ("dense", "sparse"):
        write_frames(tmp_path / f"{layout}.h5", frames, layout=layout)
        back = read_frames(tmp_path / f"{layout}.h5")
        assert (back.counts != frames.counts).nnz == 0
        np.testing.assert_array_equal(back.frame_id, frames.frame_id)
        np.testing.assert_array_equal(back.detector.q, frames.detector.q)
        np.testing.assert_array_equal(back.detector.mask, frames.detector.mask)
        assert back.detector.shape == frames.detector.shape
        with h5py.File(tmp_path / f"{layout}.h5") as h5:
            assert "spicompute_version" in h5.attrs and "spicompute_params" in h5.attrs


def test_cxi_round_trip_preserves_counts_ids_and_geometry(tmp_path, frames):
    path = tmp_path / "run.cxi"
    write_cxi(path, frames.images(np.arange(frames.n_frames)), frames.detector)
    assert detect_format(path) == "cxi"
    back = ingest({"input": str(path)})
    assert (back.counts != frames.counts).nnz == 0
    np.testing.assert_array_equal(back.frame_id, np.arange(frames.n_frames))
    np.testing.assert_allclose(back.detector.q, frames.detector.q, atol=1e-9)
    np.testing.assert_array_equal(back.detector.mask, frames.detector.mask)
    assert back.detector.wavelength_nm == pytest.approx(frames.detector.wavelength_nm)
    assert back.detector.center == pytest.approx(frames.detector.center)


def test_dragonfly_round_trip_preserves_every_count_and_frame_id(tmp_path, frames):
    write_dragonfly_photons(tmp_path / "photons.emc", frames)
    write_dragonfly_detector(tmp_path / "det.h5", frames.detector)
    params = {"input": str(tmp_path / "photons.emc"), "detector": str(tmp_path / "det.h5"),
              "wavelength_nm": frames.detector.wavelength_nm}
    assert detect_format(params["input"]) == "dragonfly"
    back = ingest(params)
    assert (back.counts != frames.counts).nnz == 0
    assert back.counts.max() > 1  # multi-photon pixels went through place_multi
    np.testing.assert_array_equal(back.frame_id, frames.frame_id)
    np.testing.assert_allclose(back.detector.q, frames.detector.q, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(not DF.exists(), reason="shared interop samples not present")
def test_reads_a_real_dragonfly_photon_file():
    fs = read_dragonfly_photons(DF / "photons.emc", DF / "det_sim.h5", wavelength_nm=0.62)
    assert fs.n_frames == 3000 and fs.n_pixels == 4096
    with h5py.File(DF / "photons.emc") as h5:
        ones = sum(len(a) for a in h5["place_ones"][()])
        multi = sum(int(a.sum()) for a in h5["count_multi"][()])
    assert fs.counts.sum() == ones + multi
    # q scale from ewald_rad: the Ewald sphere of radius k passes through every pixel
    k = 2 * np.pi / 0.62
    np.testing.assert_allclose(np.linalg.norm(fs.detector.q + [0, 0, k], axis=1), k, rtol=1e-6)
    assert fs.detector.mask.sum() == 2780  # mask 0 = good


def test_plain_hdf5_with_geometry_params(tmp_path, frames):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as h5:
        h5["exp/frames"] = frames.images(np.arange(frames.n_frames)).astype(np.float32)
    det = frames.detector
    back = ingest({"input": str(path), "dataset": "exp/frames", "wavelength_nm": det.wavelength_nm,
                   "distance_mm": det.distance_mm, "pixel_size_mm": det.pixel_size_mm,
                   "empty_frames": "drop"})
    assert back.counts.sum() == frames.counts.sum()
    np.testing.assert_allclose(back.detector.q, det.q, atol=1e-9)


def test_plain_hdf5_without_geometry_is_an_error(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as h5:
        h5["frames"] = np.ones((3, 8, 8), np.int32)
    with pytest.raises(ParameterError, match="data.wavelength_nm"):
        ingest({"input": str(path), "dataset": "frames"})


def test_dragonfly_without_wavelength_names_the_field(tmp_path, frames):
    write_dragonfly_photons(tmp_path / "p.emc", frames)
    write_dragonfly_detector(tmp_path / "d.h5", frames.detector)
    with pytest.raises(InputError, match="wavelength"):
        ingest({"input": str(tmp_path / "p.emc"), "detector": str(tmp_path / "d.h5")})


# ---- bad input through the CLI: one-line error naming file and field, exit 2, no output ----

def _run_frames_cli(tmp_path, data: dict, capsys):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": data, "simulate": {}}))
    out = tmp_path / "out" / "frames.h5"
    code = main(["frames", "--params", str(params), "--out", str(out),
                 "--truth", str(tmp_path / "out" / "truth.h5")])
    err = capsys.readouterr().err
    return code, err, out


def _cxi(tmp_path, data, mask=None, name="bad.cxi"):
    from spicompute.geometry import regular_detector

    det = regular_detector(data.shape[1:], 0.2, 700.0, 0.4)
    if mask is not None:
        det.mask[:] = mask.ravel()
    path = tmp_path / name
    write_cxi(path, data, det)
    return path


def _bad_inputs(tmp_path):
    good = np.random.default_rng(0).poisson(1.0, (4, 8, 8)).astype(np.float32)
    cases = {}
    nan = good.copy(); nan[2, 3, 3] = np.nan
    cases["nan"] = ({"input": str(_cxi(tmp_path, nan, name="nan.cxi"))}, "NaN")
    inf = good.copy(); inf[1, 0, 0] = np.inf
    cases["inf"] = ({"input": str(_cxi(tmp_path, inf, name="inf.cxi"))}, "Inf")
    neg = good.copy(); neg[3, 1, 1] = -2
    cases["negative"] = ({"input": str(_cxi(tmp_path, neg, name="neg.cxi"))}, "negative")
    zero = good.copy(); zero[1] = 0
    cases["zero-photon frame"] = ({"input": str(_cxi(tmp_path, zero, name="zero.cxi"))},
                                  "no photons")
    cases["all masked"] = ({"input": str(_cxi(tmp_path, good, np.zeros((8, 8), bool),
                                              name="masked.cxi"))}, "masked")
    trunc = tmp_path / "truncated.h5"
    trunc.write_bytes((tmp_path / "nan.cxi").read_bytes()[:3000])
    cases["truncated"] = ({"input": str(trunc)}, "HDF5")
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    cases["not hdf5"] = ({"input": str(text)}, "HDF5")
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    cases["empty file"] = ({"input": str(empty)}, "empty")
    nodata = tmp_path / "nodata.h5"
    with h5py.File(nodata, "w") as h5:
        h5["something"] = np.zeros(3)
    cases["missing dataset"] = ({"input": str(nodata), "dataset": "frames"}, "frames")
    mism = tmp_path / "mismatch.h5"
    with h5py.File(mism, "w") as h5:
        h5["frames"] = good
    geo = _cxi(tmp_path, np.ones((2, 6, 6), np.float32), name="geo.cxi")
    cases["detector shape mismatch"] = (
        {"input": str(mism), "dataset": "frames", "geometry": str(geo)},
        "does not match frames 8x8")
    noframes = tmp_path / "noframes.h5"
    with h5py.File(noframes, "w") as h5:
        h5["frames"] = np.zeros((0, 8, 8))
    cases["no frames"] = ({"input": str(noframes), "dataset": "frames", "wavelength_nm": 0.2,
                           "distance_mm": 100, "pixel_size_mm": 0.1}, "no frames")
    return cases


CASES = ["nan", "inf", "negative", "zero-photon frame", "all masked", "truncated", "not hdf5",
         "empty file", "missing dataset", "detector shape mismatch", "no frames"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, capsys, case):
    data, expected = _bad_inputs(tmp_path)[case]
    code, err, out = _run_frames_cli(tmp_path, data, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err
    assert (data.get("geometry") or data["input"]) in err  # the offending file is named
    leftovers = list(out.parent.glob("*")) if out.parent.exists() else []
    assert leftovers == []  # neither output nor temporary files


def test_absurd_simulation_parameter_via_cli(tmp_path, capsys):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"input": ""},
                                      "simulate": {"photon_energy_kev": -6, "n_frames": 5}}))
    code = main(["frames", "--params", str(params), "--out", str(tmp_path / "f.h5"),
                 "--truth", str(tmp_path / "t.h5")])
    assert code == 2
    assert "simulate.photon_energy_kev" in capsys.readouterr().err
    assert not (tmp_path / "f.h5").exists()

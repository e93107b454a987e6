"""A stage run by hand with ``--out`` elsewhere keeps its other outputs beside it.

Every output option defaults to the pipeline's layout; a hand run that named only ``--out``
used to overwrite the versioned pipeline's metrics, tables and checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spicompute.cli import build_parser, main, outputs_beside_out


def _args(argv: list[str]):
    args = build_parser().parse_args(argv)
    return args, outputs_beside_out(args)


def test_every_output_left_at_its_default_follows_out(tmp_path):
    args, moved = _args(["classify2d", "--out", str(tmp_path / "x" / "averages.h5")])
    root = tmp_path / "x"
    assert dict(moved) == {
        "frames_table": str(root / "results/frames.parquet"),
        "part": str(root / "results/parts/classify2d.parquet"),
        "checkpoints": str(root / "checkpoints/classify2d"),
        "metrics": str(root / "metrics/classify2d.json"),
        "live": str(root / "dvclive/classify2d"),
    }
    assert args.metrics == str(root / "metrics/classify2d.json")
    assert args.frames == "data/frames.h5"            # an input stays where it is
    assert args.truth == ""


def test_a_folder_laid_out_like_the_pipeline_is_the_root(tmp_path):
    args, _ = _args(["vae", "--out", str(tmp_path / "run1/results/parts/vae.parquet")])
    assert args.model == str(tmp_path / "run1/models/vae.pt")
    assert args.checkpoints == str(tmp_path / "run1/checkpoints/vae")
    args, _ = _args(["ccmatrix", "--out", "run2/data/ccmatrix.h5"])
    assert args.metrics == str(Path("run2/metrics/ccmatrix.json"))


@pytest.mark.parametrize("out,root", [
    ("data/averages_try.h5", "data/averages_try"),      # beside the default: mirroring gives the defaults back
    ("try.h5", "try"),                                  # in the working folder
    ("/data/averages_x.h5", "/data/averages_x"),        # mirroring would give the filesystem root
])
def test_a_variant_beside_the_default_never_gets_the_pipelines_paths(out, root):
    args, moved = _args(["classify2d", "--out", out])
    assert dict(moved)["metrics"] == str(Path(root) / "metrics/classify2d.json")
    assert args.checkpoints == str(Path(root) / "checkpoints/classify2d")
    for name, path in moved:
        assert Path(path) != Path(build_parser().parse_args(["classify2d"]).__dict__[name])


def test_an_absolute_out_inside_the_project_is_not_mirrored_onto_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, _ = _args(["vae", "--out", str(tmp_path / "results/parts/vae_b.parquet")])
    assert args.model == str(tmp_path / "results/parts/vae_b/models/vae.pt")
    assert args.metrics == str(tmp_path / "results/parts/vae_b/metrics/vae.json")


def test_named_options_and_the_default_out_are_kept(tmp_path):
    args, moved = _args(["classify2d", "--out", str(tmp_path / "a.h5"), "--metrics", "metrics/classify2d.json",
                         "--live=", "--checkp", str(tmp_path / "ck")])
    assert args.metrics == "metrics/classify2d.json"  # named, even as the default
    assert args.live == ""
    assert args.checkpoints == str(tmp_path / "ck")    # an unambiguous prefix counts as named
    assert "metrics" not in dict(moved) and "part" in dict(moved)
    args, moved = _args(["classify2d", "--out", "data/averages.h5"])
    assert moved == [] and args.metrics == "metrics/classify2d.json"
    args, moved = _args(["classify2d"])
    assert moved == [] and args.part == "results/parts/classify2d.parquet"


@pytest.mark.parametrize("argv,inputs", [
    (["select", "--out", "x/select.parquet"], {"frames_table": "results/frames.parquet", "truth": ""}),
    (["embed", "--out", "x/embedding.h5"], {"ccmatrix": "data/ccmatrix.h5", "frames_table": ""}),
    (["place", "--averages", "a.h5", "--out", "x/placed.parquet"], {"model": "models/regressor.pt"}),
    (["volumes", "--out", "x/volumes.h5"], {"model": "models/vae.pt", "latents": "results/parts/vae.parquet"}),
    (["validate", "--out", "x/v.parquet"], {"truth": "data/truth.h5", "frames_table": "results/frames.parquet"}),
])
def test_inputs_never_move(argv, inputs):
    args, _ = _args(argv)
    for name, value in inputs.items():
        assert getattr(args, name) == value, name


def test_a_hand_run_leaves_the_pipeline_files_alone(tmp_path, monkeypatch, caplog):
    """ccmatrix run in a project folder with only --out elsewhere: the project's metrics file is
    untouched, the run's metrics lie beside its output, and the log says where."""
    from spicompute.io.averages import write_averages
    from tests.bad_inputs.corpus import intact_averages, write_params

    project = tmp_path / "project"
    (project / "metrics").mkdir(parents=True)
    pipeline_metrics = project / "metrics" / "ccmatrix.json"
    pipeline_metrics.write_text('{"from": "the pipeline"}')
    write_averages(project / "averages.h5", intact_averages(m=12, size=41))
    params = write_params(project, ccmatrix={"n_angles": 30})
    monkeypatch.chdir(project)
    with caplog.at_level("INFO", logger="spicompute"):
        rc = main(["ccmatrix", "--params", str(params), "--averages", "averages.h5",
                   "--out", str(tmp_path / "trial" / "cc.h5")])
    assert rc == 0
    assert json.loads(pipeline_metrics.read_text()) == {"from": "the pipeline"}
    assert (tmp_path / "trial" / "cc.h5").is_file()
    assert json.loads((tmp_path / "trial" / "metrics" / "ccmatrix.json").read_text())
    assert "--metrics goes beside it" in caplog.text

"""``params.yaml``: the file itself, then the sections of ``frames`` (``simulate``, ``data``),
``classify2d``, ``ccmatrix``, ``orient`` and ``regress``, each checked before any work (the
frames stage would otherwise simulate)."""

from __future__ import annotations

from functools import partial

from .corpus import Cases, cases_test, cc_cmd, classify_cmd, orient_cmd, regress_cmd, write_params

CASES = Cases()


def frames_with(d, params):
    return ["frames", "--params", str(params), "--out", str(d / "out" / "frames.h5"),
            "--truth", str(d / "out" / "truth.h5")]


def raw_params(base, d, *, text, needles):
    """Case: the frames stage with a params.yaml of exactly ``text``."""
    p = d / "params.yaml"
    p.write_text(text)
    return frames_with(d, p), needles


CASES.add("params-invalid-yaml", "not-parsable",
          partial(raw_params, text="data:\n  input: [unclosed\n", needles=["params.yaml", "YAML"]))
CASES.add("params-not-a-mapping", "not-parsable",
          partial(raw_params, text="- a\n- b\n", needles=["params.yaml", "mapping"]))
CASES.add("params-unknown-section", "unknown-key",
          partial(raw_params, text="simulat:\n  n_frames: 10\n", needles=["params.yaml", "simulat", "unknown section"]))
CASES.add("params-unknown-data-key", "unknown-key",
          partial(raw_params, text="data:\n  inptu: x.cxi\nsimulate: {}\n", needles=["data.inptu", "unknown"]))


@CASES.case("params-missing", "missing")
def params_missing(base, d):
    return (["frames", "--params", str(d / "nope.yaml"), "--out", str(d / "out" / "f.h5")],
            ["nope.yaml", "not found"])


@CASES.case("params-directory", "directory")
def params_directory(base, d):
    (d / "params.yaml").mkdir()
    return (["frames", "--params", str(d / "params.yaml"), "--out", str(d / "out" / "f.h5")],
            ["params.yaml"])


# ---- one bad value per stage: (stage, "key:label") -> (kind, value, needles)
def simulate_with(base, d, *, key, value, needles):
    params = write_params(d, data={"input": ""}, simulate={key: value})
    return frames_with(d, params), needles


def classify2d_with(base, d, *, key, value, needles):
    return classify_cmd(d, base / "frames.h5", **{key: value}), needles


def ccmatrix_with(base, d, *, key, value, needles):
    return cc_cmd(d, base / "averages.h5", **{key: value}), needles


def orient_with(base, d, *, key, value, needles):
    return orient_cmd(d, base / "averages.h5", **{key: value}), needles


def regress_with(base, d, *, key, value, needles):
    return regress_cmd(base, d, **{key: value}), needles


STAGES = {"simulate": simulate_with, "classify2d": classify2d_with, "ccmatrix": ccmatrix_with,
          "orient": orient_with, "regress": regress_with}

BAD_VALUES = {
    ("simulate", "n_frames:0"): ("bad-value", 0, ["simulate.n_frames"]),
    ("simulate", "n_frames:negative"): ("negative", -5, ["simulate.n_frames"]),
    ("simulate", "n_frames:string"): ("wrong-dtype", "many", ["simulate.n_frames", "integer"]),
    ("simulate", "n_frames:1e12"): ("too-large", 1e12, ["simulate.n_frames"]),
    ("simulate", "detector_size:200000"): ("too-large", 200000, ["simulate.detector_size"]),
    ("simulate", "seed:abc"): ("wrong-dtype", "abc", ["simulate.seed"]),
    ("simulate", "photon_energy_kev:negative"): ("negative", -6.0, ["simulate.photon_energy_kev"]),
    ("simulate", "fractions:unknown-class"): ("bad-value", {"cube": 1.0, "pyramid": 1.0},
                                              ["simulate.fractions", "pyramid"]),
    ("simulate", "n_frame:typo"): ("unknown-key", 10, ["simulate.n_frame", "unknown"]),
    ("classify2d", "n_models:0"): ("bad-value", 0, ["classify2d.n_models"]),
    ("classify2d", "n_models:string"): ("wrong-dtype", "forty", ["classify2d.n_models", "integer", "auto"]),
    ("classify2d", "n_rot:0"): ("bad-value", 0, ["classify2d.n_rot"]),
    ("classify2d", "n_runs:negative"): ("negative", -2, ["classify2d.n_runs"]),
    ("classify2d", "subset_fraction:2"): ("out-of-range", 2.0, ["classify2d.subset_fraction"]),
    ("classify2d", "seed:abc"): ("wrong-dtype", "abc", ["classify2d.seed"]),
    ("classify2d", "update_scale:quoted"): ("wrong-dtype", "false", ["classify2d.update_scale"]),
    ("classify2d", "max_iter:0"): ("bad-value", 0, ["classify2d.max_iter"]),
    ("classify2d", "n_model:typo"): ("unknown-key", 3, ["classify2d.n_model", "unknown"]),
    ("classify2d", "n_models:more-than-frames"): ("out-of-range", 20, ["classify2d.n_models", "frames"]),
    ("ccmatrix", "n_angles:1"): ("bad-value", 1, ["ccmatrix.n_angles"]),
    ("ccmatrix", "n_angles:string"): ("wrong-dtype", "many", ["ccmatrix.n_angles"]),
    ("ccmatrix", "radial_step:negative"): ("negative", -1.0, ["ccmatrix.radial_step"]),
    ("ccmatrix", "normalisation:unknown"): ("bad-value", "zscore", ["ccmatrix.normalisation"]),
    ("ccmatrix", "n_angle:typo"): ("unknown-key", 180, ["ccmatrix.n_angle", "unknown"]),
    ("orient", "num_div:0"): ("bad-value", 0, ["orient.num_div"]),
    ("orient", "volume_index:string"): ("wrong-dtype", "first", ["orient.volume_index"]),
    ("orient", "chunk:negative"): ("negative", -8, ["orient.chunk"]),
    ("orient", "refine:quoted"): ("wrong-dtype", "false", ["orient.refine"]),
    ("orient", "edge_nm:string"): ("wrong-dtype", "big", ["orient.edge_nm"]),
    ("orient", "num_dvi:typo"): ("unknown-key", 3, ["orient.num_dvi", "unknown"]),
    ("regress", "learning_rate:string"): ("wrong-dtype", "fast", ["regress.learning_rate"]),
    ("regress", "seed:abc"): ("wrong-dtype", "abc", ["regress.seed"]),
    ("regress", "log:quoted"): ("wrong-dtype", "false", ["regress.log"]),
    ("regress", "hidden:zero-width"): ("bad-value", [64, 0], ["regress.hidden"]),
    ("regress", "max_epoch:typo"): ("unknown-key", 5, ["regress.max_epoch", "unknown"]),
}
for (_stage, _name), (_kind, _value, _needles) in BAD_VALUES.items():
    CASES.add(f"params-{_stage}-{_name}", _kind, partial(STAGES[_stage], key=_name.split(":")[0], value=_value, needles=_needles))


test_bad_input_fails_cleanly = cases_test(CASES)

"""Results tables: provenance metadata and joining of stage parts."""

import json

import pandas as pd
import pytest

from spicompute.io.tables import merge_parts, read_provenance, read_table, write_table


def test_tables_carry_provenance_and_round_trip(tmp_path):
    table = pd.DataFrame({"average_id": [0, 1, 2], "pc_1": [0.1, -0.2, 0.3]})
    write_table(tmp_path / "t.parquet", table, stage="embed", params={"seed": 3})
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), table)
    meta = read_provenance(tmp_path / "t.parquet")
    assert meta["spicompute_stage"] == "embed"
    assert json.loads(meta["spicompute_params"]) == {"seed": 3}
    assert meta["spicompute_version"].startswith("0.")


def test_merge_parts_joins_on_average_id_and_refuses_duplicate_columns():
    base = pd.DataFrame({"average_id": [0, 1, 2], "n_frames": [5.0, 6.0, 7.0]})
    embed = pd.DataFrame({"average_id": [2, 0, 1], "pc_1": [3.0, 1.0, 2.0]})
    joined = merge_parts(base, [embed])
    assert joined["pc_1"].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="pc_1"):
        merge_parts(base, [embed, embed])

"""docs/classify2d.md's parameter table and params.yaml agree on every classify2d default."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from spicompute.emc2d.run import EMCConfig

ROOT = Path(__file__).resolve().parents[2]


def _doc_defaults() -> dict:
    text = (ROOT / "docs" / "classify2d.md").read_text()
    section = text.split("## Parameters (`classify2d` in params.yaml)", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*?) \|", section, flags=re.M)
    return {k: v.strip() for k, v in rows}


def _same(doc: str, value) -> bool:
    if value is None:
        return doc == "null"
    if isinstance(value, bool):
        return doc == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(doc.replace(",", "")) == float(value)
        except ValueError:
            return False
    return doc.strip('"') == str(value)


def test_docs_and_params_agree_on_every_default():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["classify2d"]
    docs = _doc_defaults()
    assert set(params) == set(docs), set(params) ^ set(docs)
    wrong = {k: (docs[k], v) for k, v in params.items() if not _same(docs[k], v)}
    assert not wrong, wrong
    assert set(params) == set(EMCConfig.__dataclass_fields__)

"""The TPU tables in README.md and train/AOT.md are what ``python -m train.aot --table`` prints for the reports
kept in benchmarks/aot_cells/ (no compile: the reports are read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import aot_report

ROOT = Path(__file__).resolve().parents[2]


def _rows(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.startswith("| ") and " x TPU " in line}


@pytest.mark.parametrize("doc", ["README.md", "train/AOT.md"])
def test_tpu_table_is_the_commands_output(doc):
    cells = sorted((ROOT / "benchmarks" / "aot_cells").glob("*.json"))
    assert cells
    printed = _rows(aot_report.table([json.loads(p.read_text()) for p in cells]))
    assert len(printed) == len(cells)
    written = _rows((ROOT / doc).read_text())
    assert written == printed, (sorted(written - printed), sorted(printed - written))

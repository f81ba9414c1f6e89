"""The TPU tables in README.md and train/AOT.md are what ``python -m train.aot --table`` prints for the reports
kept in benchmarks/aot_cells/ (no compile: the reports are read)."""

from __future__ import annotations

import json
from pathlib import Path

from train import aot_report

ROOT = Path(__file__).resolve().parents[2]


def _rows(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.startswith("| ") and " x TPU " in line}


def _printed() -> set[str]:
    cells = sorted((ROOT / "benchmarks" / "aot_cells").glob("*.json"))
    assert cells
    printed = _rows(aot_report.table([json.loads(p.read_text()) for p in cells]))
    assert len(printed) == len(cells)
    return printed


def test_tpu_table_is_the_commands_output():
    """train/AOT.md holds the whole table."""
    printed, written = _printed(), _rows((ROOT / "train" / "AOT.md").read_text())
    assert written == printed, (sorted(written - printed), sorted(printed - written))


def test_readme_rows_are_the_commands_output():
    """The README shows a selection (the 8-chip v5e and the v5p rows): each row as the command prints it, every
    model of the cells at least once."""
    printed, written = _printed(), _rows((ROOT / "README.md").read_text())
    assert written <= printed, sorted(written - printed)
    model = lambda row: row.split("|")[1].strip()  # noqa: E731
    assert {model(r) for r in written} == {model(r) for r in printed}

"""`benchmarks/mixed_workload.py` on a very small workload: every mode runs and the table has every column.
Timings and memory figures are never asserted."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("vlsft_mixed_workload", BENCHMARKS / "mixed_workload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mixed_workload_rows_have_every_kind(tmp_path):
    rows = _load().make_rows(40, seed=0, median=80, sigma=0.8, low=40, high=200, clips=tmp_path)
    assert any(r["videos"] for r in rows) and any(r["tools"] for r in rows)
    assert any(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in rows)
    assert {len(r["images"]) for r in rows if r["images"]} == {1, 2, 3, 4}
    assert len({img.size for r in rows for img in r["images"]}) > 1  # images of varied sizes


def test_mixed_workload_writes_the_table(tmp_path):
    output = tmp_path / "mixed.md"
    argv = ["--rows", "4", "--hidden-size", "32", "--layers", "1", "--max-row", "160", "--min-row", "48",
            "--batch", "2", "--output", str(output)]  # fmt: skip
    assert _load().main(argv) == 0
    lines = output.read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| mode")]
    names = [row.split("|")[1].strip() for row in rows]
    assert names[:2] == ["vlsft padded", "vlsft packed"] and names[-1] == "TRL assistant-only padded"
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert re.fullmatch(r"\d+\.\d\dx", cells[3]) and re.fullmatch(r"\d+\.\d\dx", cells[5])
        assert re.fullmatch(r"\d+(\.\d+)?", cells[2]) and cells[8] == "n/a (CPU)"
    assert any(line.startswith("Goal (CPU): vlsft packed >= 2x vlsft padded") for line in lines)

"""The benchmark's code paths on a very small workload, one repetition each: it must produce every table row and
column and compare like with like. Timings and memory figures are never asserted."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def load_script(name: str, path: Path):
    """The benchmark script at `path` imported as module `name` (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script("vlsft_bench", BENCH)


def _table(report: str, first_header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header starts with `first_header` (header row, then data rows)."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_bench_writes_every_table(bench, tmp_path):
    output = tmp_path / "results.md"
    argv = [
        "--reps", "1", "--sweep-reps", "1", "--collate-reps", "1", "--warmup", "0", "--step-warmup", "1",
        "--hidden-size", "32", "--vocab-size", "1024", "--image-size", "32", "--prompt-words", "12",
        "--answer-words", "4", "--sweep-images", "1,3", "--sweep-turns", "1", "--output", str(output),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    report = output.read_text()

    # Both sides trained on the very same token ids.
    assert "identical input_ids on both sides: yes" in report

    main = _table(report, "measure (median)")
    assert main[0] == [
        "measure (median)", "vlsft", "TRL assistant-only", "TRL plain",
        "vlsft / TRL assistant-only", "vlsft / TRL plain", "goal",
    ]  # fmt: skip
    assert [row[0] for row in main[1:]] == [
        "collate (ms)", "train step (ms)", "peak step memory (MiB)", "train tokens/s"
    ]
    collate, step, memory, speed = main[1:]
    # Every measured cell holds a number, every ratio a multiple, every goal a verdict.
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", cell) for cell in collate[1:4] + step[1:3] + memory[1:3] + speed[1:3])
    assert all(re.fullmatch(r"\d+\.\d\dx", cell) for cell in collate[4:6] + [step[4], memory[4], speed[4]])
    for row, side in ((collate, "TRL plain"), (step, "TRL assistant-only"), (memory, "TRL assistant-only")):
        assert re.fullmatch(rf"<= [\d.]+x {side}: (met|NOT met)", row[6])

    images = _table(report, "images/row")
    assert [row[0] for row in images[1:]] == ["1", "3"]
    lengths = _table(report, "turns/row")
    assert [row[0] for row in lengths[1:]] == ["1"]
    for row in images[1:] + lengths[1:]:
        assert len(row) == len(images[0]) == 9
    # More images per row means more tokens.
    assert int(images[2][1]) > int(images[1][1])
    assert "- CPU:" in report and "torch " in report


def test_rows_are_what_trl_supports(bench):
    """Images only in the first user turn (TRL's collator raises on images in tool responses), one per placeholder."""
    from workload import make_rows

    rows = make_rows(num_rows=3, images_per_row=4, turns=3, prompt_words=5, answer_words=3, image_size=32)
    for row in rows:
        placeholders = [
            (index, item)
            for index, message in enumerate(row["messages"])
            for item in message["content"]
            if item["type"] == "image"
        ]
        assert len(placeholders) == len(row["images"]) == 4
        assert {index for index, _ in placeholders} == {1}
        assert [m["role"] for m in row["messages"]] == ["system"] + ["user", "assistant"] * 3


def test_gpu_model_is_qwen3_vl_2b_shaped(bench):
    """The `--device cuda` model has Qwen3-VL-2B's size (about 2.1B parameters with tied embeddings), built on the
    meta device so that nothing is allocated."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration
    from workload import qwen3_vl_2b_config

    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl_processor

    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(qwen3_vl_2b_config(build_tiny_qwen3_vl_processor()))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert 2.0e9 < sum(p.numel() for p in model.parameters()) < 2.3e9


# -- benchmarks/sp_memory.py ----------------------------------------------------------------------------------------

SP_MEMORY = BENCH.with_name("sp_memory.py")


@pytest.fixture(scope="module")
def sp_memory():
    return load_script("vlsft_sp_memory", SP_MEMORY)


def test_saved_activations_count_each_storage_once_without_parameters(sp_memory):
    """Views of one saved storage count once; the weights autograd saves for a matmul do not count."""
    import torch

    layer = torch.nn.Linear(8, 16)
    saved = sp_memory.SavedActivations(layer)
    x = torch.randn(4, 8, requires_grad=True)
    with saved.hooks():
        hidden = layer(x)  # saves x (and the weight, a parameter)
        out = (hidden * hidden[:, :16]).sum()  # saves `hidden` twice, through a view
    out.backward()
    assert saved.bytes == x.numel() * 4 + hidden.numel() * 4


def test_sp_memory_table_and_goal_from_synthetic_runs(sp_memory):
    """The table's ratios and the slope fit: SP=2 at exactly half of SP=1's per-token bytes plus a constant has slope
    ratio 0.5 (goal 0.3 not met); SP=4 at a tenth meets 0.15. The largest rank counts; a repeated length keeps its
    smaller RSS."""
    def run(per_token, constant, ranks):
        steps = [{"tokens": n, "saved": per_token * n + constant, "rss": 100 * n} for n in (100, 200, 100)]
        steps[2] = {**steps[2], "rss": 1}
        return [steps] + [[{**s, "saved": s["saved"] - 1} for s in steps]] * (ranks - 1)

    report = sp_memory.report({1: run(1000, 0, 1), 2: run(500, 4096, 2), 4: run(100, 4096, 4)}, [512, 1024], [1, 2, 4],
                              1.0, "0 0 0")
    rows = _table(report, "target length")
    assert [r[:3] for r in rows[1:]] == [["512", "100", "1"], ["512", "100", "2"], ["512", "100", "4"],
                                         ["1024", "200", "1"], ["1024", "200", "2"], ["1024", "200", "4"]]
    assert rows[2][4] == f"{(500 * 100 + 4096) / 100000:.3f}" and rows[1][6] == "0.0"
    fits = _table(report, "SP")
    assert [r[3:] for r in fits[1:]] == [["1.000", "(base)"], ["0.500", "0.30: not met"], ["0.100", "0.15: met"]]


@pytest.mark.slow
def test_sp_memory_runs_sp_1_and_2(sp_memory, capsys):
    """Two real launches (1 and 2 processes, ~1 min on 2 cores): every cell comes out, SP=2 saves less per rank."""
    assert sp_memory.main(["--lengths", "128,256", "--sizes", "1,2"]) == 0
    rows = _table(capsys.readouterr().out, "target length")
    assert len(rows) == 5
    assert all(float(r[4]) < 1 for r in rows[1:] if r[2] == "2")

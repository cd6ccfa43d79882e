"""What masking by the incremental-rendering rule costs at collate time, against a generation-marked template.

Families without a marked copy (Qwen3-VL, Qwen2.5-VL, Gemma 3, Idefics3, SmolVLM, LLaVA-NeXT, Gemma 4's release
revision, and every family on the generic path) are masked by the rule: for each assistant turn k the template renders
messages[:k] with the generation prompt and messages[:k+1], so a row with n answers costs 2n+1 renders instead of one.
This measures that cost where users would see it, in the collator, on the benchmark's Qwen3-VL rows: the stock
template masked by the rule against TRL's own generation-marked copy of it (`qwen3_vl_training.jinja`), one
collation of each interleaved per repetition, so load on the machine falls on both alike. Collation runs in the
dataloader workers, beside the training step: `benchmarks/bench.py` compares it with a step.

    python benchmarks/rule_masks.py [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import make_rows  # noqa: E402

from vlsft.collator import VisionChatCollator  # noqa: E402
from vlsft.templates import stock_template  # noqa: E402
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl_processor  # noqa: E402


def measure(turns: int, reps: int, rows: int) -> tuple[float, float, int]:
    """Median collate seconds (rule, marked) on `rows` rows of `turns` answers each, and the supervised count."""
    processor = build_tiny_qwen3_vl_processor()
    marked = resources.files("trl").joinpath("chat_templates", "qwen3_vl_training.jinja").read_text()
    by_rule = VisionChatCollator(processor, stock_template("qwen3_vl"))
    by_markers = VisionChatCollator(processor, marked)
    assert by_rule.generic_masks and not by_markers.generic_masks
    batch = make_rows(num_rows=rows, images_per_row=2, turns=turns)
    rule_batch, marked_batch = by_rule(batch), by_markers(batch)
    assert rule_batch["input_ids"].equal(marked_batch["input_ids"])
    times = {"rule": [], "marked": []}
    for _ in range(reps):
        for name, collator in (("rule", by_rule), ("marked", by_markers)):
            start = time.perf_counter()
            collator(batch)
            times[name].append(time.perf_counter() - start)
    supervised = int((rule_batch["labels"] != -100).sum())
    return statistics.median(times["rule"]), statistics.median(times["marked"]), supervised


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="timed collations per side and point")
    parser.add_argument("--rows", type=int, default=2, help="rows per batch")
    parser.add_argument("--turns", type=str, default="1,2,4,8", help="answers per row, comma-separated")
    args = parser.parse_args(argv)
    print(f"Rule vs generation-marked template, Qwen3-VL rows ({args.rows} rows of 2 images; medians of {args.reps}).")
    print()
    print("| answers/row | supervised | collate ms, rule | collate ms, marked | rule / marked |")
    print("|---:|---:|---:|---:|---:|")
    for turns in (int(t) for t in args.turns.split(",")):
        rule, marked, supervised = measure(turns, args.reps, args.rows)
        print(f"| {turns} | {supervised} | {rule * 1e3:.1f} | {marked * 1e3:.1f} | {rule / marked:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

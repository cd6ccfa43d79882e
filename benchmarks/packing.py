"""Packing benchmark: supervised tokens/s of packed vs padded vs `group_by_length` batches, on CPU.

    python benchmarks/packing.py                 # defaults below, ~3 min on 2 cores
    python benchmarks/packing.py --rows 64       # quicker
    python benchmarks/packing.py --model qwen3_5 # the hybrid Qwen3.5 (GatedDeltaNet + attention)

Workload: row lengths drawn from a log-normal, the shape of public VLM SFT mixtures (a long tail of multi-image and
multi-turn rows over many short single-image ones): at full scale a median of ~1,100 tokens, clipped to 0.5k-8k, with
1-4 images of 256 tokens each. A 2-core CPU cannot train that in minutes, so every length is scaled down 8x: lengths
log-normal(mu=ln(140), sigma=0.7) clipped to 64-1024 tokens, 1-4 images (weights 50/25/15/10%) of 16 tokens each
(128x128 px), the text split 70/30 into user prompt and supervised answer. The exact lengths come from the training
collator (`vlsft.packing.plan.row_lengths`).

Model: the tiny random Qwen3-VL of `vlsft.testing.tiny_qwen3_vl` made wider and deeper (hidden 256, 4 layers), float32, sdpa,
with vlsft's supervised-only loss head; with `--model qwen3_5`, the tiny hybrid Qwen3.5 of `vlsft.testing.tiny_qwen`
(hidden 256: one GatedDeltaNet layer on transformers' torch fallback, which vlsft runs row by row in a pack, and one
attention layer). Each mode trains one epoch over the same rows (one forward, backward and SGD
step per batch, as `VLSFTTrainer` does; collation timed separately), after one untimed warm-up batch:
- padded: random batches of `--batch` rows, padded to the longest (what `VLSFTTrainer` does by default);
- group_by_length: transformers' length-grouped sampler (megabatches of 50 batches sorted by length), then padded;
- packed: `vlsft.packing` best-fit-decreasing packs of at most `--batch` x (the longest row) tokens, one pack per
  step: the token count of a padded batch that holds the longest row, which padded training must have memory for.
Peak memory is the growth of the resident set over the epoch (`VmHWM`, reset before each mode).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import load_average, machine_lines  # noqa: E402
from sidebyside import CpuStepMemory  # noqa: E402
from workload import _noise_image, _sentence  # noqa: E402
from vlsft import VLSFTConfig  # noqa: E402
from vlsft.collator import training_collator  # noqa: E402
from vlsft.loss import attach_supervised_head  # noqa: E402
from vlsft.packing.attention import use_packed_attention  # noqa: E402
from vlsft.packing.collator import PackedCollator  # noqa: E402
from vlsft.packing.plan import plan_packs, row_lengths  # noqa: E402
from vlsft.testing.tiny_qwen import build_tiny_qwen3_5  # noqa: E402
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl  # noqa: E402

IMAGE_TOKENS = 16  # a 128x128 image on the tiny Qwen3-VL (patch 16, 2x2 merge)
TEMPLATE_TOKENS = 12  # role markers and newlines of one exchange


def make_rows(count: int, seed: int, median: float, sigma: float, low: int, high: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        length = int(np.clip(rng.lognormal(math.log(median), sigma), low, high))
        images = int(rng.choice([1, 2, 3, 4], p=[0.5, 0.25, 0.15, 0.1]))
        text = max(length - images * IMAGE_TOKENS - TEMPLATE_TOKENS, 8)
        answer = max(int(0.3 * text), 2)
        content = [{"type": "image"}] * images + [{"type": "text", "text": _sentence(rng, text - answer)}]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": _sentence(rng, answer)}]},
                ],
                "images": [_noise_image(rng, 128, 128) for _ in range(images)],
            }
        )
    return rows


def batches(mode: str, lengths: list[int], batch: int, budget: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    if mode == "padded":
        return [order[i : i + batch] for i in range(0, len(order), batch)]
    if mode == "group_by_length":
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(seed)
        grouped = get_length_grouped_indices(lengths, batch, generator=generator)
        return [grouped[i : i + batch] for i in range(0, len(grouped), batch)]
    packs = plan_packs(lengths, budget, seed)
    return [packs[i] for i in np.random.default_rng(seed).permutation(len(packs))]  # the sampler shuffles packs


def train_epoch(model, optimizer, collate, rows, groups) -> dict:
    def step(batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        output = model(**inputs, supervised_labels=batch["labels"])
        loss = output.nll_sum / output.num_tokens.clamp(min=1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(collate([rows[i] for i in groups[0]]))  # warm-up, untimed
    memory = CpuStepMemory()
    memory.start()
    totals = dict(collate_s=0.0, step_s=0.0, tokens=0, computed=0, supervised=0)
    for group in groups:
        start = time.perf_counter()
        batch = collate([rows[i] for i in group])
        totals["collate_s"] += time.perf_counter() - start
        mask = batch.get("attention_mask")
        totals["tokens"] += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        totals["computed"] += batch["input_ids"].numel()
        totals["supervised"] += int((batch["labels"][:, 1:] != -100).sum())
        start = time.perf_counter()
        step(batch)
        totals["step_s"] += time.perf_counter() - start
    totals["peak_bytes"] = memory.stop()
    return totals


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="rows per padded batch")
    parser.add_argument("--max-row", type=int, default=1024, help="longest row allowed (8k scaled down)")
    parser.add_argument("--median", type=float, default=140.0)
    parser.add_argument("--sigma", type=float, default=0.7)
    parser.add_argument("--min-row", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=("qwen3_vl", "qwen3_5"), default="qwen3_vl")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.model == "qwen3_5":
        base_model, processor = build_tiny_qwen3_5(seed=args.seed, hidden_size=256)
    else:
        base_model, processor = build_tiny_qwen3_vl(seed=args.seed, hidden_size=256, num_hidden_layers=4)
    base_model.set_attn_implementation("sdpa")
    config = VLSFTConfig(output_dir="unused", report_to="none", max_length=args.max_row)
    collator = training_collator(processor, config)
    rows = make_rows(args.rows, args.seed, args.median, args.sigma, args.min_row, args.max_row)
    lengths = [min(n, args.max_row) for n in row_lengths(rows, collator)]
    budget = args.batch * max(lengths)
    print("\n".join(machine_lines("cpu")))
    print(f"- load average before: {load_average()}")
    print(
        f"Model: {args.model}. Workload: {len(rows)} rows, lengths {min(lengths)}-{max(lengths)} tokens (median {int(np.median(lengths))}, "
        f"mean {np.mean(lengths):.0f}), {sum(len(r['images']) for r in rows)} images; batch {args.batch} rows; "
        f"pack budget {budget} tokens"
    )

    results = {}
    for mode in ("padded", "group_by_length", "packed"):
        model = copy.deepcopy(base_model)
        attach_supervised_head(model)
        if mode == "packed":
            use_packed_attention(model)  # as VLSFTTrainer does with packing: sdpa and linear attention row by row
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        collate = PackedCollator(collator, model=model) if mode == "packed" else collator
        groups = batches(mode, lengths, args.batch, budget, args.seed)
        results[mode] = train_epoch(model, optimizer, collate, rows, groups) | {"steps": len(groups)}

    padded = results["padded"]
    lines = [
        "| mode | steps | supervised tok/s | total tok/s | padding | step time (s) | collate (s) | peak memory (MiB) | supervised tok/s vs padded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results.items():
        rate = r["supervised"] / r["step_s"]
        lines.append(
            f"| {mode} | {r['steps']} | {rate:.0f} | {r['tokens'] / r['step_s']:.0f} | "
            f"{1 - r['tokens'] / r['computed']:.1%} | {r['step_s']:.1f} | {r['collate_s']:.1f} | "
            f"{r['peak_bytes'] / 2**20:.0f} | {rate / (padded['supervised'] / padded['step_s']):.2f}x |"
        )
    assert len({r["supervised"] for r in results.values()}) == 1, "every mode trains the same supervised tokens"
    print(f"- load average after: {load_average()}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""What users train: a mixed workload, vlsft padded vs vlsft packed vs TRL assistant-only padded, in one run.

    python benchmarks/mixed_workload.py              # CPU, ~4 min on 2 busy cores
    python benchmarks/mixed_workload.py --rows 12    # a smoke run

Workload (seeded): text lengths log-normal (median `--median` tokens, sigma `--sigma`, clipped to `--min-row` and
`--max-row`: a long tail of long rows over many short ones), 1-4 images per image row, each of a size drawn from
64-192 px (4-36 image tokens on the tiny Qwen3-VL); 25% of rows multi-turn (2-3 exchanges), 10% tool rows (a tool
schema, an assistant tool call, a tool reply, the answer), 10% short video rows (8-frame clips of
`vlsft.testing.tiny_video`). The lengths are the benchmark's `benchmarks/packing.py` scheme, scaled down 8x from
public VLM SFT mixtures so that a 2-core CPU trains it in minutes.

Model: `benchmarks/packing.py`'s tiny random Qwen3-VL (hidden 256, 4 layers, float32, sdpa). Every mode trains one
epoch over the same rows (same seed, same weights, an SGD step per batch), collation untimed, after one untimed
warm-up batch:
- vlsft padded: random batches of `--batch` rows padded to the longest, vlsft's supervised-only chunked head;
- vlsft packed: `vlsft.packing` packs of at most `--batch` x (the longest row) tokens, row-sliced sdpa;
- TRL 1.16 assistant-only padded: `SFTTrainer`'s own collator (`DataCollatorForVisionLanguageModeling`,
  `assistant_only_loss=True`, TRL's generation-marked template) and its own `compute_loss` (full logits), the same
  random batches; TRL's best settings for image rows (its packing and padding-free refuse vision datasets). Rows
  TRL's collator refuses are left out of its epoch and counted in the table's note.
Supervised tokens/s: supervised (shifted) label positions over the summed step time. Peak memory: the growth of the
resident set over the epoch (`VmHWM`, `sidebyside.CpuStepMemory`); on CUDA `torch.cuda.max_memory_allocated`.

MFU (GPU only) = model FLOPs / step time / the card's peak dense bf16 FLOPs, with model FLOPs of a step
= 6 x N x T + 6 x L x d x sum(len_i^2): N the parameters a token passes through (embeddings left out), T the real
(non-padding) tokens, L layers, d the attention width (heads x head_dim), len_i each row's length (causal attention,
forward + backward). Padding and other rows' tokens are not useful work, so they count for nothing. On the CPU there is
no meaningful peak bf16 figure: the table gives the achieved model GFLOP/s instead.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import load_average, machine_lines  # noqa: E402
from packing import batches, train_epoch  # noqa: E402
from sidebyside import CpuStepMemory, CudaStepMemory, build_sides  # noqa: E402
from workload import _noise_image, _sentence  # noqa: E402
from vlsft import VLSFTConfig  # noqa: E402
from vlsft.collator import training_collator  # noqa: E402
from vlsft.loss import attach_supervised_head  # noqa: E402
from vlsft.packing.attention import use_packed_attention  # noqa: E402
from vlsft.packing.collator import PackedCollator  # noqa: E402
from vlsft.packing.plan import row_lengths  # noqa: E402
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl  # noqa: E402
from vlsft.testing.tiny_video import write_moving_shape  # noqa: E402

TEMPLATE_TOKENS = 12
TRL = "TRL assistant-only padded"
SAME_ROWS = "vlsft padded, TRL's rows"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}
LOOKUP_TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "Look a word up.", "parameters": {
        "type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}},
}  # fmt: skip


def _text(rng, words: int) -> list[dict]:
    return [{"type": "text", "text": _sentence(rng, max(words, 1))}]


def make_rows(count: int, seed: int, median: float, sigma: float, low: int, high: int, clips: Path) -> list[dict]:
    """The mixed rows (module docstring); video clips are written under `clips`."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        length = int(np.clip(rng.lognormal(math.log(median), sigma), low, high))
        kind = rng.choice(["single", "multi_turn", "tool", "video"], p=[0.55, 0.25, 0.1, 0.1])
        row = {"images": [], "videos": [], "tools": None}
        if kind == "video":
            clip = clips / f"clip-{index}.mp4"
            write_moving_shape(clip, 8, 4, (64, 64), str(rng.choice(["left", "right", "up", "down"])))
            row["videos"], media, budget = [str(clip)], [{"type": "video"}], length - 32
        else:
            sizes = rng.choice([64, 96, 128, 192], size=int(rng.choice([1, 2, 3, 4], p=[0.5, 0.25, 0.15, 0.1])))
            row["images"] = [_noise_image(rng, int(s), int(s)) for s in sizes]
            media, budget = [{"type": "image"}] * len(sizes), length - sum(int(s) ** 2 // 1024 for s in sizes)
        text = max(budget - TEMPLATE_TOKENS, 8)
        exchanges = int(rng.integers(2, 4)) if kind == "multi_turn" else 1
        prompt, answer = int(0.7 * text / exchanges), max(int(0.3 * text / exchanges), 2)
        messages = []
        for turn in range(exchanges):
            messages.append({"role": "user", "content": (media if turn == 0 else []) + _text(rng, prompt)})
            if kind == "tool":
                word = str(rng.choice(["red", "circle", "left"]))
                call = {"type": "function", "function": {"name": "lookup", "arguments": {"word": word}}}
                messages.append({"role": "assistant", "content": [], "tool_calls": [call]})
                messages.append({"role": "tool", "name": "lookup", "content": _text(rng, 6)})
                row["tools"] = [LOOKUP_TOOL]
            messages.append({"role": "assistant", "content": _text(rng, answer)})
        rows.append({"messages": messages, **row})
    return rows


def model_flops(model, lengths: list[int]) -> float:
    """6 N T + 6 L d sum(len^2) (module docstring), for the rows of `lengths`."""
    config = model.config.get_text_config()
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    n = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    width = config.num_attention_heads * config.head_dim
    return 6.0 * n * sum(lengths) + 6.0 * config.num_hidden_layers * width * sum(x * x for x in lengths)


def trl_epoch(trainer, rows, groups, device: str) -> dict:
    """TRL's side of `packing.train_epoch`: its collator and `compute_loss`, an SGD step per batch."""
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1e-3)

    def step(batch):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        trainer.compute_loss(trainer.model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    collate = trainer.data_collator
    step(collate([dict(rows[i]) for i in groups[0]]))  # warm-up, untimed
    memory = CudaStepMemory() if device.startswith("cuda") else CpuStepMemory()
    memory.start()
    totals = dict(step_s=0.0, tokens=0, computed=0, supervised=0)
    for group in groups:
        batch = collate([dict(rows[i]) for i in group])
        totals["tokens"] += int(batch["attention_mask"].sum())
        totals["computed"] += batch["input_ids"].numel()
        totals["supervised"] += int((batch["labels"][:, 1:] != -100).sum())
        start = time.perf_counter()
        step(batch)
        totals["step_s"] += time.perf_counter() - start
    totals["peak_bytes"] = memory.stop()
    return totals


def _trl_accepts(collate, row) -> bool:
    try:
        collate([dict(row)])
        return True
    except Exception:  # noqa: BLE001 - any refusal of TRL's collator leaves the row out of TRL's epoch
        return False


def run(args) -> str:
    torch.set_num_threads(args.threads)
    base_model, processor = build_tiny_qwen3_vl(seed=args.seed, hidden_size=args.hidden_size, num_hidden_layers=args.layers)
    base_model.set_attn_implementation("sdpa")
    # No truncation: a row's template, tool schema and media (four 192 px images: 144 tokens) can take it over `--max-row`.
    config = VLSFTConfig(output_dir="unused", report_to="none", max_length=8 * args.max_row, use_cpu=True)
    collator = training_collator(processor, config)
    clips = tempfile.TemporaryDirectory(prefix="vlsft-mixed-")
    rows = make_rows(args.rows, args.seed, args.median, args.sigma, args.min_row, args.max_row, Path(clips.name))
    lengths = row_lengths(rows, collator)
    budget = args.batch * max(lengths)
    kinds = {"video": sum(bool(r["videos"]) for r in rows), "tool": sum(bool(r["tools"]) for r in rows),
             "multi-turn": sum(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in rows)}  # fmt: skip
    lines = machine_lines("cpu") + [f"- load average before: {load_average()}"]
    lines.append(
        f"- workload: {len(rows)} rows, lengths {min(lengths)}-{max(lengths)} tokens (median {int(np.median(lengths))}, "
        f"mean {np.mean(lengths):.0f}), {sum(len(r['images']) for r in rows)} images, "
        + ", ".join(f"{n} {k} rows" for k, n in kinds.items())
        + f"; batch {args.batch} rows; pack budget {budget} tokens; model hidden {args.hidden_size}, {args.layers} layers"
    )
    sides = build_sides(processor, copy.deepcopy(base_model), copy.deepcopy(base_model), rows[:1], "cpu", bf16=False)
    accepted = [i for i, row in enumerate(rows) if _trl_accepts(sides.trl.data_collator, row)]
    trl_groups = [[i for i in group if i in set(accepted)] for group in batches("padded", lengths, args.batch, budget, args.seed)]
    trl_groups = [group for group in trl_groups if group]
    modes = {
        "vlsft padded": batches("padded", lengths, args.batch, budget, args.seed),
        "vlsft packed": batches("packed", lengths, args.batch, budget, args.seed),
    }
    if len(accepted) < len(rows):  # vlsft on exactly TRL's batches too, so the two trainers compare like with like
        modes[SAME_ROWS] = trl_groups
    results = {}
    for mode, groups in modes.items():
        model = copy.deepcopy(base_model)
        attach_supervised_head(model)
        if mode == "vlsft packed":
            use_packed_attention(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        collate = PackedCollator(collator, model=model) if mode == "vlsft packed" else collator
        results[mode] = train_epoch(model, optimizer, collate, rows, groups) | {"steps": len(groups)}
    results[TRL] = trl_epoch(sides.trl, rows, trl_groups, "cpu") | {"steps": len(trl_groups)}
    sides.close()
    clips.cleanup()
    lines.append(f"- load average after: {load_average()}")
    left_out = len(rows) - len(accepted)
    return "\n".join(lines + [""] + table(results, base_model, lengths, accepted, left_out))


def table(results: dict, model, lengths: list[int], accepted: list[int], left_out: int) -> list[str]:
    padded = results["vlsft padded"]
    reference_rate = padded["supervised"] / padded["step_s"]
    reference_memory = padded["peak_bytes"]
    lines = [
        "| mode | steps | supervised tok/s | supervised tok/s vs vlsft padded | peak memory (MiB) | "
        "peak memory vs vlsft padded | padding | model GFLOP/s | MFU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results.items():
        rate = r["supervised"] / r["step_s"]
        rows_lengths = [lengths[i] for i in accepted] if mode in (TRL, SAME_ROWS) else lengths
        flops = model_flops(model, rows_lengths) / r["step_s"]
        lines.append(
            f"| {mode} | {r['steps']} | {rate:.0f} | {rate / reference_rate:.2f}x | {r['peak_bytes'] / 2**20:.0f} | "
            f"{r['peak_bytes'] / max(reference_memory, 1):.2f}x | {1 - r['tokens'] / r['computed']:.1%} | "
            f"{flops / 1e9:.1f} | n/a (CPU) |"
        )
    packed = results["vlsft packed"]["supervised"] / results["vlsft packed"]["step_s"]
    lines.append("")
    lines.append(f"Goal (CPU): vlsft packed >= 2x vlsft padded supervised tokens/s: {packed / reference_rate:.2f}x, "
                 f"{'met' if packed >= 2 * reference_rate else 'NOT met'}.")  # fmt: skip
    if left_out:
        same, trl = results[SAME_ROWS], results[TRL]
        lines.append(
            f"TRL's collator refused {left_out} of the rows (the video rows), left out of its epoch. On the rows and "
            f"batches TRL takes, TRL / vlsft padded: supervised tok/s "
            f"{(trl['supervised'] / trl['step_s']) / (same['supervised'] / same['step_s']):.2f}x, peak memory "
            f"{trl['peak_bytes'] / max(same['peak_bytes'], 1):.2f}x."
        )
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=80)
    parser.add_argument("--batch", type=int, default=4, help="rows per padded batch")
    parser.add_argument("--max-row", type=int, default=1024)
    parser.add_argument("--median", type=float, default=140.0)
    parser.add_argument("--sigma", type=float, default=0.8)
    parser.add_argument("--min-row", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the report to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(report)
    if args.output:
        Path(args.output).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

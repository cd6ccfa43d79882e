#!/usr/bin/env python
"""vlsft vs TRL 1.16, side by side in one run: collate time, train-step time, peak step memory, tokens per second.

    python benchmarks/bench.py                       # CPU: tiny Qwen3-VL widened to the real 151,936-token vocabulary
    python benchmarks/bench.py --device cuda         # GPU: a random Qwen3-VL-2B-shaped model in bf16
    python benchmarks/bench.py --reps 3 --sweep none # quicker: main table only

Prints Markdown tables (medians and vlsft/TRL ratios, with the project's goals) and writes them, with a description
of the machine, to benchmarks/results_<device>.md. Benchmarks report; they assert nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sidebyside import TRL_ASSISTANT, TRL_PLAIN, VLSFT, Measurement, build_sides, measure  # noqa: E402
from workload import build_models, make_rows  # noqa: E402

MiB = 1024 * 1024
# (measure, vlsft / TRL side it is compared to, largest ratio that meets the goal)
GOALS = {
    "collate": (TRL_PLAIN, 1.1),
    "step": (TRL_ASSISTANT, 0.5),
    "memory": (TRL_ASSISTANT, 0.3),
}


# -- the machine -----------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        return None


def machine_lines(device: str) -> list[str]:
    import transformers
    import trl

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"- CPU: {_cpu_model()}, {cores} cores usable, torch threads: {torch.get_num_threads()}"
        + (f", RAM {_memory_gib():.0f} GiB" if _memory_gib() else ""),
    ]
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        lines.append(f"- GPU: {props.name}, {props.total_memory / 1024**3:.0f} GiB, CUDA {torch.version.cuda}")
    lines.append(
        f"- torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    return lines


def load_average() -> str:
    try:
        return "/".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


# -- tables ----------------------------------------------------------------------------------------------------------


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "n/a"


def _goal(kind: str, value: float, reference: float) -> str:
    side, limit = GOALS[kind]
    met = reference > 0 and value / reference <= limit
    return f"<= {limit}x {side}: {'met' if met else 'NOT met'}"


def main_table(result: Measurement) -> list[str]:
    med = Measurement.median
    collate = {side: med(result.collate_s, side) * 1e3 for side in (VLSFT, TRL_ASSISTANT, TRL_PLAIN)}
    step = {side: med(result.step_s, side) * 1e3 for side in (VLSFT, TRL_ASSISTANT)}
    memory = {side: med(result.step_bytes, side) / MiB for side in (VLSFT, TRL_ASSISTANT)}
    speed = {side: result.tokens / (step[side] / 1e3) for side in step}
    return [
        f"| measure (median) | {VLSFT} | {TRL_ASSISTANT} | {TRL_PLAIN} | vlsft / {TRL_ASSISTANT} "
        f"| vlsft / {TRL_PLAIN} | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| collate (ms) | {collate[VLSFT]:.1f} | {collate[TRL_ASSISTANT]:.1f} | {collate[TRL_PLAIN]:.1f} "
        f"| {_ratio(collate[VLSFT], collate[TRL_ASSISTANT])} | {_ratio(collate[VLSFT], collate[TRL_PLAIN])} "
        f"| {_goal('collate', collate[VLSFT], collate[TRL_PLAIN])} |",
        f"| train step (ms) | {step[VLSFT]:.0f} | {step[TRL_ASSISTANT]:.0f} | - "
        f"| {_ratio(step[VLSFT], step[TRL_ASSISTANT])} | - | {_goal('step', step[VLSFT], step[TRL_ASSISTANT])} |",
        f"| peak step memory (MiB) | {memory[VLSFT]:.0f} | {memory[TRL_ASSISTANT]:.0f} | - "
        f"| {_ratio(memory[VLSFT], memory[TRL_ASSISTANT])} | - "
        f"| {_goal('memory', memory[VLSFT], memory[TRL_ASSISTANT])} |",
        f"| train tokens/s | {speed[VLSFT]:.0f} | {speed[TRL_ASSISTANT]:.0f} | - "
        f"| {_ratio(speed[VLSFT], speed[TRL_ASSISTANT])} | - | |",
    ]


def spread_line(result: Measurement) -> str:
    """How much the repetitions of each measure varied (max / min): a noise gauge for the medians above."""

    def spread(samples: dict) -> str:
        return ", ".join(f"{side} {max(values) / min(values):.2f}" for side, values in samples.items() if min(values) > 0)

    return (
        f"Spread of the repetitions (max / min): collate {spread(result.collate_s)}; "
        f"step {spread(result.step_s)}; memory {spread(result.step_bytes)}."
    )


def sweep_table(label: str, points: list[tuple[int, Measurement]]) -> list[str]:
    lines = [
        f"| {label} | tokens | supervised | collate ms vlsft / TRL a-o / TRL plain | vlsft / TRL plain "
        "| step ms vlsft / TRL | vlsft / TRL | step MiB vlsft / TRL | vlsft / TRL |",
        "|---:|---:|---:|---|---:|---|---:|---|---:|",
    ]
    med = Measurement.median
    for value, result in points:
        collate = [med(result.collate_s, side) * 1e3 for side in (VLSFT, TRL_ASSISTANT, TRL_PLAIN)]
        step = [med(result.step_s, side) * 1e3 for side in (VLSFT, TRL_ASSISTANT)]
        memory = [med(result.step_bytes, side) / MiB for side in (VLSFT, TRL_ASSISTANT)]
        lines.append(
            f"| {value} | {result.tokens} | {result.supervised[VLSFT]} "
            f"| {collate[0]:.1f} / {collate[1]:.1f} / {collate[2]:.1f} | {_ratio(collate[0], collate[2])} "
            f"| {step[0]:.0f} / {step[1]:.0f} | {_ratio(step[0], step[1])} "
            f"| {memory[0]:.0f} / {memory[1]:.0f} | {_ratio(memory[0], memory[1])} |"
        )
    return lines


def workload_line(args, result: Measurement, rows: list[dict]) -> str:
    images = sum(len(row["images"]) for row in rows)
    supervised = result.supervised[VLSFT]
    trl_note = "" if result.supervised[TRL_ASSISTANT] == supervised else f" (TRL: {result.supervised[TRL_ASSISTANT]})"
    return (
        f"Workload: {len(rows)} rows, {images} images ({args.image_size}px), {args.turns} turns/row; "
        f"{result.tokens} tokens, {supervised} supervised{trl_note}; identical input_ids on both sides: "
        f"{'yes' if result.same_input_ids else 'NO'}."
    )


# -- the run ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu (default) or cuda (one GPU)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's own); 1 is steadier on a shared machine"
    )
    parser.add_argument("--model", choices=["tiny", "qwen3-vl-2b"], help="default: tiny on CPU, qwen3-vl-2b on GPU")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden size of the tiny model")
    parser.add_argument("--vocab-size", type=int, default=151_936, help="LM vocabulary (Qwen3-VL's by default)")
    parser.add_argument("--reps", type=int, help="timed train steps per side, main table (default: 5 CPU, 20 GPU)")
    parser.add_argument("--sweep-reps", type=int, help="timed train steps per side per sweep point (2 CPU, 10 GPU)")
    parser.add_argument(
        "--collate-reps", type=int, default=30, help="timed collations per side (main table and each sweep point)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed collations per side before timing")
    parser.add_argument(
        "--step-warmup", type=int, default=2, help="untimed train steps per side before the main table's timing"
    )
    parser.add_argument(
        "--sweep-step-warmup",
        type=int,
        default=0,
        help="untimed train steps per side at each sweep point (the trainers are already warm from the main table)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the rows and of the model weights")
    parser.add_argument("--rows", type=int, default=2, help="rows per batch")
    parser.add_argument("--images-per-row", type=int, default=2)
    parser.add_argument("--turns", type=int, default=2, help="user/assistant exchanges per row")
    parser.add_argument("--prompt-words", type=int, default=300, help="words per user turn")
    parser.add_argument("--answer-words", type=int, default=14, help="words per assistant turn")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default: 128 on CPU, 448 on GPU)")
    parser.add_argument("--loss-chunk-size", type=int, help="vlsft's VLSFTConfig.loss_chunk_size (default: its own)")
    parser.add_argument(
        "--sweep", default="images,length", help="comma-separated sweeps to run: images, length; 'none' for none"
    )
    parser.add_argument("--sweep-images", default="1,4,16", help="images per row for the images sweep")
    parser.add_argument("--sweep-turns", default="1,2,4", help="turns per row for the sequence-length sweep")
    parser.add_argument("--output", help="results file (default benchmarks/results_<device>.md; '-' to write none)")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    args.model = args.model or ("qwen3-vl-2b" if on_gpu else "tiny")
    args.image_size = args.image_size or (448 if on_gpu else 128)
    args.reps = args.reps or (20 if on_gpu else 5)
    args.sweep_reps = args.sweep_reps or (10 if on_gpu else 2)
    args.sweeps = [] if args.sweep == "none" else [name.strip() for name in args.sweep.split(",") if name.strip()]
    unknown = set(args.sweeps) - {"images", "length"}
    if unknown:
        parser.error(f"unknown sweep(s) {sorted(unknown)}: use images, length or none")
    if on_gpu and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch sees no GPU")
    return args


def rows_for(args, images_per_row: int | None = None, turns: int | None = None) -> list[dict]:
    return make_rows(
        num_rows=args.rows,
        images_per_row=args.images_per_row if images_per_row is None else images_per_row,
        turns=args.turns if turns is None else turns,
        prompt_words=args.prompt_words,
        answer_words=args.answer_words,
        image_size=args.image_size,
        seed=args.seed,
    )


def run(args) -> str:
    """Run every measurement and return the report (Markdown)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = args.device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    load_before = load_average()
    started = datetime.datetime.now().astimezone()
    rows = rows_for(args)
    processor, vlsft_model, trl_model = build_models(
        args.model, args.vocab_size, args.hidden_size, args.image_size, dtype, device=args.device, seed=args.seed
    )
    vlsft_options = {} if args.loss_chunk_size is None else {"loss_chunk_size": args.loss_chunk_size}
    sides = build_sides(processor, vlsft_model, trl_model, rows, args.device, bf16=on_gpu, vlsft_options=vlsft_options)
    try:
        result = measure(sides, rows, args.collate_reps, args.reps, warmup=args.warmup, step_warmup=args.step_warmup)
        report = [
            f"## vlsft vs TRL, {args.device}",
            "",
            f"Model: random {args.model} Qwen3-VL"
            + (f" (hidden {args.hidden_size})" if args.model == "tiny" else "")
            + f", vocabulary {args.vocab_size:,}, {str(dtype).replace('torch.', '')}. "
            f"Medians of {args.collate_reps} collations and {args.reps} train steps per side, interleaved, after "
            f"{args.warmup} untimed collation(s) and {args.step_warmup} untimed step(s) per side.",
            "",
            workload_line(args, result, rows),
            "",
            *main_table(result),
            "",
            spread_line(result),
        ]
        print("\n".join(report), flush=True)
        sweeps = {
            "images": ("images/row", "images_per_row", _ints(args.sweep_images)),
            "length": ("turns/row", "turns", _ints(args.sweep_turns)),
        }
        for name in args.sweeps:
            label, key, values = sweeps[name]
            points = []
            for value in values:
                sweep_rows = rows_for(args, **{key: value})
                points.append(
                    (
                        value,
                        measure(
                            sides,
                            sweep_rows,
                            args.collate_reps,
                            args.sweep_reps,
                            warmup=args.warmup,
                            step_warmup=args.sweep_step_warmup,
                        ),
                    )
                )
            section = [
                "",
                f"Scaling with {label} ({args.rows} rows; medians of {args.collate_reps} collations and "
                f"{args.sweep_reps} steps per side):",
                "",
                *sweep_table(label, points),
            ]
            print("\n".join(section), flush=True)
            report += section
    finally:
        sides.close()
    machine = [
        "",
        f"Machine ({started:%Y-%m-%d %H:%M %Z}; load average 1/5/15 min: {load_before} before, "
        f"{load_average()} after):",
        "",
        *machine_lines(args.device),
    ]
    print("\n".join(machine), flush=True)
    return "\n".join(report + machine) + "\n"


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    output = args.output or str(Path(__file__).resolve().parent / f"results_{args.device}.md")
    if output != "-":
        Path(output).write_text(report)
        print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

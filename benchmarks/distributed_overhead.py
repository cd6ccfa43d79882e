#!/usr/bin/env python
"""What keeping ranks in step costs (vlsft/distributed.py), on 2 CPU processes under DeepSpeed ZeRO-3 over gloo.

    accelerate launch --multi_gpu --num_processes 2 benchmarks/distributed_overhead.py [--hidden_size 64]

Measures, on the tiny Qwen3-VL (medians):
- the one all-reduce per forward that agrees on modalities and head chunks (`agree_on_step_shape`);
- one empty LM-head chunk under ZeRO-3 (its parameter gather included), the price of padding a rank's chunk count;
- the dummy vision pass (forward + backward), against a whole training step on 4 text-only rows.
Prints a Markdown table on the main process. Benchmarks report; they assert nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import assistant, user  # noqa: E402
from vlsft import VLSFTConfig, VLSFTTrainer  # noqa: E402
from vlsft.distributed import agree_on_step_shape  # noqa: E402
from vlsft.dummy_vision import dummy_vision_pass  # noqa: E402
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def median_ms(function, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class StepTimes(TrainerCallback):
    def __init__(self):
        self.durations, self.start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append((time.perf_counter() - self.start) * 1000)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=50)
    cli = parser.parse_args()

    rows = [{"messages": [user(f"Question {i}?"), assistant("An answer of a few words. " * (i + 1))], "images": []} for i in range(4)]
    model, processor = build_tiny_qwen3_vl(seed=0, hidden_size=cli.hidden_size)
    args = VLSFTConfig(
        output_dir="/tmp/vlsft-distributed-overhead", report_to="none", per_device_train_batch_size=2, max_steps=cli.reps,
        learning_rate=1e-4, optim="sgd", save_strategy="no", logging_steps=10_000, disable_tqdm=True,
        deepspeed=str(REPO / "configs/ds_zero3.json"),
    )
    trainer = VLSFTTrainer(model, args=args, train_dataset=Dataset.from_list(rows * cli.reps), processing_class=processor)
    step_times = StepTimes()
    trainer.add_callback(step_times)
    trainer.train()
    step_ms = statistics.median(step_times.durations[1:])  # the first step also traces ZeRO-3's module order

    engine = trainer.model_wrapped
    module = engine.module
    labels = torch.full((2, 64), -100)
    labels[:, 10:40] = 1
    all_reduce_ms = median_ms(lambda: agree_on_step_shape({}, labels, 256), cli.reps * 4)
    head = module.get_output_embeddings()
    empty = torch.zeros(0, module.config.text_config.hidden_size)
    with torch.no_grad():
        empty_chunk_ms = median_ms(lambda: head(empty), cli.reps * 4)

    # The dummy pass alone, forward + backward, on a whole (unsharded) copy: its compute, without ZeRO's gathers.
    whole, _ = build_tiny_qwen3_vl(seed=0, hidden_size=cli.hidden_size)
    dummy_ms = median_ms(lambda: (dummy_vision_pass(whole)(whole, torch.device("cpu")) * 0).backward(), cli.reps)

    if trainer.accelerator.is_main_process:
        print(f"| 2 CPU processes, ZeRO-3, gloo, tiny Qwen3-VL hidden {cli.hidden_size} | median ms |")
        print("| --- | --- |")
        print(f"| training step, 2 text-only rows per rank (dummy vision pass in every forward) | {step_ms:.1f} |")
        print(f"| agree_on_step_shape: one all-reduce of 5 ints | {all_reduce_ms:.3f} |")
        print(f"| one empty LM-head chunk (forward, gather included) | {empty_chunk_ms:.3f} |")
        print(f"| dummy vision pass, forward + backward (compute only, unsharded) | {dummy_ms:.2f} |")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()

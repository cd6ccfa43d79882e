"""Evaluate (no training) the tiny Qwen3-VL on 5 rows with packing on (eval rows collated padding-free): over 2
ranks with 2 rows per device, the last eval batch holds 1 real row and 3 duplicates that accelerate adds and must
drop. `--deleted N`: picture rows whose row N loses its image file after validation (`invalid_rows: skip` drops it
mid-run, on one rank and not the other). Run alone, or under `accelerate launch --multi_gpu --num_processes 2` (gloo on the CPU) by
tests/test_packing_bad_input.py; `eval_loss` is also called in-process for the 1-process reference."""

import argparse
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for tests.* when launched as a script

from tests.scripts.one_step import eval_rows  # noqa: E402
from tests.test_loss import rows_of_different_lengths  # noqa: E402
from vlsft import VLSFTConfig, VLSFTTrainer  # noqa: E402
from vlsft.distributed import leave_distributed_run  # noqa: E402
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl  # noqa: E402


def picture_eval_rows(directory: Path, without: int | None = None) -> list[dict]:
    """5 rows whose images are files in `directory` (one directory per rank: each writes its own), `without` one."""
    from tests.test_validation_bad_input import picture_rows

    directory.parent.mkdir(parents=True, exist_ok=True)
    rows = picture_rows(directory, count=5)
    return [row for n, row in enumerate(rows) if n != without]


def evaluate(output_dir: str, mode: str, deleted: int | None = None) -> tuple[float, VLSFTTrainer]:
    """The eval loss over `eval_rows()`, with `mode` "packing", "padding_free" or "padded". With `deleted`: over
    `picture_eval_rows()` with `invalid_rows: skip`, whose row `deleted` loses its image file after validation (so it
    is skipped mid-run)."""
    model, processor = build_tiny_qwen3_vl(seed=0)
    rows = eval_rows()
    if deleted is not None:
        images = Path(output_dir) / f"images-rank{os.environ.get('RANK', '0')}"
        rows = picture_eval_rows(images)
    packing = {"packing": {"packing": True, "max_length": 100}, "padding_free": {"padding_free": True}}.get(mode, {})
    args = VLSFTConfig(
        output_dir=output_dir, report_to="none", per_device_eval_batch_size=2, save_strategy="no", seed=0,
        disable_tqdm=True, invalid_rows="skip", **packing,
    )
    trainer = VLSFTTrainer(
        model, args=args, train_dataset=Dataset.from_list(rows_of_different_lengths()),
        eval_dataset=Dataset.from_list(rows), processing_class=processor,
    )
    if deleted is not None:
        (images / f"{deleted}.png").unlink()
    return trainer.evaluate()["eval_loss"], trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["packing", "padding_free", "padded"], default="packing")
    parser.add_argument("--deleted", type=int, default=None, help="picture rows; this one's image deleted mid-run")
    cli = parser.parse_args()
    loss, trainer = evaluate(str(Path(cli.out).parent / "run"), cli.mode, cli.deleted)
    if trainer.accelerator.is_main_process:
        torch.save({"eval_loss": loss, "world_size": trainer.accelerator.num_processes}, cli.out)
        print("world_size", trainer.accelerator.num_processes, "eval_loss", loss)
    leave_distributed_run(trainer.accelerator)

"""One SGD step (lr 1.0) of VLSFTTrainer over 4 conversations of very different answer lengths; the main process
saves the resulting weights. Run alone or under `accelerate launch --num_processes 2 --cpu` by tests/test_distributed.py."""

import argparse
import sys
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for tests.test_loss when launched as a script

from tests.test_loss import rows_of_different_lengths  # noqa: E402
from tests.test_weights import rows_only as weighted_rows  # noqa: E402
from vlsft import VLSFTConfig, VLSFTTrainer  # noqa: E402
from vlsft.tiny_model import build_tiny_qwen3_vl  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--per_device_batch", type=int, required=True)
parser.add_argument("--accumulation", type=int, default=1)
parser.add_argument("--weighted", action="store_true", help="train on tests.test_weights' rows with per-turn weights")
parser.add_argument("--packing", type=int, default=None, metavar="MAX_LENGTH", help="pack rows into MAX_LENGTH tokens")
cli = parser.parse_args()

model, processor = build_tiny_qwen3_vl(seed=0)
args = VLSFTConfig(
    output_dir=str(Path(cli.out).parent / "run"),
    report_to="none",
    per_device_train_batch_size=cli.per_device_batch,
    gradient_accumulation_steps=cli.accumulation,
    max_steps=1,
    learning_rate=1.0,
    optim="sgd",
    lr_scheduler_type="constant",
    max_grad_norm=0.0,
    gradient_checkpointing=False,
    save_strategy="no",
    logging_steps=1,
    seed=0,
    **({"packing": True, "max_length": cli.packing} if cli.packing else {}),
)
trainer = VLSFTTrainer(model, args=args, train_dataset=Dataset.from_list(weighted_rows() if cli.weighted else rows_of_different_lengths()), processing_class=processor)
trainer.train()
if trainer.accelerator.is_main_process:
    torch.save({n: p.detach().cpu() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}, cli.out)
    print("world_size", trainer.accelerator.num_processes, "loss", trainer.state.log_history[0]["loss"])
    if cli.packing:
        print("packs", [len(pack) for pack in trainer.train_dataset.plan])
# Leave together with the process group shut down (a gloo rank exiting with live threads can abort).
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()

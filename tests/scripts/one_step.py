"""SGD steps (lr 1.0) of VLSFTTrainer over 4 conversations of very different answer lengths; the main process saves
the weights after each step. Run alone, or under `accelerate launch --multi_gpu --num_processes 2` (gloo on the CPU)
by tests/test_distributed.py, which compares the two. `train_steps` is also called in-process for the reference.

Flags cover several requirements per launch (each launch costs tens of seconds): `--rows mixed` puts text-only
micro-batches on some ranks beside image ones, and with a small `--loss_chunk_size` the ranks' supervised counts
span different numbers of head chunks; `--rows video_mixed` puts a video on one rank only (the other has an image
or nothing); `--family` picks another tiny model (any family); `--deepspeed`, `--lora`, `--tie`, `--gradient_checkpointing`;
`--steps 2 --resume` saves a checkpoint every step and resumes a second trainer from the first; `--eval` evaluates
on 5 rows, an uneven last batch over 2 ranks.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for tests.test_loss when launched as a script

from tests.conftest import IMAGE, assistant, image, user  # noqa: E402
from tests.test_loss import ANSWERS, rows_of_different_lengths  # noqa: E402
from tests.test_weights import rows_only as weighted_rows  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from vlsft import VLSFTConfig, VLSFTTrainer  # noqa: E402
from vlsft.distributed import leave_distributed_run  # noqa: E402
from vlsft.testing.tiny_families import build_tiny  # noqa: E402
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl  # noqa: E402


def mixed_rows():
    """One image row with the longest answer, three text-only rows: whatever the sampler does, with 2 rows per rank
    one rank's micro-batch is text-only, and with 1 row per micro-batch three of four are."""
    image_row = {"messages": [user(IMAGE, "Describe it."), assistant(ANSWERS[1])], "images": [image((0, 0, 200), (64, 80))]}
    text_rows = [{"messages": [user(f"Question {i}?"), assistant(ANSWERS[i])], "images": []} for i in (0, 2, 3)]
    return [image_row, *text_rows]


def video_mixed_rows():
    """One row with a short video (a frame list: 4 frames, 2 temporal patches), one with an image, two text-only:
    with 2 rows per rank, whatever the sampler does, one rank's micro-batch has the video and the other's none."""
    from vlsft.testing.tiny_video import moving_shape_frames

    video_row = {
        "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way does it move?"}]},
            assistant(ANSWERS[1]),
        ],
        "images": [],
        "videos": [moving_shape_frames(4, size=(64, 48), direction="right")],
    }
    image_row = {"messages": [user(IMAGE, "Describe it."), assistant(ANSWERS[2])], "images": [image((0, 0, 200), (64, 80))],
                 "videos": []}
    text_rows = [{"messages": [user(f"Question {i}?"), assistant(ANSWERS[i])], "images": [], "videos": []} for i in (0, 3)]
    return [video_row, image_row, *text_rows]


def one_shard_rows():
    """Two rows of a large image and a long question, and a short answer at the end: split in two, every supervised
    token of the batch falls on the second shard (the first shard's rank supervises nothing)."""
    question = "Look closely at the whole picture and tell me, in one word, which colour fills most of it?"
    return [
        {"messages": [user(IMAGE, question), assistant(answer)], "images": [image((200, 0, 0), size)]}
        for answer, size in (("Red.", (160, 192)), ("Red", (160, 176)))
    ]


def eval_rows():
    """5 rows: over 2 ranks with 2 rows per device, the last eval batch holds 1 real row and 3 padding duplicates."""
    return mixed_rows() + [rows_of_different_lengths()[3]]


class RecordingTrainer(VLSFTTrainer):
    """Records, per micro-batch, whether it had images, whether it had videos and how many tokens it supervised (to
    prove that the run exercised what it is meant to)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.micro_batches.append(
                {"images": inputs.get("pixel_values") is not None, "videos": inputs.get("pixel_values_videos") is not None,
                 "supervised": int((inputs["labels"][:, 1:] != -100).sum()),
                 # (row, position) of each supervised target in the shifted labels, and the batch's length
                 "targets": (inputs["labels"][:, 1:] != -100).nonzero().tolist(), "length": inputs["labels"].shape[1]}
            )
            parallel = getattr(self.accelerator.unwrap_model(model), "_vlsft_sequence_parallel", None)
            if parallel is not None:  # this rank's (padded length, start, end) of the split sequence
                self.micro_batches[-1]["shard"] = parallel.bounds(inputs["labels"].shape[1])
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class CaptureWeights(TrainerCallback):
    """The full (gathered) weights after every optimizer step; a collective under ZeRO-3, so every rank calls it."""

    def __init__(self, trainer):
        self.trainer, self.weights = trainer, {}

    def on_step_end(self, args, state, control, **kwargs):
        state_dict = self.trainer.accelerator.get_state_dict(self.trainer.model_wrapped)
        if self.trainer.accelerator.is_main_process:
            self.weights[state.global_step] = {n: t.detach().cpu().clone() for n, t in state_dict.items()}


def build(cli, output_dir, max_steps, save_every_step=False):
    if cli.family == "qwen3_vl":
        model, processor = build_tiny_qwen3_vl(seed=0, tie_word_embeddings=cli.tie)
    elif cli.tie:
        raise SystemExit(f"--tie is only built for qwen3_vl, not {cli.family}")
    else:
        model, processor = build_tiny(cli.family, seed=0)
    peft_config = None
    if cli.lora:
        from peft import LoraConfig

        from vlsft.model_parts import lora_target_modules

        peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=lora_target_modules(), task_type="CAUSAL_LM")
    args = VLSFTConfig(
        output_dir=str(output_dir),
        report_to="none",
        per_device_train_batch_size=cli.per_device_batch,
        per_device_eval_batch_size=2,
        gradient_accumulation_steps=cli.accumulation,
        max_steps=max_steps,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        gradient_checkpointing=cli.gradient_checkpointing,
        loss_chunk_size=cli.loss_chunk_size,
        save_strategy="steps" if save_every_step else "no",
        save_steps=1,
        save_only_model=False,
        logging_steps=1,
        seed=0,
        deepspeed=cli.deepspeed,
        sequence_parallel_size=cli.sequence_parallel,
        **({"packing": True, "max_length": cli.packing} if cli.packing else {}),
    )
    rows = {"mixed": mixed_rows, "video_mixed": video_mixed_rows, "weighted": weighted_rows, "lengths": rows_of_different_lengths,
            "one_shard": one_shard_rows}[cli.rows]()
    trainer = RecordingTrainer(
        model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows()) if cli.eval else None,
        processing_class=processor,
        peft_config=peft_config,
    )
    trainer.micro_batches = []
    capture = CaptureWeights(trainer)
    trainer.add_callback(capture)
    return trainer, capture


def train_steps(cli) -> dict:
    """Train `cli.steps` steps; return (on the main process) the weights before and after each step, the logged
    loss, the eval loss, the micro-batches of every rank, and the resumed run's final weights."""
    out = Path(cli.out)
    trainer, capture = build(cli, out.parent / f"{out.stem}_run", cli.steps, save_every_step=cli.resume)
    start = {n: t.detach().cpu().clone() for n, t in trainer.model.state_dict().items()}
    trainer.train()
    accelerator = trainer.accelerator
    result = {
        "start": start,
        "steps": capture.weights,
        "world_size": accelerator.num_processes,
        "wrapper": type(trainer.model_wrapped).__name__,  # DeepSpeedEngine, DistributedDataParallel, FSDP<model>
        "loss": trainer.state.log_history[0]["loss"],
        "micro_batches": [None] * accelerator.num_processes,
        "packs": [len(pack) for pack in trainer.train_dataset.plan] if cli.packing else None,
    }
    if torch.distributed.is_initialized():
        torch.distributed.all_gather_object(result["micro_batches"], trainer.micro_batches)
    else:
        result["micro_batches"] = [trainer.micro_batches]
    if cli.eval:
        result["eval_loss"] = trainer.evaluate()["eval_loss"]
    if cli.resume:
        # A checkpoint's saved model reloads to the weights trained in memory; a second trainer resumed from the
        # first step's checkpoint ends on the uninterrupted run's last weights.
        checkpoint = out.parent / f"{out.stem}_run" / "checkpoint-1"
        if accelerator.is_main_process:
            from safetensors.torch import load_file

            result["checkpoint_1"] = load_file(str(checkpoint / "model.safetensors"))
        resumed, resumed_capture = build(cli, out.parent / f"{out.stem}_resumed", cli.steps)
        resumed.train(resume_from_checkpoint=str(checkpoint))
        result["resumed"] = resumed_capture.weights.get(cli.steps)
        resumed.accelerator.wait_for_everyone()
    return result, trainer


def parse(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--family", default="qwen3_vl", help="a tiny model of vlsft.testing.tiny_families")
    parser.add_argument("--rows", choices=["lengths", "mixed", "video_mixed", "weighted", "one_shard"], default="lengths",
                        help="weighted: tests.test_weights' rows with per-turn weights")
    parser.add_argument("--packing", type=int, default=None, metavar="MAX_LENGTH", help="pack rows into MAX_LENGTH tokens")
    parser.add_argument("--deepspeed", default=None, help="a DeepSpeed JSON (configs/ds_zero*.json)")
    parser.add_argument("--sequence_parallel", type=int, default=1, help="sequence_parallel_size")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--tie", action="store_true", help="tie the LM head to the input embeddings")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--loss_chunk_size", type=int, default=256)
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--resume", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    cli = parse()
    result, trainer = train_steps(cli)
    if trainer.accelerator.is_main_process:
        torch.save(result, cli.out)
        print("world_size", result["world_size"], "loss", result["loss"], json.dumps(result["micro_batches"]))
    # Leave together with the process group shut down, without the teardown that can abort a finished run.
    leave_distributed_run(trainer.accelerator)

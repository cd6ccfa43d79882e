"""vlsft and TRL measured in one process, on the same rows and the same model weights, repetitions interleaved.

Three things are measured per workload:
- collate time: vlsft's `VisionChatCollator`, TRL's `DataCollatorForVisionLanguageModeling` with
  `assistant_only_loss=True` (the collator `SFTTrainer` builds, with TRL's generation-marked Qwen3-VL template) and
  the same TRL class with `assistant_only_loss=False` (plain full-sequence loss, the cheapest TRL path);
- train-step time: forward + backward + optimizer step through each trainer's own `training_step`, on each trainer's
  own collated batch (same `input_ids`, each side's own labels);
- peak memory of that step: on CPU the growth of the process's resident set over the step (the kernel's high-water
  mark `VmHWM`, reset through `/proc/self/clear_refs` just before the step); on GPU `torch.cuda.max_memory_allocated`
  over what was allocated before the step.
Repetitions alternate between the sides (and rotate their order), so load from other processes hits both alike.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from vlsft import VLSFTConfig, VLSFTTrainer

VLSFT, TRL_ASSISTANT, TRL_PLAIN = "vlsft", "TRL assistant-only", "TRL plain"


# -- memory probes ---------------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} missing from /proc/self/status")


def _release_freed_memory() -> None:
    """Collect garbage and give glibc's freed heap pages back to the kernel, so the resident set before a step does
    not hold the previous step's buffers (which the next step would reuse without raising the high-water mark)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measure is only a little noisier
        pass


class CpuStepMemory:
    """Peak growth of the resident set during a block: `VmHWM` after it minus `VmRSS` before it."""

    def start(self) -> None:
        _release_freed_memory()
        self.base_kib = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set

    def stop(self) -> int:
        return (_status_kib("VmHWM") - self.base_kib) * 1024


class CudaStepMemory:
    """Peak of `torch.cuda.max_memory_allocated` during a block, over what was allocated before it."""

    def start(self) -> None:
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def stop(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.base


# -- the two trainers ------------------------------------------------------------------------------------------------


@dataclass
class Sides:
    """Both trainers with their optimizers, and the three collators."""

    vlsft: VLSFTTrainer
    trl: SFTTrainer
    collators: dict
    device: str
    output_dir: tempfile.TemporaryDirectory = field(repr=False)

    def trainer(self, name: str):
        return self.vlsft if name == VLSFT else self.trl

    def close(self) -> None:
        self.output_dir.cleanup()


def build_sides(
    processor, vlsft_model, trl_model, rows: list[dict], device: str, bf16: bool, vlsft_options: dict | None = None
) -> Sides:
    """The two trainers on their own model copies; `vlsft_options` are extra `VLSFTConfig` fields (e.g.
    `loss_chunk_size`) for investigating vlsft's own knobs."""
    output_dir = tempfile.TemporaryDirectory(prefix="vlsft-bench-")
    common = dict(
        report_to="none",
        max_length=None,  # no truncation on either side: both train on the full rows
        gradient_checkpointing=False,
        per_device_train_batch_size=len(rows),
        bf16=bf16,
        use_cpu=device == "cpu",
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )
    # `train_dataset` is only what the trainers inspect when built; the benchmark feeds the collators itself.
    dataset = Dataset.from_list(rows)
    vlsft = VLSFTTrainer(
        model=vlsft_model,
        args=VLSFTConfig(output_dir=f"{output_dir.name}/vlsft", **common, **(vlsft_options or {})),
        train_dataset=dataset,
        processing_class=processor,
    )
    trl = SFTTrainer(
        model=trl_model,
        args=SFTConfig(output_dir=f"{output_dir.name}/trl", assistant_only_loss=True, **common),
        train_dataset=dataset,
        processing_class=processor,
    )
    for trainer in (vlsft, trl):
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by `Trainer.train`'s loop, which is not run here
    collators = {
        VLSFT: vlsft.data_collator,
        TRL_ASSISTANT: trl.data_collator,
        TRL_PLAIN: DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=False),
    }
    if not isinstance(trl.data_collator, DataCollatorForVisionLanguageModeling) or not trl.data_collator.assistant_only_loss:
        raise RuntimeError(f"TRL built an unexpected collator: {trl.data_collator!r}")
    return Sides(vlsft=vlsft, trl=trl, collators=collators, device=device, output_dir=output_dir)


def train_step(trainer, batch: dict) -> None:
    """One optimizer step on one micro-batch, as the trainer's own loop does it."""
    num_items = trainer._get_num_items_in_batch([batch], trainer.args.device)
    trainer.training_step(trainer.model, dict(batch), num_items)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


# -- measurement -----------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Raw samples of one workload; medians are taken when reported."""

    tokens: int  # non-padding tokens of the batch
    supervised: dict  # side -> supervised (shifted) label count
    same_input_ids: bool
    collate_s: dict = field(default_factory=dict)  # side -> [seconds]
    step_s: dict = field(default_factory=dict)  # side -> [seconds]
    step_bytes: dict = field(default_factory=dict)  # side -> [bytes]

    @staticmethod
    def median(samples: dict, side: str) -> float:
        return statistics.median(samples[side])


def _rotations(names: list[str], reps: int):
    """Each repetition runs every side once, starting from a different side, so no side always goes first."""
    for rep in range(reps):
        shift = rep % len(names)
        yield names[shift:] + names[:shift]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    sides: Sides, rows: list[dict], collate_reps: int, step_reps: int, warmup: int = 1, step_warmup: int = 2
) -> Measurement:
    """Collate and train-step samples for one set of rows, both sides interleaved, after untimed warm-up rounds:
    `warmup` collations and `step_warmup` steps per side (the first step of a trainer allocates its optimizer
    state; later workloads on the same trainers need fewer)."""
    memory = CudaStepMemory() if sides.device.startswith("cuda") else CpuStepMemory()

    def collate(name):
        fresh = [dict(row) for row in rows]  # TRL's collator pops keys of the rows it is given
        start = time.perf_counter()
        batch = sides.collators[name](fresh)
        return batch, time.perf_counter() - start

    batches = {name: collate(name)[0] for name in (VLSFT, TRL_ASSISTANT)}
    tokens = int(batches[VLSFT]["attention_mask"].sum())
    result = Measurement(
        tokens=tokens,
        supervised={name: int((batch["labels"][:, 1:] != -100).sum()) for name, batch in batches.items()},
        same_input_ids=torch.equal(batches[VLSFT]["input_ids"], batches[TRL_ASSISTANT]["input_ids"]),
    )

    collate_names = [VLSFT, TRL_ASSISTANT, TRL_PLAIN]
    for _ in range(warmup):
        for name in collate_names:
            collate(name)
    for order in _rotations(collate_names, collate_reps):
        for name in order:
            result.collate_s.setdefault(name, []).append(collate(name)[1])

    step_names = [VLSFT, TRL_ASSISTANT]
    for _ in range(step_warmup):
        for name in step_names:
            train_step(sides.trainer(name), batches[name])
    for order in _rotations(step_names, step_reps):
        for name in order:
            memory.start()
            _sync(sides.device)
            start = time.perf_counter()
            train_step(sides.trainer(name), batches[name])
            _sync(sides.device)
            result.step_s.setdefault(name, []).append(time.perf_counter() - start)
            result.step_bytes.setdefault(name, []).append(memory.stop())
    return result

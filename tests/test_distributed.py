"""Data parallelism over 2 CPU processes (gloo, real `accelerate launch`): DDP and DeepSpeed ZeRO-2 / ZeRO-3 (+ LoRA,
+ offload) give the 1-process step with the same global batch, within 1e-4 of the update, while one rank's
micro-batch is text-only beside an image one and the ranks' supervised counts span different numbers of LM-head
chunks (every rank must make the same collective calls: vlsft/distributed.py). The ZeRO-3 run also saves, reloads,
resumes and evaluates an uneven last batch. Every launch runs under a timeout that turns a hang into a failure
showing the log tail."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.scripts.one_step import parse, train_steps

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "one_step.py"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
LAUNCH_TIMEOUT = 420  # seconds; the first DeepSpeed run also builds a small op with g++ (~20 s)
CHUNK = 4  # loss_chunk_size: the answers' supervised counts (2 to ~30 tokens) span 1 to 8 chunks


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(
    command_tail: list[str], processes: int = 2, timeout: int = LAUNCH_TIMEOUT, config_file: Path | None = None
) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes N ...` (gloo on the CPU), or with an accelerate config file;
    a hang fails with the log tail."""
    command = [ACCELERATE, "launch", *(["--config_file", str(config_file)] if config_file else ["--multi_gpu"])]
    command += ["--num_processes", str(processes), "--num_machines", "1", "--main_process_port", str(free_port())]
    command += [] if config_file else ["--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        result = subprocess.run(command + command_tail, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as error:
        tail = (error.stdout or b"")[-3000:], (error.stderr or b"")[-3000:]
        pytest.fail(f"hung for {timeout} s:\n" + "\n".join(t.decode() if isinstance(t, bytes) else t for t in tail))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def one_step_args(out, per_device_batch, **flags) -> list[str]:
    args = ["--out", str(out), "--per_device_batch", str(per_device_batch)]
    for key, value in flags.items():
        if value is True:
            args.append(f"--{key}")
        elif value not in (False, None):
            args += [f"--{key}", str(value)]
    return args


def run_pair(tmp_path, name, per_device_batch, reference_batch=4, wrapper="DeepSpeedEngine", config_file=None, **flags):
    """The 2-process run and its 1-process reference (in this process: no launch) with the same global batch."""
    out = tmp_path / f"{name}.pt"
    launch([str(SCRIPT), *one_step_args(out, per_device_batch, **flags)], config_file=config_file)
    distributed = torch.load(out)
    assert distributed["world_size"] == 2
    assert wrapper in distributed["wrapper"], distributed["wrapper"]
    reference_flags = {k: v for k, v in flags.items() if k not in ("deepspeed", "accumulation", "resume")}
    reference, _ = train_steps(parse(one_step_args(tmp_path / f"{name}_reference.pt", reference_batch, **reference_flags)))
    return distributed, reference


def assert_same_step(distributed, reference, step=1, before=None):
    """Equal weights after `step`, within 1e-4 of the reference's update from `before` (the start by default)."""
    before = before or reference["start"]
    expected, actual = reference["steps"][step], distributed["steps"][step]
    update = max((expected[n] - before[n]).abs().max() for n in before if n in expected)
    assert update > 1e-3
    difference = max((expected[n] - actual[n]).abs().max() for n in expected)
    assert difference <= 1e-4 * update, float(difference / update)


def assert_ranks_out_of_step_without_the_fix(distributed):
    """The run exercised both hang classes: at some micro-step one rank had images and another none, and the ranks'
    supervised counts needed different numbers of head chunks."""
    ranks = distributed["micro_batches"]
    micro_steps = list(zip(*ranks))
    assert any(len({batch["images"] for batch in step}) == 2 for step in micro_steps), ranks
    assert any(len({math.ceil(batch["supervised"] / CHUNK) for batch in step}) == 2 for step in micro_steps), ranks


def assert_video_on_one_rank_only(distributed, crossed: bool):
    """At some micro-step one rank had a video and another none (so that rank ran the tower on a dummy video); with
    `crossed`, at some micro-step one rank had only the video and another only the image (each runs a real pass and
    a dummy pass, in opposite modality order)."""
    ranks = distributed["micro_batches"]
    micro_steps = list(zip(*ranks))
    assert any(len({batch["videos"] for batch in step}) == 2 for step in micro_steps), ranks
    if crossed:
        kinds = [{(batch["images"], batch["videos"]) for batch in step} for step in micro_steps]
        assert any({(True, False), (False, True)} <= step for step in kinds), ranks


@pytest.mark.parametrize(
    "family, per_device_batch, accumulation",
    [("qwen3_vl", 2, 1), ("qwen3_vl", 1, 2), ("qwen2_5_vl", 1, 2)],
    ids=["qwen3_vl-2rows", "qwen3_vl-1rowx2", "qwen2_5_vl-1rowx2"],
)
def test_zero3_video_on_one_rank_only(tmp_path, family, per_device_batch, accumulation):
    """ZeRO-3 over 2 ranks, rows {a video, an image, two text-only}. With 2 rows per rank, whatever the sampler does,
    one rank has the video and the other none (here: video + image beside two text rows, a rank missing both
    modalities). With 1 row x 2 accumulated micro-batches the first micro-step puts the video beside the image
    (each rank misses the other's modality) and the second is text-only on both ranks. Qwen-VL runs its vision tower
    once per modality present, so a rank without the video runs it on a dummy input. No hang, and the step equals
    the 1-process step (4 rows in one batch) within 1e-4 of the update."""
    distributed, reference = run_pair(
        tmp_path, f"zero3_video_{family}_{per_device_batch}", per_device_batch=per_device_batch, accumulation=accumulation,
        rows="video_mixed", family=family, loss_chunk_size=CHUNK, deepspeed=REPO / "configs/ds_zero3.json",
    )
    assert_video_on_one_rank_only(distributed, crossed=per_device_batch == 1)
    assert_ranks_out_of_step_without_the_fix(distributed)
    assert reference["micro_batches"][0][0]["videos"]  # the reference trained on the video too
    assert_same_step(distributed, reference)


def test_ddp_text_only_rank_uneven_chunks_checkpointing(tmp_path):
    distributed, reference = run_pair(
        tmp_path, "ddp", per_device_batch=2, rows="mixed", loss_chunk_size=CHUNK, gradient_checkpointing=True,
        wrapper="DistributedDataParallel",
    )
    assert_ranks_out_of_step_without_the_fix(distributed)
    assert_same_step(distributed, reference)


def test_zero2_text_only_rank_uneven_chunks(tmp_path):
    distributed, reference = run_pair(
        tmp_path, "zero2", per_device_batch=2, rows="mixed", loss_chunk_size=CHUNK, deepspeed=REPO / "configs/ds_zero2.json"
    )
    assert_ranks_out_of_step_without_the_fix(distributed)
    assert_same_step(distributed, reference)


def test_zero3_accumulation_tied_head_checkpointing_save_resume_eval(tmp_path):
    """ZeRO-3, 2 ranks x 1 row x 2 accumulated micro-batches, tied head, gradient checkpointing: two steps equal the
    1-process steps; the step-1 checkpoint reloads to the step-1 weights; a run resumed from it ends on the
    uninterrupted step-2 weights; the eval loss over 5 rows (an uneven last batch) equals the 1-process one."""
    distributed, reference = run_pair(
        tmp_path,
        "zero3",
        per_device_batch=1,
        accumulation=2,
        steps=2,
        rows="mixed",
        loss_chunk_size=CHUNK,
        tie=True,
        gradient_checkpointing=True,
        eval=True,
        resume=True,
        deepspeed=REPO / "configs/ds_zero3.json",
    )
    assert_ranks_out_of_step_without_the_fix(distributed)
    assert_same_step(distributed, reference, step=1)
    assert_same_step(distributed, reference, step=2, before=reference["steps"][1])
    trained = distributed["steps"][1]
    for name, saved in distributed["checkpoint_1"].items():
        assert torch.equal(saved, trained[name]), name
    resumed, uninterrupted = distributed["resumed"], distributed["steps"][2]
    assert max((resumed[n] - uninterrupted[n]).abs().max() for n in uninterrupted) <= 1e-6
    assert abs(distributed["eval_loss"] - reference["eval_loss"]) <= 1e-5 * reference["eval_loss"]


def test_zero3_lora_tied_head_checkpointing(tmp_path):
    """ZeRO-3 + LoRA: the frozen, tied head is partitioned while the checkpointed chunks recompute it."""
    distributed, reference = run_pair(
        tmp_path,
        "zero3_lora",
        per_device_batch=2,
        rows="mixed",
        loss_chunk_size=CHUNK,
        lora=True,
        tie=True,
        gradient_checkpointing=True,
        deepspeed=REPO / "configs/ds_zero3.json",
    )
    assert_ranks_out_of_step_without_the_fix(distributed)
    assert_same_step(distributed, reference)


def test_zero3_offload_keeps_the_recipe_optimizer(tmp_path):
    """SGD stays SGD under ZeRO-3 offload (accelerate's CPU Adam swap would give another update)."""
    distributed, reference = run_pair(
        tmp_path, "zero3_offload", per_device_batch=2, rows="mixed", loss_chunk_size=CHUNK,
        deepspeed=REPO / "configs/ds_zero3_offload.json",
    )
    assert_same_step(distributed, reference)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without GPUs")
def test_fsdp_without_gpus_is_refused_not_silently_ddp(monkeypatch):
    """accelerate 1.15 turns its FSDP plugin on only for GPU-type runs: `accelerate launch --config_file
    configs/fsdp2.yaml --num_processes 2` on this CPU trains plain DDP (tried: the model came back wrapped in
    DistributedDataParallel). VLSFTConfig refuses that instead of letting an `fsdp2` layout run unsharded."""
    from vlsft import VLSFTConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP needs GPUs"):
        VLSFTConfig(output_dir="unused", report_to="none")


def test_moe_load_balancing_loss_found_after_fsdp2_swaps_the_class(tmp_path):
    """`fully_shard` (FSDP2, real, on a 1-rank gloo group) gives the model a class created in a torch module; the
    MoE load-balancing loss is still found (it used to be looked up in `type(model).__module__`)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from vlsft.loss import attach_supervised_head
    from vlsft.testing.tiny_families import build_tiny

    model, _ = build_tiny("qwen3_vl_moe")
    model.config.get_text_config().output_router_logits = True
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        for layer in model.model.language_model.layers:
            fully_shard(layer)
        fully_shard(model)
        assert type(model).__module__.startswith("torch.distributed")
        attach_supervised_head(model, chunk_size=4)
        ids = torch.randint(0, 50, (1, 12))
        labels = ids.clone()
        labels[:, :4] = -100
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids), supervised_labels=labels)
        assert output.aux_loss is not None and output.aux_loss > 0
        (output.nll_sum + output.aux_loss).backward()
    finally:
        dist.destroy_process_group()


def test_weighted_rows_two_processes_equal_the_hand_computed_step(tmp_path):
    """Per-turn weights: the divisor is the summed weight of every rank's micro-batches. 2 processes x 2 rows (each as
    2 accumulated micro-batches of 1) give the step computed by hand in this process: start - grad(sum(w * ce) /
    sum(w)) from full logits over the 4 weighted rows (the in-process 1x4 and 4x1 runs are in test_weights.py)."""
    from tests.test_weights import rows_only, weighted_reference_loss
    from vlsft.collator import training_collator
    from vlsft.config import VLSFTConfig
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

    model, processor = build_tiny_qwen3_vl(seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = training_collator(processor, VLSFTConfig(output_dir=str(tmp_path), report_to="none"))(rows_only())
    weighted_reference_loss(model, batch).backward()
    expected = {n: start[n] - (p.grad if p.grad is not None else 0) for n, p in model.named_parameters()}
    out = tmp_path / "dp_weighted.pt"
    launch([str(SCRIPT), *one_step_args(out, 1, accumulation=2, rows="weighted")])
    distributed = torch.load(out)
    assert distributed["world_size"] == 2 and "DistributedDataParallel" in distributed["wrapper"]
    update = max((expected[n] - start[n]).abs().max() for n in start)
    assert update > 1e-3
    difference = max((expected[n] - distributed["steps"][1][n]).abs().max() for n in start)
    assert difference <= 1e-4 * update, float(difference / update)

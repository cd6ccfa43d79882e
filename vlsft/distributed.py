"""Keeping data-parallel ranks in step, whatever their data.

Under DeepSpeed ZeRO-3 every module call gathers that module's parameters with a collective, forward and backward;
under DDP every parameter must get a gradient on every rank (or DDP waits for it). So ranks must call the same
modules, the same number of times, in the same order, even when one rank's micro-batch has no image (or no video),
or supervises fewer tokens than another's. Two things differ from rank to rank in vlsft's forward:

- the vision tower runs once per modality present (Qwen-VL runs `visual` for the images, then again for the
  videos). A rank missing a modality that another rank has runs the tower (and merger) on a dummy input instead,
  through the family's own image path (`vlsft.dummy_vision`; every rank runs it once when no rank has pixels, see
  `agree_on_step_shape`), and ties its output into the language model's `inputs_embeds` with a factor 0: the loss
  and every gradient are unchanged (exact zeros added), and the tower sits where a real call would, between
  `embed_tokens` and the language model, so its gathers come in the same order forward and backward
  (`zero_factor_vision_passes`);
- the LM head runs once per chunk of `loss_chunk_size` supervised tokens: every rank runs the largest chunk count
  of any rank, padding with empty chunks.

One all-reduce of a few integers per forward (`agree_on_step_shape`) tells every rank what the others have. It runs
only when a process group of more than one rank exists.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from vlsft.dummy_vision import dummy_vision_pass
from vlsft.tokens import IGNORE_INDEX

# The model inputs that carry each modality's pixels, in the order the model runs its vision tower on them.
MODALITY_INPUTS = {"image": "pixel_values", "video": "pixel_values_videos"}


def is_distributed() -> bool:
    """More than one rank in the default process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


@dataclass(frozen=True)
class StepShape:
    """What every rank agreed on for one forward."""

    num_chunks: int  # LM-head chunks every rank runs (the largest any rank needs)
    missing_modalities: tuple[str, ...]  # modalities another rank has and this one lacks: run as dummy passes
    mixed_modalities: tuple[str, ...]  # modalities some ranks have and others lack


def local_chunk_count(labels: torch.Tensor, chunk_size: int) -> int:
    """LM-head chunks this micro-batch needs: one per `chunk_size` supervised tokens, at least one."""
    supervised = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return max(1, math.ceil(supervised / chunk_size))


def agree_on_step_shape(model_inputs: dict, labels: torch.Tensor, chunk_size: int) -> StepShape:
    """One all-reduce (max) of [has image, has video, lacks image, lacks video, chunk count] over every rank."""
    present = [_has(model_inputs, name) for name in MODALITY_INPUTS.values()]
    local = present + [not p for p in present] + [local_chunk_count(labels, chunk_size)]
    agreed = torch.tensor([int(v) for v in local], dtype=torch.long, device=labels.device)
    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
    agreed = agreed.tolist()
    count = len(MODALITY_INPUTS)
    any_has, any_lacks = agreed[:count], agreed[count : 2 * count]
    names = list(MODALITY_INPUTS)
    missing = tuple(name for name, has, mine in zip(names, any_has, present) if has and not mine)
    if not any(any_has):
        # No rank has pixels: the tower still runs once. Under ZeRO-3 with gradient accumulation, parameters that
        # get no gradient in a step's first micro-batch but one in a later micro-batch receive the previous step's
        # gradient as well (found here: the vision weights of step 2 moved 25% too far when its first micro-batch
        # was text-only on every rank). Using the tower in every forward keeps every parameter in every backward.
        missing = (names[0],)
    mixed = tuple(name for name, has, lacks in zip(names, any_has, any_lacks) if has and lacks)
    return StepShape(num_chunks=agreed[-1], missing_modalities=missing, mixed_modalities=mixed)


def _has(model_inputs: dict, name: str) -> bool:
    value = model_inputs.get(name)
    return value is not None and value.numel() > 0


def supports_dummy_vision_pass(model: nn.Module) -> bool:
    """vlsft can run this model's vision tower on a dummy input (`vlsft.dummy_vision`)."""
    return dummy_vision_pass(model) is not None


@contextlib.contextmanager
def zero_factor_vision_passes(model: nn.Module, modalities: tuple[str, ...], device: torch.device):
    """For the duration of one model call, run the vision tower once per missing modality just before the language
    model, and add `0 *` its output to the language model's `inputs_embeds`.

    A forward pre-hook on this instance's language model (removed after the call; no class is patched), put in front
    of the hooks DeepSpeed installs there, so the order of module calls is exactly a rank-with-images' order:
    `embed_tokens` (and Gemma 4's per-layer embeddings), the vision tower and merger (per modality), the language
    model (`tests/test_distributed_families.py` checks this order for every family). In the backward, the zero
    gradient flows back through the tower as the real features' gradient would.
    """
    if not modalities:
        yield
        return
    language_model = model.base_model.get_decoder()
    run_dummy_pass = dummy_vision_pass(model)

    def add_dummy_passes(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        for _ in modalities:
            embeds = embeds + (run_dummy_pass(model, device) * 0).to(embeds.dtype)
        kwargs["inputs_embeds"] = embeds
        return args, kwargs

    handle = language_model.register_forward_pre_hook(add_dummy_passes, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def check_vision_in_step(model: nn.Module, shape: StepShape) -> None:
    """Raised on every rank (so none hangs) when some ranks have a modality that others lack and this model family
    has no dummy vision pass, under ZeRO-3 (where the ranks' gathers would no longer match)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if shape.mixed_modalities and is_deepspeed_zero3_enabled() and not supports_dummy_vision_pass(model):
        raise RuntimeError(
            f"Under ZeRO-3, some ranks' micro-batches have {'/'.join(shape.mixed_modalities)} inputs and others not, "
            f"and vlsft has no dummy vision pass for {type(model).__name__} (it has one for every family it knows: "
            "Qwen-VL, Qwen3.5, Gemma 3/4, Idefics3, SmolVLM, LLaVA-NeXT; vlsft/dummy_vision.py): the ranks' parameter "
            "gathers would no longer match. Use ZeRO-2 or DDP, or give every micro-batch images."
        )


@contextlib.contextmanager
def whole_model_build():
    """Build a model whole on this rank, even while a ZeRO-3 config is live (which would make transformers build it
    under `deepspeed.zero.Init`, partitioned over ranks with collectives).

    Needed for models built from a config by code that is not transformers' loader (the tiny models, whose
    submodules transformers builds partitioned while the outer model is whole, and whose init then fails), and for a
    model built on one rank only (merging a LoRA adapter on the main process: `zero.Init` would wait for the other
    ranks). DeepSpeed partitions a whole model when the engine starts, so training is unchanged.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    # transformers keeps the live ZeRO config as a weak reference; hold it and put it back afterwards.
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    live_config = reference() if reference is not None else None
    if live_config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(live_config)


def check_offload_keeps_optimizer(deepspeed_config: dict, optim: str) -> None:
    """Refuse a ZeRO optimizer offload that would replace the configured optimizer without a word.

    With `offload_optimizer` on and `zero_force_ds_cpu_optimizer` unset, accelerate swaps the Trainer's optimizer for
    DeepSpeed's CPU Adam, keeping only its learning rate and weight decay (SGD, betas, eps are dropped)."""
    offload = deepspeed_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    forced = deepspeed_config.get("zero_force_ds_cpu_optimizer", True)
    if offload.get("device", "none") not in ("none", None) and forced and "optimizer" not in deepspeed_config:
        raise ValueError(
            f"This DeepSpeed config offloads the optimizer without `\"zero_force_ds_cpu_optimizer\": false`, so "
            f"accelerate would replace `optim={optim}` by DeepSpeed's CPU Adam (keeping only lr and weight decay). "
            "Add `\"zero_force_ds_cpu_optimizer\": false` to the JSON to keep your optimizer (configs/"
            "ds_zero3_offload.json does), or name the optimizer you want in the JSON's `optimizer` section."
        )


def start_deepspeed_comm(args) -> None:
    """Start DeepSpeed's communication layer on the process group accelerate started, before a model is loaded
    under `zero.Init`.

    accelerate starts it itself only for DeepSpeed launches on GPUs (`--config_file configs/zero3.yaml`); with a
    DeepSpeed JSON in the training config on the CPU (gloo) it does not, and `zero.Init` then sizes the world as 1
    and fails its batch-size check ("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step *
    world_size")."""
    if not getattr(args, "deepspeed", None) or not is_distributed():
        return
    import deepspeed

    if not deepspeed.comm.is_initialized():
        deepspeed.comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)


def leave_distributed_run(accelerator, exit_code: int = 0) -> None:
    """End a finished run on every rank: leave together, shut the process group down, then exit at once when more
    than one process ran.

    The immediate exit (`os._exit`, after flushing output and logs) skips the interpreter's teardown. On the CPU, a
    library thread of the gloo / DeepSpeed communication stack can still be alive there, and its C++ destructor then
    aborts the process ("terminate called without an active exception", exit 134) after a run whose results are all
    saved: seen in 2 of ~55 two-process launches here, with the process group already destroyed. Everything this
    process writes is written and closed before this is called. A single process returns normally."""
    accelerator.wait_for_everyone()
    multi_process = accelerator.num_processes > 1
    accelerator.end_training()
    if multi_process:
        import logging
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(exit_code)

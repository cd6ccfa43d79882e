"""Ulysses sequence parallelism for Qwen3-VL on DeepSpeed's engine (`sequence_parallel_size: N`).

The N ranks of one sequence-parallel (SP) group train the same micro-batch; each runs the language model on 1/N of
its sequence. What this module adds, all on the model instance the trainer holds (no class or global attention
function of transformers is replaced):

- the vision tower runs unsplit on every rank of the group (it is short beside the text); the split happens after
  the image and video features are merged into `inputs_embeds`, in a forward pre-hook on the language model, where
  the mRoPE positions of the whole sequence are already computed: they, the DeepStack visual features and the visual
  position mask are sliced per shard. A length not divisible by N is padded at the end (after every real token, so
  causal attention never lets a real token see it, and no label points there);
- the text layers' attention goes through DeepSpeed's `UlyssesSPAttentionHF` (all-to-all: heads split, sequence
  gathered), reached through a new attention name that only the language model's config carries: the vision tower
  keeps its own attention. The gathered attention is causal over the whole (right-padded) sequence;
- the labels are shifted on the whole sequence BEFORE it is split, so the target of a shard's last token (the first
  token of the next shard) is kept, and each supervised token counts once across the group;
- the data loader is sharded by data-parallel rank (rank // N), so the ranks of a group get the same rows.

Gradients: DeepSpeed averages them over every rank as in plain data parallelism, and the trainer multiplies each
rank's loss by the world size and divides by the supervised weight of the step counted once per group (the
all-to-all's backward carries each shard's gradient to the ranks whose activations it came from), so the update is
that of one process on the same rows.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vlsft.tokens import IGNORE_INDEX

ULYSSES_ATTENTION = "vlsft_ulysses"
SUPPORTED_MODEL_TYPES = ("qwen3_vl",)
SPLIT_KWARG = "vlsft_sequence_split"  # set on the language model's call whose inputs are split


def check_sequence_parallel_model(model, args) -> None:
    """Refuse, with the reason, the models and settings that sequence parallelism does not cover yet."""
    model_type = model.config.model_type
    if model_type in ("qwen3_5", "qwen3_5_moe"):
        raise ValueError(
            "`sequence_parallel_size > 1` is not supported for Qwen3.5: its GatedDeltaNet layers scan the whole "
            "sequence per head group and would need their own gather by heads; train Qwen3.5 with "
            "`sequence_parallel_size: 1`."
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"`sequence_parallel_size > 1` is supported for {', '.join(SUPPORTED_MODEL_TYPES)} only, not "
            f"{model_type!r}; set `sequence_parallel_size: 1`."
        )
    text_config = model.config.get_text_config()
    size = args.sequence_parallel_size
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    if heads % size or (kv_heads % size and size % kv_heads):
        raise ValueError(
            f"`sequence_parallel_size={size}` must divide the {heads} attention heads, and the {kv_heads} key/value "
            "heads must divide it or be divisible by it (Ulysses splits the heads over the group)."
        )
    if text_config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"`sequence_parallel_size > 1` runs the gathered attention with 'sdpa' or 'eager', not "
            f"{text_config._attn_implementation!r}; load the model with `attn_implementation='sdpa'`."
        )


@dataclass
class SequenceParallel:
    """One rank's place in its SP group, and the split of one forward."""

    group: object
    size: int
    rank: int  # in the SP group
    data_parallel_rank: int
    data_parallel_size: int
    core_attention: str  # the attention the gathered sequence runs ("sdpa" or "eager")
    _ulysses: dict = field(default_factory=dict)  # one DeepSpeed attention per batch size (its shapes are fixed)

    def bounds(self, length: int) -> tuple[int, int, int]:
        """(padded length, start, end) of this rank's shard of a sequence of `length` tokens."""
        local = math.ceil(length / self.size)
        return local * self.size, self.rank * local, (self.rank + 1) * local

    def local_targets(self, labels: torch.Tensor, weights: torch.Tensor | None):
        """This shard's labels and weights, shaped as `supervised_nll` reads them (one leading position, which it
        shifts away): position t of the shard is supervised with the label of the whole sequence's t+1, shifted
        before the split so that no target is lost at a shard boundary."""
        batch, length = labels.shape
        padded, start, end = self.bounds(length)
        targets = labels.new_full((batch, padded), IGNORE_INDEX)
        targets[:, : length - 1] = labels[:, 1:]
        local_labels = F.pad(targets[:, start:end], (1, 0), value=IGNORE_INDEX)
        if weights is None:
            return local_labels, None
        shifted = weights.new_zeros((batch, padded))
        shifted[:, : length - 1] = weights[:, 1:]
        return local_labels, F.pad(shifted[:, start:end], (1, 0))

    @staticmethod
    def hidden_for_local_targets(hidden: torch.Tensor) -> torch.Tensor:
        """The shard's hidden states with one position appended, which `supervised_nll` drops (see
        `local_targets`)."""
        return F.pad(hidden, (0, 0, 0, 1))

    def ulysses_for(self, module, batch_size: int):
        if batch_size not in self._ulysses:
            from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            config = module.config
            core = ALL_ATTENTION_FUNCTIONS[self.core_attention] if self.core_attention != "eager" else _eager_attention(module)
            self._ulysses[batch_size] = UlyssesSPAttentionHF(
                attn=core,
                batch_size=batch_size,
                attn_head_count=config.num_attention_heads,
                attn_head_size=module.head_dim,
                kv_head_count=config.num_key_value_heads,
                num_hidden_layers=config.num_hidden_layers,
                process_group=self.group,
                seq_length_is_variable=True,
            )
        return self._ulysses[batch_size]

    @contextlib.contextmanager
    def split_language_model(self, model):
        """For one model call: slice the language model's inputs to this rank's shard and route its attention
        through Ulysses."""
        handle = model.base_model.language_model.register_forward_pre_hook(self._split_inputs, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _split_inputs(self, module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        padded, start, end = self.bounds(length)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2 and not torch.equal(mask.cumprod(-1), mask.long()):
            raise ValueError(
                "Sequence parallelism runs causal attention over the gathered sequence and needs right padding "
                "(every row's tokens first, padding last); this batch's attention mask has padding before tokens."
            )
        # Positions of the whole sequence (computed by the model from the whole mask and image grids), then sliced.
        positions = kwargs.get("position_ids")
        if positions is None or positions.dim() != 3:
            raise ValueError("Sequence parallelism expects the model's 3D (mRoPE) position ids of the whole sequence.")
        extra = padded - length
        if extra:  # padding positions repeat the last one: they come after every real token
            positions = torch.cat([positions, positions[..., -1:].expand(-1, -1, extra)], -1)
        if positions.shape[0] == 3:
            # A text row first (as the model's 4-row form has): DeepSpeed's Ulysses gathers it across the group and
            # requires it; the gathered attention is causal and does not read it.
            text_row = torch.arange(padded, device=positions.device).expand(1, batch, padded)
            positions = torch.cat([text_row, positions], 0)
        embeds = F.pad(embeds, (0, 0, 0, extra))
        kwargs["inputs_embeds"] = embeds[:, start:end]
        kwargs["position_ids"] = positions[..., start:end]
        kwargs["attention_mask"] = None
        # Reaches each text attention call through the layers' kwargs, also when gradient checkpointing recomputes a
        # layer in the backward pass (after this call has returned).
        kwargs[SPLIT_KWARG] = True
        visual = kwargs.get("visual_pos_masks")
        if visual is not None:
            visual = F.pad(visual, (0, extra), value=False)
            # Index of each visual token in the model's (row-major) order of the DeepStack features.
            order = (visual.flatten().cumsum(0) - 1).view(visual.shape)
            local_visual = visual[:, start:end]
            picked = order[:, start:end][local_visual]
            kwargs["visual_pos_masks"] = local_visual
            if kwargs.get("deepstack_visual_embeds") is not None:
                kwargs["deepstack_visual_embeds"] = [features[picked] for features in kwargs["deepstack_visual_embeds"]]
        return args, kwargs


def _eager_attention(module):
    import sys

    return sys.modules[type(module).__module__].eager_attention_forward


def _ulysses_attention(module, query, key, value, attention_mask, **kwargs):
    """The text layers' attention under sequence parallelism: DeepSpeed's Ulysses around the core attention while a
    split forward runs; the core attention alone otherwise (generation, a forward without labels)."""
    parallel: SequenceParallel = module.__dict__["_vlsft_sequence_parallel"]
    if not kwargs.pop(SPLIT_KWARG, False):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        core = ALL_ATTENTION_FUNCTIONS[parallel.core_attention] if parallel.core_attention != "eager" else _eager_attention(module)
        return core(module, query, key, value, attention_mask, **kwargs)
    # The gathered sequence is right-padded and causal: no mask (the local one was built for the shard's length).
    return parallel.ulysses_for(module, query.shape[0])(module, query, key, value, None, **kwargs)


def enable_sequence_parallel(model, size: int) -> SequenceParallel:
    """Create the SP groups (DeepSpeed's `parallel_state_sp`), and route this model's text attention through
    Ulysses. `model` is the unwrapped model (no PEFT wrapper)."""
    import deepspeed
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from transformers import AttentionInterface

    if not deepspeed.comm.is_initialized():
        deepspeed.comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)
    world = torch.distributed.get_world_size()
    if parallel_state_sp._SEQUENCE_PARALLEL_GROUP is None:
        parallel_state_sp.initialize_sequence_parallel(size)
    group = parallel_state_sp.get_sequence_parallel_group()
    if parallel_state_sp.get_sequence_parallel_world_size() != size:
        raise ValueError(f"The sequence-parallel groups of this process already have another size than {size}.")
    rank = torch.distributed.get_rank()
    text_config = model.config.get_text_config()
    parallel = SequenceParallel(
        group=group, size=size, rank=torch.distributed.get_rank(group), data_parallel_rank=rank // size,
        data_parallel_size=world // size, core_attention=text_config._attn_implementation,
    )
    # A new name in transformers' registry of attention functions (no existing one is replaced), set on the text
    # config only: the vision tower's config keeps its own attention.
    AttentionInterface.register(ULYSSES_ATTENTION, _ulysses_attention)
    for module in model.base_model.language_model.modules():
        if getattr(module, "config", None) is text_config and hasattr(module, "head_dim") and hasattr(module, "q_proj"):
            module.__dict__["_vlsft_sequence_parallel"] = parallel  # a plain attribute: not a submodule, no state
    text_config._attn_implementation = ULYSSES_ATTENTION
    model._vlsft_sequence_parallel = parallel
    return parallel


def shard_data_by_data_parallel_rank(accelerator, parallel: SequenceParallel) -> None:
    """Make this accelerator prepare data loaders over the data-parallel ranks (rank // N of N-rank SP groups), so
    that the ranks of one SP group read the same rows. Set on this accelerator instance only."""
    from accelerate.data_loader import prepare_data_loader

    def prepare_for_data_parallel_ranks(data_loader, device_placement=None, slice_fn_for_dispatch=None):
        if isinstance(data_loader.dataset, torch.utils.data.IterableDataset):
            raise ValueError(
                "Sequence parallelism shards the rows by data-parallel rank, which vlsft does for map-style datasets "
                "only; load the dataset as a `datasets.Dataset` (not streaming)."
            )
        prepared = prepare_data_loader(
            data_loader,
            accelerator.device,
            num_processes=parallel.data_parallel_size,
            process_index=parallel.data_parallel_rank,
            split_batches=accelerator.split_batches,
            put_on_device=accelerator.device_placement if device_placement is None else device_placement,
            rng_types=accelerator.rng_types.copy(),
            dispatch_batches=accelerator.dispatch_batches,
            even_batches=accelerator.even_batches,
            slice_fn_for_dispatch=slice_fn_for_dispatch,
            use_seedable_sampler=accelerator.use_seedable_sampler,
            data_seed=accelerator.dataloader_config.data_seed,
            non_blocking=accelerator.non_blocking,
            use_stateful_dataloader=accelerator.use_stateful_dataloader,
        )
        accelerator._dataloaders.append(prepared)
        return prepared

    accelerator.prepare_data_loader = prepare_for_data_parallel_ranks


def use_sequence_parallel(trainer, model) -> None:
    """Split each sequence over `trainer.args.sequence_parallel_size` ranks; `model` is the unwrapped model."""
    if not trainer.is_deepspeed_enabled:
        raise ValueError(
            "`sequence_parallel_size > 1` runs on DeepSpeed's engine: use a DeepSpeed layout (`zero2`, `zero3`) or "
            "pass `deepspeed=` a ZeRO config."
        )
    if trainer.eval_dataset is not None:
        raise ValueError(
            "Evaluation under `sequence_parallel_size > 1` is not supported yet; drop the eval set (or evaluate in a "
            "separate run with `sequence_parallel_size: 1`)."
        )
    size = trainer.args.sequence_parallel_size
    world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if world_size % size:
        raise ValueError(
            f"`sequence_parallel_size={size}` must divide the number of processes ({world_size}); launch a multiple "
            f"of {size} processes (`accelerate launch --num_processes ...`)."
        )
    check_sequence_parallel_model(model, trainer.args)
    parallel = enable_sequence_parallel(model, trainer.args.sequence_parallel_size)
    shard_data_by_data_parallel_rank(trainer.accelerator, parallel)

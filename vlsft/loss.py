"""The supervised-token loss: LM head only at supervised positions, in checkpointed float32 chunks.

`attach_supervised_head(model)` gives one model instance (never the class) a forward that, when called with
`supervised_labels=...`, runs the backbone, gathers the hidden states whose next token is supervised, and projects
only those through the LM head. It returns sums, not means, so the trainer can divide by the number of supervised
tokens of the whole optimizer step. With `supervised_weights=...` (the collator's `label_weights`), each token's NLL
is multiplied by its weight and the trainer divides by the summed weight instead. With `loss_type="dft"` (Dynamic
Fine-Tuning), each token's NLL is also multiplied by the token's probability, held constant in the backward pass. The forward is installed on the instance, as TRL installs its own fused head,
so that DDP, DeepSpeed and PEFT wrappers see a single ordinary forward call.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from vlsft.distributed import (
    agree_on_step_shape,
    check_vision_in_step,
    is_distributed,
    supports_dummy_vision_pass,
    zero_factor_vision_passes,
)
from vlsft.model_parts import final_logit_softcap, output_vocab_size
from vlsft.tokens import IGNORE_INDEX


@dataclass
class SupervisedLossOutput(ModelOutput):
    """Sums over the supervised tokens of one micro-batch."""

    nll_sum: torch.Tensor | None = None  # float32, connected to the graph (a differentiable 0 when no token)
    num_tokens: torch.Tensor | None = None
    num_correct: torch.Tensor | None = None  # argmax == target, for `mean_token_accuracy`
    weight_sum: torch.Tensor | None = None  # summed token weight (float32); the token count when unweighted
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss of the micro-batch, when the router logits are on
    # [num_correct, num_tokens, summed (weighted) NLL, summed weight] of each row (each packed row, in a packed
    # batch), float64, detached: per-sample sums for evaluation, whose last batch accelerate pads with duplicate rows
    # that only per-sample sums can drop exactly.
    row_sums: torch.Tensor | None = None


def _chunk_nll(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None = None,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position NLL and correctness of one chunk, over the head's first `vocab_size` rows if given."""
    logits = head(hidden).float()[..., :vocab_size]
    if softcap is not None:  # as the model's own forward caps its logits (Gemma 4)
        logits = torch.tanh(logits / softcap) * softcap
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    correct = logits.detach().argmax(-1) == targets
    return nll, correct


def supervised_nll(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    chunk_size: int = 256,
    num_chunks: int = 1,
    label_weights: torch.Tensor | None = None,
    softcap: float | None = None,
    loss_type: str = "nll",
    row_ids: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> SupervisedLossOutput:
    """Summed next-token NLL over the positions whose (shifted) label is not -100; with `label_weights` (aligned with
    `labels`), each token's NLL times its weight, and `weight_sum` their summed weight.

    `head` is called as a module, so LoRA layers, PEFT `modules_to_save` copies and DeepSpeed ZeRO-3 parameter
    gathering all apply. Each chunk is checkpointed: its `[chunk, vocab]` float32 logits exist only while that chunk
    is computed, in the forward and again in the backward. At least `num_chunks` chunks run (empty ones after the
    tokens), so that data-parallel ranks call the head equally often (`vlsft.distributed`). `loss_type="dft"`: each
    token's NLL times its probability `exp(-nll)`, detached (TRL's DFT, on the supervised tokens only).

    `row_sums` has one entry per row: per batch row, or, for a packed batch (several rows end to end in one sequence),
    per packed row, given by `row_ids` (aligned with `labels`: the row each token belongs to, 0, 1, ...).
    `vocab_size`: the logits keep only the head's first rows, as the model's own forward keeps them
    (`output_vocab_size`).
    """
    targets = labels[:, 1:].to(hidden_states.device)
    mask = targets != IGNORE_INDEX
    hidden = hidden_states[:, :-1][mask]
    targets = targets[mask]
    weights = None if label_weights is None else label_weights[:, 1:].to(hidden_states.device, torch.float32)[mask]
    if row_ids is None:
        rows, num_rows = mask.nonzero()[:, 0], labels.shape[0]
    else:  # a target belongs to the row of the token it predicts (never across rows: a row's first label is -100)
        row_ids = row_ids.to(hidden_states.device)
        rows, num_rows = row_ids[:, 1:][mask], int(row_ids.max()) + 1
    row_sums = torch.zeros(num_rows, 4, dtype=torch.float64, device=hidden_states.device)
    nll_sum = hidden_states.new_zeros((), dtype=torch.float32)
    num_correct = torch.zeros((), dtype=torch.long, device=hidden_states.device)
    # At least one (possibly empty) chunk, so that a micro-batch without supervised tokens still gives a loss that is
    # connected to the head: an exact zero with zero gradients, and a backward every DDP rank can take part in.
    for start in range(0, max(len(targets), chunk_size * num_chunks, 1), chunk_size):
        chunk = slice(start, start + chunk_size)
        if torch.is_grad_enabled():
            nll, correct = checkpoint(
                _chunk_nll, head, hidden[chunk], targets[chunk], softcap, vocab_size, use_reentrant=False
            )
        else:
            nll, correct = _chunk_nll(head, hidden[chunk], targets[chunk], softcap, vocab_size)
        if loss_type == "dft":
            nll = nll * torch.exp(-nll.detach())
        chunk_weights = torch.ones_like(nll) if weights is None else weights[chunk]
        if weights is not None:
            nll = nll * chunk_weights
        nll_sum = nll_sum + nll.sum()
        num_correct = num_correct + correct.sum()
        stats = torch.stack([correct.double(), torch.ones_like(nll, dtype=torch.float64), nll.detach().double(),
                             chunk_weights.detach().double()], -1)
        row_sums.index_add_(0, rows[chunk], stats)
    num_tokens = mask.sum()
    weight_sum = num_tokens.float() if weights is None else weights.sum()
    return SupervisedLossOutput(
        nll_sum=nll_sum, num_tokens=num_tokens, num_correct=num_correct, weight_sum=weight_sum, row_sums=row_sums
    )


def attach_supervised_head(model: nn.Module, chunk_size: int = 256, loss_type: str = "nll") -> None:
    """Let `model(..., supervised_labels=labels)` return a `SupervisedLossOutput`; other calls run the class's
    forward. Installed again by every trainer on the model, on top of whatever a trainer installed in between (TRL's
    fused head, whose closure holds the instance it was installed on and would run that instance in a deep copy)."""
    if loss_type not in ("nll", "dft"):
        raise ValueError(f"`loss_type` must be 'nll' or 'dft', got {loss_type!r}.")
    model._vlsft_loss_chunk_size = chunk_size
    model._vlsft_loss_type = loss_type
    model._vlsft_logit_softcap = final_logit_softcap(model)
    model._vlsft_vocab_size = output_vocab_size(model)

    @functools.wraps(type(model).forward)  # keep the signature: `generate` validates its kwargs against it
    def forward(self, *args, supervised_labels=None, supervised_weights=None, supervised_rows=None, **kwargs):
        if supervised_labels is None:
            # The class's forward, called on `self`: nothing bound to this instance is captured, so a deep copy of
            # the model (whose bound `forward` deepcopy rebinds) runs the copy, not the original.
            return type(self).forward(self, *args, **kwargs)
        kwargs.pop("labels", None)
        kwargs["use_cache"] = False
        text_config = self.config.get_text_config()
        if getattr(text_config, "output_router_logits", False):  # MoE with its load-balancing loss on
            kwargs.setdefault("output_router_logits", True)
        num_chunks, missing_modalities = 1, ()
        # Sequence parallelism (vlsft.sequence_parallel): this rank's shard of the labels, shifted before the split.
        sequence_parallel = getattr(self, "_vlsft_sequence_parallel", None)
        if sequence_parallel is not None:
            if not self.training:  # every rank of the group raises alike: none is left waiting in a collective
                raise NotImplementedError(
                    "Evaluation under `sequence_parallel_size > 1` is not supported yet; evaluate in a separate run "
                    "with `sequence_parallel_size: 1`."
                )
            supervised_labels, supervised_weights = sequence_parallel.local_targets(supervised_labels, supervised_weights)
        if is_distributed():  # make this rank's module calls those of every other rank (vlsft.distributed)
            shape = agree_on_step_shape(kwargs, supervised_labels, self._vlsft_loss_chunk_size)
            check_vision_in_step(self, shape)
            num_chunks = shape.num_chunks
            if supports_dummy_vision_pass(self):
                missing_modalities = shape.missing_modalities
        # The backbone and the head are looked up on every call: PEFT, DeepSpeed and FSDP replace them after this.
        split = sequence_parallel.split_language_model(self) if sequence_parallel is not None else contextlib.nullcontext()
        with zero_factor_vision_passes(self, missing_modalities, supervised_labels.device), split:
            if self.base_model is self:  # no backbone apart from the head (Llama 4: the head is in `language_model`)
                backbone_output = _decoder_output_without_logits(self, args, kwargs, supervised_labels.device)
            else:
                backbone_output = self.base_model(*args, **kwargs)
        hidden_states = backbone_output.last_hidden_state
        if sequence_parallel is not None:
            hidden_states = sequence_parallel.hidden_for_local_targets(hidden_states)
        output = supervised_nll(
            hidden_states,
            supervised_labels,
            output_head(self),
            self._vlsft_loss_chunk_size,
            num_chunks=num_chunks,
            label_weights=supervised_weights,
            softcap=self._vlsft_logit_softcap,
            vocab_size=self._vlsft_vocab_size,
            loss_type=self._vlsft_loss_type,
            row_ids=supervised_rows,
        )
        # The model's own load-balancing loss, as its forward computes it (from the module that defines it). A model
        # whose module defines none adds none in its own forward either (Llama 4), and gets none here. The number of
        # routed experts is the width of the router's logits: configs name it `num_experts` (Qwen3-VL-MoE),
        # `n_routed_experts` (GLM-4.5V) or `num_local_experts`.
        load_balancing_loss = _load_balancing_loss_func(type(self))
        if getattr(backbone_output, "router_logits", None) and load_balancing_loss is not None:
            output.aux_loss = load_balancing_loss(
                backbone_output.router_logits,
                backbone_output.router_logits[0].shape[-1],
                text_config.num_experts_per_tok,
                kwargs.get("attention_mask"),
            )
        return output

    model.forward = types.MethodType(forward, model)


def _decoder_output_without_logits(model: nn.Module, args, kwargs, device) -> Any:
    """The decoder's output (final hidden states, router logits) of a model whose language model holds its own LM
    head, so that no module returns hidden states without logits: its forward is run keeping the logits of no
    position (`logits_to_keep`, an empty index), and the decoder's output is taken by a forward hook."""
    captured = []
    handle = _decoder_apart_from_head(model).register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        type(model).forward(model, *args, **kwargs, logits_to_keep=torch.empty(0, dtype=torch.long, device=device))
    finally:
        handle.remove()
    return captured[-1]


def output_head(model: nn.Module) -> nn.Module:
    """The model's LM head: its `get_output_embeddings()`, or, where that is None because the head sits in a causal
    language model the model holds (Nemotron 3 Nano Omni's `language_model`), the first sub-model's head."""
    for module in model.modules():
        head = module.get_output_embeddings() if isinstance(module, PreTrainedModel) else None
        if head is not None:
            return head
    raise ValueError(f"{type(model).__name__}: no LM head (`get_output_embeddings()` is None in every sub-model)")


def _decoder_apart_from_head(model: nn.Module) -> nn.Module:
    """The outermost model inside `model` that holds its input embeddings but not its LM head (Llama 4's
    `language_model.model`; `get_decoder()` returns the causal LM itself there)."""
    head, embeddings = output_head(model), model.get_input_embeddings()
    for module in model.modules():
        if module is model or not isinstance(module, PreTrainedModel):
            continue
        inside = list(module.modules())
        if any(m is embeddings for m in inside) and not any(m is head for m in inside):
            return module
    raise ValueError(f"{type(model).__name__}: no decoder apart from its LM head, so its hidden states cannot be read")


def _load_balancing_loss_func(model_class: type):
    """The `load_balancing_loss_func` of the transformers module that defines the model's class, or None. Looked up
    along the class's MRO: FSDP2's `fully_shard` swaps the instance's class for a subclass created in a torch module."""
    for cls in model_class.__mro__:
        function = getattr(sys.modules.get(cls.__module__), "load_balancing_loss_func", None)
        if function is not None:
            return function
    return None


# -- sums of an optimizer step (used by `VLSFTTrainer`) ----------------------------------------------------------


def step_sums_over_ranks(accelerator, outputs: SupervisedLossOutput, mode: str, input_tokens: int = 0) -> torch.Tensor:
    """[num_correct, num_tokens, summed (weighted) NLL, summed weight, input tokens] of this micro-batch over every
    rank, exactly; `input_tokens` is the micro-batch's real (non-padding) tokens on this rank.

    Training: an all-reduce. Evaluation: accelerate pads the last eval batch of each rank with duplicate rows (so
    every rank runs the same forwards, which ZeRO-3 needs); the per-row sums are gathered and accelerate drops
    exactly those duplicates (`gather_for_metrics` trims samples, and here a sample is a row); input tokens are not
    counted there (0)."""
    if mode == "eval" and outputs.row_sums is not None:
        sums = accelerator.gather_for_metrics(outputs.row_sums).sum(0).cpu()
        return torch.cat([sums.double(), sums.new_zeros(1, dtype=torch.float64)])
    device = outputs.nll_sum.device
    stats = torch.stack(
        [
            outputs.num_correct.double(),
            outputs.num_tokens.double(),
            outputs.nll_sum.double(),
            outputs.weight_sum.double(),
            torch.tensor(float(input_tokens), dtype=torch.float64, device=device),
        ]
    ).detach()
    return accelerator.reduce(stats, reduction="sum").cpu()


def real_token_count(inputs) -> int:
    """The real (non-padding) tokens of a collated micro-batch: its attention mask's ones, or every token of a pack
    (packed and padding-free batches have no padding and no mask)."""
    mask = inputs.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())


def summed_label_weight(batch) -> torch.Tensor:
    """Summed weight of a micro-batch's supervised targets (labels shifted by one), in float64."""
    if batch.get("label_weights") is not None:
        return batch["label_weights"][..., 1:].double().sum()
    return (batch["labels"][..., 1:] != IGNORE_INDEX).sum().double()


def positive_or_one(divisor: torch.Tensor) -> torch.Tensor:
    """The divisor, or 1 where it is 0 (a step or batch with nothing supervised gives an exact 0 loss)."""
    return torch.where(divisor > 0, divisor, torch.ones_like(divisor))

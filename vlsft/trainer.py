"""`VLSFTTrainer`: TRL's `SFTTrainer` with exact assistant-only masks and an exact, memory-lean loss for VLMs.

What it changes, each in one overridden method:
- the collator (`VisionChatCollator`): masks exactly the assistant turns, on every conversation shape;
- `compute_loss`: summed NLL over supervised tokens divided by the supervised tokens of the whole optimizer step
  (all gradient-accumulation micro-batches, all data-parallel ranks), with the LM head run only where supervised;
- `_get_num_items_in_batch`: counts those tokens even for models that declare `accepts_loss_kwargs = False`
  (Qwen3-VL does, so `Trainer` would otherwise average every micro-batch on its own).
"""

from __future__ import annotations

import dataclasses

import torch
from accelerate.utils import is_peft_model
from transformers import AutoProcessor, ProcessorMixin, TrainingArguments
from trl import SFTConfig, SFTTrainer
from trl.trainer.utils import get_config_model_id

from vlsft.collator import VisionChatCollator, training_collator
from vlsft.config import VLSFTConfig
from vlsft.distributed import check_offload_keeps_optimizer
from vlsft.loss import attach_supervised_head
from vlsft.validation import validate_datasets


def as_vlsft_config(args: TrainingArguments | None, model) -> VLSFTConfig:
    """`args` as a `VLSFTConfig`: an `SFTConfig` or `TrainingArguments` keeps every field it sets."""
    if isinstance(args, VLSFTConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else get_config_model_id(model.config)
        return VLSFTConfig(output_dir=f"{name.split('/')[-1]}-vlsft")
    # Field values as set, not `to_dict()`, which masks every `*_token` field (hub_token, eos_token, pad_token).
    known = VLSFTConfig.__dataclass_fields__
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in known}
    return VLSFTConfig(**values)


class VLSFTTrainer(SFTTrainer):
    """Drop-in `trl.SFTTrainer` for vision-language models (same constructor).

    Subclass it to change one thing: override `compute_loss` for another loss (call `self.supervised_sums(model,
    inputs)` for the summed NLL and the token count) or `build_collator` for another collator.
    """

    _tag_names = ["trl", "sft", "vlsft"]
    # `compute_loss` already divides by the supervised tokens of the whole optimizer step.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: VLSFTConfig | SFTConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: ProcessorMixin | None = None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
        formatting_func=None,
    ):
        args = as_vlsft_config(args, model)
        if compute_loss_func is not None or compute_metrics is not None or preprocess_logits_for_metrics is not None:
            raise ValueError(
                "VLSFTTrainer never builds the full logits, so `compute_loss_func`, `compute_metrics` and "
                "`preprocess_logits_for_metrics` are not supported. Subclass VLSFTTrainer and override "
                "`compute_loss` for another loss; evaluate generations with `model.generate` for metrics."
            )
        if processing_class is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            processing_class = AutoProcessor.from_pretrained(name, trust_remote_code=args.trust_remote_code)
        if not isinstance(processing_class, ProcessorMixin):
            raise TypeError(
                "VLSFTTrainer trains vision-language models and needs their processor (tokenizer + image "
                f"processor) as `processing_class`, got {type(processing_class).__name__}."
            )
        # Built even with a custom collator: it resolves the training template (an unknown template without
        # generation markers fails here, with the fix) and is what rows are validated with.
        default_collator = self.build_collator(processing_class, args)
        self.training_chat_template = default_collator.chat_template
        if data_collator is None:
            data_collator = default_collator
        if args.validate_rows:
            # Every row is checked now, so a bad one stops the run (or is skipped, with `invalid_rows="skip"`) by its
            # index before the model loads, not in the middle of training. A custom collator is checked against ours.
            checker = data_collator if isinstance(data_collator, VisionChatCollator) else default_collator
            train_dataset, eval_dataset = validate_datasets(train_dataset, eval_dataset, checker, args)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            quantization_config=quantization_config,
            peft_config=peft_config,
            formatting_func=formatting_func,
        )
        if self.is_deepspeed_enabled:
            check_offload_keeps_optimizer(self.accelerator.state.deepspeed_plugin.deepspeed_config, args.optim)
        base_model = self.model.get_base_model() if is_peft_model(self.model) else self.model
        attach_supervised_head(base_model, chunk_size=args.loss_chunk_size)
        # [num_correct, num_supervised, summed NLL] since the last log, per mode; summed over ranks.
        self._token_stats = {"train": torch.zeros(3, dtype=torch.float64), "eval": torch.zeros(3, dtype=torch.float64)}
        self._total_supervised_tokens = 0

    def build_collator(self, processor: ProcessorMixin, args: VLSFTConfig) -> VisionChatCollator:
        """The collator used when none is passed; override to change it."""
        return training_collator(processor, args)

    def create_optimizer(self, model=None):
        """`Trainer.create_optimizer`, with one parameter group per (component, weight decay or not) and the
        component's learning rate when `args.component_learning_rates` is set (`vlsft.model_parts`)."""
        if self.optimizer is None and self.args.component_learning_rates:
            from transformers.trainer_optimizer import is_optimizer_factory

            from vlsft.model_parts import parameter_groups

            opt_model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
                self.args, opt_model
            )
            if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
                raise ValueError(
                    f"`component_learning_rates` needs an optimizer that takes parameter groups; `optim={self.args.optim}` "
                    "builds its own. Use e.g. `optim: adamw_torch`, or drop the per-component learning rates."
                )
            groups = parameter_groups(
                opt_model,
                self.args.component_learning_rates,
                default_lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                decay_parameter_names=self.get_decay_parameter_names(opt_model),
            )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    # -- the loss ----------------------------------------------------------------------------------------------

    def supervised_sums(self, model, inputs):
        """Run the model and return the `SupervisedLossOutput` (summed NLL, token count, correct count)."""
        model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        return model(**model_inputs, supervised_labels=inputs["labels"])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        outputs = self.supervised_sums(model, inputs)
        if num_items_in_batch is None:  # evaluation, or a caller outside the training loop
            loss = outputs.nll_sum / outputs.num_tokens.clamp(min=1)
        else:
            loss = outputs.nll_sum / torch.as_tensor(num_items_in_batch, device=outputs.nll_sum.device).clamp(min=1)
            # DDP and DeepSpeed average gradients over ranks; the divisor already counts every rank's tokens.
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        if self.aux_loss_enabled and outputs.aux_loss is not None:
            # The load-balancing loss is a per-micro-batch mean (DDP averages it over ranks); over an accumulated
            # step it is averaged over the micro-batches, as TRL does.
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss.to(loss.device) / steps

        self._token_stats[mode] += self._sums_over_ranks(outputs, mode)
        return (loss, outputs) if return_outputs else loss

    def _sums_over_ranks(self, outputs, mode: str) -> torch.Tensor:
        """[num_correct, num_tokens, summed NLL] of this micro-batch over every rank, exactly.

        Training: an all-reduce. Evaluation: accelerate pads the last eval batch of each rank with duplicate rows (so
        every rank runs the same forwards, which ZeRO-3 needs); the per-row sums are gathered and accelerate drops
        exactly those duplicates (`gather_for_metrics` trims samples, and here a sample is a row)."""
        if mode == "eval" and outputs.row_sums is not None:
            return self.accelerator.gather_for_metrics(outputs.row_sums).sum(0).cpu()
        stats = torch.stack([outputs.num_correct.detach(), outputs.num_tokens.detach(), outputs.nll_sum.detach()])
        return self.accelerator.reduce(stats.double(), reduction="sum").cpu()

    def _get_num_items_in_batch(self, batch_samples, device):
        """Supervised tokens (labels shifted by one) over every micro-batch of the step and, with
        `average_tokens_across_devices`, over every rank. Counted whatever the model's `accepts_loss_kwargs`."""
        count = sum((batch["labels"][..., 1:] != -100).sum() for batch in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The same loss as training, and no logits: they are never built.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        correct, total, nll_sum = self._token_stats[mode].tolist()
        if total > 0:
            self._metrics[mode]["mean_token_accuracy"] = [correct / total]
        if mode == "eval" and total > 0:
            # `Trainer` averages per-batch losses; the eval loss is the token-weighted mean over the whole eval set,
            # the same quantity the training loss is for a step.
            for key in [k for k in logs if k.startswith("eval") and k.endswith("_loss")]:
                logs[key] = nll_sum / total
        if mode == "train":
            if self._total_supervised_tokens == 0:  # after a resume, the count goes on from the checkpoint's log
                self._total_supervised_tokens = next(
                    (int(e["num_supervised_tokens"]) for e in reversed(self.state.log_history) if "num_supervised_tokens" in e), 0
                )
            self._total_supervised_tokens += int(total)
            self._metrics[mode]["num_supervised_tokens"] = [self._total_supervised_tokens]
        self._token_stats[mode].zero_()
        super().log(logs, start_time)

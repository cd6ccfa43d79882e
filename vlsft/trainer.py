"""`VLSFTTrainer`: TRL's `SFTTrainer` with exact assistant-only masks and an exact, memory-lean loss for VLMs.

What it changes, each in one overridden method:
- the collator (`VisionChatCollator`): masks exactly the assistant turns, on every conversation shape;
- `compute_loss`: summed NLL over supervised tokens divided by the supervised tokens of the whole optimizer step
  (all gradient-accumulation micro-batches, all data-parallel ranks), with the LM head run only where supervised;
  with per-turn weights (the collator's `label_weights`), `sum(w * nll) / sum(w)` over the same step;
  BatchNorm layers (FastVLM's tower) run on their running statistics, so that rows never depend on each other;
- `_get_num_items_in_batch`: counts those tokens even for models that declare `accepts_loss_kwargs = False`
  (Qwen3-VL does, so `Trainer` would otherwise average every micro-batch on its own);
- `get_train_dataloader` / `get_eval_dataloader` (mixin `vlsft.data.training_rows.RowsNamedByIndex`): each row
  carries its dataset index, and a row that fails to collate mid-run is skipped and counted (`invalid_rows="skip"`)
  or named by that index;
- `_save_checkpoint` / `train` (mixin `vlsft.checkpoints.KillSafeCheckpoints`): checkpoints written atomically,
  resume from the newest complete one, a checkpoint and a clean stop on SIGTERM;
- packing (mixin `vlsft.packing.training.PackedTraining`): packs planned, the packed collator, and the pack plan
  recorded in every checkpoint and checked on resume.
"""

from __future__ import annotations

from collections import Counter

import torch
from accelerate.utils import is_peft_model
from transformers import AutoProcessor, ProcessorMixin, TrainingArguments
from trl import SFTConfig, SFTTrainer
from trl.trainer.utils import get_config_model_id

from vlsft.answer_eval import AnswerAccuracyCallback
from vlsft.checked_datasets import CheckedDatasets
from vlsft.checkpoints import KillSafeCheckpoints, PreemptionCallback
from vlsft.collator import VisionChatCollator, training_collator
from vlsft.config import VLSFTConfig, as_vlsft_config
from vlsft.data.training_rows import KEPT_ROWS_KEY, RowsNamedByIndex, sums_at_batch_places
from vlsft.data.validation import validate_datasets
from vlsft.distributed import check_offload_keeps_optimizer
from vlsft.input_dtypes import raise_input_precision
from vlsft.liger import check_liger_supports
from vlsft.model_parts import (
    batch_norm_layers,
    check_model_parts,
    refuse_model_reading_no_images,
    run_batch_norms_as_at_inference,
)
from vlsft.not_chat_models import config_of, refuse_not_chat_model
from vlsft.row_rope import positions_for_each_row
from vlsft.loss import (
    attach_supervised_head,
    positive_or_one,
    real_token_count,
    step_sums_over_ranks,
    summed_label_weight,
)
from vlsft.packing import check_family_packs, packing_enabled, packing_hidden_from_trl
from vlsft.packing.collator import packed_row_ids
from vlsft.packing.training import PackedTraining
from vlsft.trl_compat import templates_shown_to_trl


class VLSFTTrainer(KillSafeCheckpoints, PackedTraining, RowsNamedByIndex, SFTTrainer):
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
        *,
        checked_datasets: CheckedDatasets | None = None,
    ):
        """`SFTTrainer`'s arguments; or, instead of `train_dataset` / `eval_dataset`, `checked_datasets`: rows already
        validated by `vlsft.checked_datasets.check_datasets` for these `args` and processor (before the model
        loaded), which the trainer then does not check again."""
        args = as_vlsft_config(args, model)
        # Per dataset (None: train, else the eval name), the index in the user's dataset of each row kept by
        # validation, so that a row failing mid-run is named by that index. Rows dropped mid-run, per dataset.
        self._original_row_indices: dict[str | None, list[int]] = {}
        self.rows_skipped_in_training: Counter = Counter()
        if compute_loss_func is not None or compute_metrics is not None or preprocess_logits_for_metrics is not None:
            raise ValueError(
                "VLSFTTrainer never builds the full logits, so `compute_loss_func`, `compute_metrics` and "
                "`preprocess_logits_for_metrics` are not supported. Subclass VLSFTTrainer and override "
                "`compute_loss` for another loss; evaluate generations with `model.generate` for metrics."
            )
        if formatting_func is not None:
            raise ValueError(
                "`formatting_func` is not supported: TRL uses it to turn each row into plain text, which loses the turns "
                "that assistant-only loss supervises (and the images). Map your rows to conversation rows first, e.g. "
                "`dataset.map(lambda row: {'messages': [...], 'images': [...]})`."
            )
        # A model that is not a decoder-only chat model (an encoder-decoder, a captioner...) is refused by its config
        # before its processor loads, then by its processor (`vlsft.not_chat_models`).
        config = config_of(model, args.trust_remote_code, (args.model_init_kwargs or {}).get("revision"))
        loaded = None if isinstance(model, str) else model.get_base_model() if is_peft_model(model) else model
        refuse_not_chat_model(config, model=loaded)
        if processing_class is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            processing_class = AutoProcessor.from_pretrained(name, trust_remote_code=args.trust_remote_code)
        if not isinstance(processing_class, ProcessorMixin):
            raise TypeError(
                "VLSFTTrainer trains vision-language models and needs their processor (tokenizer + image "
                f"processor) as `processing_class`, got {type(processing_class).__name__}."
            )
        refuse_not_chat_model(config, processing_class, args.chat_template_path, model=loaded)
        if loaded is not None:  # before any row is checked (a model given by name: once it loads)
            refuse_model_reading_no_images(loaded)
        # Built even with a custom collator: it resolves the training template (an unknown template without
        # generation markers fails here, with the fix) and is what rows are validated with.
        default_collator = self.build_collator(processing_class, args)
        packing = packing_enabled(args)
        if packing and data_collator is not None:
            raise ValueError("packing / padding_free collate with vlsft's own collator; do not pass `data_collator`.")
        if packing:  # the family is known from the processor (a generic one from the model): refused before any row
            check_family_packs(default_collator.family, getattr(model, "config", None))  # is checked
        self.training_chat_template = default_collator.chat_template
        if data_collator is None:
            data_collator = default_collator
        # How rows render in training: `AnswerAccuracyCallback` prompts the model the same way.
        self.rendering_collator = data_collator if isinstance(data_collator, VisionChatCollator) else default_collator
        if checked_datasets is not None:
            if train_dataset is not None or eval_dataset is not None or data_collator is not default_collator:
                raise ValueError(
                    "`checked_datasets` holds rows validated with vlsft's own collator: pass it without "
                    "`train_dataset`, `eval_dataset` or `data_collator` (or pass those, and the trainer checks them)."
                )
            train_dataset, eval_dataset = checked_datasets.train_dataset, checked_datasets.eval_dataset
            self._original_row_indices.update(checked_datasets.kept_indices)
        elif args.validate_rows:
            # Every row is checked now, so a bad one stops the run (or is skipped, with `invalid_rows="skip"`) by its
            # index before a model given by name loads, not in the middle of training. A custom collator is checked
            # against ours.
            checker = data_collator if isinstance(data_collator, VisionChatCollator) else default_collator
            train_dataset, eval_dataset = validate_datasets(
                train_dataset, eval_dataset, checker, args, kept_indices=self._original_row_indices
            )

        with templates_shown_to_trl(processing_class, self.training_chat_template, args), packing_hidden_from_trl(args):
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
        if args.use_liger_kernel:  # `Trainer.train` applies Liger's layer kernels (`vlsft.liger`)
            check_liger_supports(base_model)
        check_model_parts(base_model)  # a model without a family record: its parts found by transformers' names
        attach_supervised_head(base_model, chunk_size=args.loss_chunk_size, loss_type=args.loss_type)
        self._batch_norms = batch_norm_layers(base_model)
        # [num_correct, num_supervised, summed (weighted) NLL, summed weight, input tokens] since the last log, per
        # mode; summed over ranks.
        self._token_stats = {"train": torch.zeros(5, dtype=torch.float64), "eval": torch.zeros(5, dtype=torch.float64)}
        self._total_supervised_tokens = 0
        self._total_supervised_weight = 0.0
        self.preemption = PreemptionCallback(self.accelerator)
        self.add_callback(self.preemption)
        self._hand_self_to_callbacks()
        if packing:
            self._use_packing(base_model)
        if args.sequence_parallel_size > 1:
            from vlsft.sequence_parallel import use_sequence_parallel

            use_sequence_parallel(self, base_model)

    def add_callback(self, callback) -> None:
        super().add_callback(callback)
        self._hand_self_to_callbacks()

    def _hand_self_to_callbacks(self) -> None:
        """Callbacks that log through the trainer (`AnswerAccuracyCallback`) get it: `transformers` gives none."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, AnswerAccuracyCallback):
                callback.trainer = self

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
        """Run the model and return the `SupervisedLossOutput` (summed NLL, token count, correct count, summed
        weight). With the collator's `label_weights`, the NLL is weighted per token. A packed batch gets its sums per
        packed row, as a padded batch gets them per batch row (evaluation drops accelerate's duplicate rows by row)."""
        model_inputs = {key: value for key, value in inputs.items() if key not in ("labels", "label_weights", KEPT_ROWS_KEY)}
        model_inputs = raise_input_precision(model_inputs, model)  # Llama 4's bfloat16 pixels into a float32 model
        if inputs.get("label_weights") is not None:
            model_inputs["supervised_weights"] = inputs["label_weights"]
        rows = packed_row_ids(inputs)
        if rows is not None:
            model_inputs["supervised_rows"] = rows
        # HunYuan-VL numbers images across the batch: each row's rope positions are computed for it alone.
        positions = positions_for_each_row(self.accelerator.unwrap_model(model), model_inputs)
        if positions is not None:
            model_inputs["position_ids"] = positions
        outputs = model(**model_inputs, supervised_labels=inputs["labels"])
        # Rows dropped mid-run (`invalid_rows="skip"`) keep a place of zeros: every rank gathers the same row count.
        outputs.row_sums = sums_at_batch_places(outputs.row_sums, inputs.get(KEPT_ROWS_KEY))
        return outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        run_batch_norms_as_at_inference(self._batch_norms)  # rows never normalized by each other's statistics
        outputs = self.supervised_sums(model, inputs)
        if num_items_in_batch is None:  # evaluation, or a caller outside the training loop
            if inputs.get("label_weights") is None:
                loss = outputs.nll_sum / outputs.num_tokens.clamp(min=1)
            else:
                loss = outputs.nll_sum / positive_or_one(outputs.weight_sum)
        else:
            # The summed weight of the step (the token count when unweighted), as float32: an integer count gives the
            # same quotient as before, and a summed weight may be below 1.
            divisor = torch.as_tensor(num_items_in_batch, device=outputs.nll_sum.device).to(outputs.nll_sum.dtype)
            loss = outputs.nll_sum / positive_or_one(divisor)
            # DDP and DeepSpeed average gradients over ranks; the divisor already counts every rank's tokens.
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        if self.aux_loss_enabled and outputs.aux_loss is not None:
            # The load-balancing loss is a per-micro-batch mean (DDP averages it over ranks); over an accumulated
            # step it is averaged over the micro-batches, as TRL does.
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss.to(loss.device) / steps

        # The ranks of a sequence-parallel group hold the same rows, each whole before the model splits it.
        input_tokens = real_token_count(inputs) / self.args.sequence_parallel_size
        self._token_stats[mode] += step_sums_over_ranks(self.accelerator, outputs, mode, input_tokens)
        return (loss, outputs) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples, device):
        """Summed weight of the supervised tokens (labels shifted by one; each weighs 1 without `label_weights`, so
        this is their count) over every micro-batch of the step and, with `average_tokens_across_devices`, over every
        rank. Counted whatever the model's `accepts_loss_kwargs`. float64 on every rank, weighted or not, so that
        ranks gather the same dtype."""
        count = sum(summed_label_weight(batch) for batch in batch_samples)
        count = torch.as_tensor(count, dtype=torch.float64, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            # The ranks of a sequence-parallel group hold the same rows: their count is counted once.
            count = self.accelerator.gather(count).sum() / self.args.sequence_parallel_size
        return count

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The same loss as training, and no logits: they are never built.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        correct, total, nll_sum, weight_sum, input_tokens = self._token_stats[mode].tolist()
        if total > 0:
            self._metrics[mode]["mean_token_accuracy"] = [correct / total]
        if input_tokens > 0:  # the share of the real tokens trained on since the last log (training only)
            self._metrics[mode]["supervised_share"] = [total / input_tokens]
        if mode == "eval" and total > 0:
            # `Trainer` averages per-batch losses; the eval loss is the token-weighted mean over the whole eval set,
            # the same quantity the training loss is for a step.
            for key in [k for k in logs if k.startswith("eval") and k.endswith("_loss")]:
                logs[key] = nll_sum / weight_sum
        if mode == "train":
            if self._total_supervised_tokens == 0:  # after a resume, the count goes on from the checkpoint's log
                self._total_supervised_tokens = next(
                    (int(e["num_supervised_tokens"]) for e in reversed(self.state.log_history) if "num_supervised_tokens" in e), 0
                )
            if self._total_supervised_weight == 0:
                self._total_supervised_weight = next(
                    (float(e["supervised_weight"]) for e in reversed(self.state.log_history) if "supervised_weight" in e), 0.0
                )
            self._total_supervised_tokens += int(total)
            self._total_supervised_weight += weight_sum
            self._metrics[mode]["num_supervised_tokens"] = [self._total_supervised_tokens]
            self._metrics[mode]["supervised_weight"] = [self._total_supervised_weight]
        self._token_stats[mode].zero_()
        super().log(logs, start_time)

"""Held-out answer accuracy: does the model generate the final answer of a conversation it has not trained on?

The eval loss says how well the model predicts the reference tokens; this says whether greedy decoding actually
produces the answer. For each row, the conversation before its last assistant turn is rendered as in training (the
training template, which renders the stock template's text, with the recipe's and the row's `chat_template_kwargs`,
so `enable_thinking: false` prompts as it trains) and `add_generation_prompt=True`, its images and videos are
processed as in training, the model generates greedily, and the final answer is compared with the reference after
normalisation (case, surrounding whitespace and punctuation). On a thinking template the final answer is what the
template's parser keeps: the text after the reasoning block (`</think>`, Gemma 4's `<channel|>`), none when the
block never closes; the reference likewise, when it carries its reasoning inline. Rows whose last assistant turn has
no text (it only calls a tool) are skipped and counted.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import torch
from accelerate.logging import get_logger
from transformers import TrainerCallback

from vlsft.collator import VisionChatCollator
from vlsft.data.rows import count_video_placeholders, load_image, row_videos
from vlsft.final_answer import final_answer_ids, normalize_answer, reasoning_ids, split_final_answer
from vlsft.run_plot import CHANCE_FILE, CURVES_FILE, plot_run_curves
from vlsft.templates import resolve_training_template

logger = get_logger(__name__)

def _processor_videos(collator: VisionChatCollator, videos: list) -> dict[str, Any]:
    """The processor's arguments for videos decoded by the collator: their sampled frames, their metadata (Qwen3-VL's
    timestamps) and this run's pixel budget, as training passes them."""
    if not videos:
        return {}
    # The collator's own video arguments (frames already sampled, this run's size), for the videos only: given at
    # the top level, `size` would resize the images too.
    videos_kwargs = {key: value for key, value in collator._videos_kwargs.items() if not key.startswith("return_")}
    videos_kwargs["video_metadata"] = [video.metadata for video in videos]
    return {"videos": [video.frames for video in videos], "videos_kwargs": videos_kwargs}


@torch.no_grad()
def answer_accuracy(
    model,
    processor,
    rows,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    image_root: str | None = None,
    collator: VisionChatCollator | None = None,
) -> dict[str, Any]:
    """Greedy-generate the final assistant answer of each row and score exact matches after normalisation.

    `collator` renders the prompts and decodes the videos as training does (`VLSFTTrainer`'s; by default one with the
    processor's training template and no template variables).

    Returns `accuracy`, `correct`, `total`, `skipped` (rows without a text answer), `by_kind` (accuracy per value of
    the rows' optional `kind` column) and `predictions` (one dict per scored row: kind, reference, prediction (the
    final answer scored), generated (all the generated text, reasoning included)).
    """
    if collator is None:
        collator = VisionChatCollator(processor, resolve_training_template(processor.chat_template))
    closing = collator.family.reasoning_markers[1] if collator.family.reasoning_markers else None
    examples = []
    skipped = 0
    for row in rows:
        split = split_final_answer(row)
        if split is None:
            skipped += 1
            continue
        prompt, images, reference = split
        if closing is not None:
            reference = reference.split(closing)[-1]  # inline reasoning: the answer is what follows the block
        text = collator.render_prompt(row, prompt)
        videos = collator.load_videos(row_videos(row)[: count_video_placeholders(prompt)])
        examples.append((text, [load_image(image, image_root) for image in images], videos, reference, row.get("kind")))

    tokenizer = processor.tokenizer
    was_training = model.training
    padding_side = tokenizer.padding_side
    # Generation continues every prompt from its last token, so prompts of a batch are padded on the left.
    tokenizer.padding_side = "left"
    model.eval()
    parameter = next(model.parameters())
    predictions = []
    markers = reasoning_ids(collator)
    stop_ids = {tokenizer.convert_tokens_to_ids(collator.family.end_of_turn), tokenizer.eos_token_id, tokenizer.pad_token_id}
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            images = [image for _, row_images_, _, _, _ in batch for image in row_images_]
            videos = [video for _, _, row_videos_, _, _ in batch for video in row_videos_]
            inputs = processor(
                text=[text for text, _, _, _, _ in batch],
                images=images or None,
                padding=True,
                return_tensors="pt",
                **_processor_videos(collator, videos),
            ).to(parameter.device)
            for key in ("pixel_values", "pixel_values_videos"):
                if key in inputs and parameter.is_floating_point():
                    inputs[key] = inputs[key].to(parameter.dtype)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )
            width = inputs["input_ids"].shape[1]
            for row_number, (_, _, _, reference, kind) in enumerate(batch):
                prompt = inputs["input_ids"][row_number][inputs["attention_mask"][row_number].bool()].tolist()
                generated = output[row_number, width:].tolist()
                answer = final_answer_ids(prompt, generated, stop_ids, markers)
                prediction = tokenizer.decode(answer, skip_special_tokens=True)
                predictions.append(
                    {
                        "kind": kind,
                        "reference": reference,
                        "prediction": prediction,
                        "generated": tokenizer.decode(generated, skip_special_tokens=False),
                        "correct": normalize_answer(prediction) == normalize_answer(reference),
                    }
                )
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)

    correct = sum(p["correct"] for p in predictions)
    by_kind: dict[str, list[int]] = {}
    for p in predictions:
        if p["kind"] is not None:
            by_kind.setdefault(p["kind"], []).append(p["correct"])
    return {
        "accuracy": correct / len(predictions) if predictions else 0.0,
        "correct": correct,
        "total": len(predictions),
        "skipped": skipped,
        "by_kind": {kind: sum(hits) / len(hits) for kind, hits in sorted(by_kind.items())},
        "predictions": predictions,
    }


def chance_by_kind(predictions: list[dict[str, Any]]) -> dict[str, float]:
    """Per row kind, the share of its most common reference answer: the accuracy of always giving that answer, the
    best a model that ignores the image can reach when the question itself does not give the answer away. Computed
    from the scored rows, so it follows the data (1/4 for four colours drawn uniformly, more on a small sample)."""
    answers: dict[str, list[str]] = {}
    for p in predictions:
        if p["kind"] is not None:
            answers.setdefault(p["kind"], []).append(normalize_answer(p["reference"]))
    return {kind: Counter(refs).most_common(1)[0][1] / len(refs) for kind, refs in sorted(answers.items())}


def accuracy_table(result: dict[str, Any]) -> str:
    """An `answer_accuracy` result as a small table: kind, accuracy, chance (`chance_by_kind`), rows."""
    chance = chance_by_kind(result["predictions"])
    rows = Counter(p["kind"] for p in result["predictions"] if p["kind"] is not None)
    lines = [f"{'kind':<12}{'accuracy':>9}{'chance':>8}{'rows':>6}"]
    lines += [f"{kind:<12}{result['by_kind'][kind]:>9.2f}{chance[kind]:>8.2f}{rows[kind]:>6}" for kind in chance]
    lines.append(f"{'all':<12}{result['accuracy']:>9.2f}{'':>8}{result['total']:>6}")
    return "\n".join(lines)


class AnswerAccuracyCallback(TrainerCallback):
    """Logs held-out answer accuracy (`eval_answer_accuracy`, plus `eval_answer_accuracy_<kind>` per row kind) at the
    end of training and, with `every_evaluation=True`, after each evaluation.

    The values go through `trainer.log`, like every other metric: they land once in `state.log_history` (so in
    `trainer_state.json`), reach every `report_to` integration (TensorBoard, W&B, trackio: each writes on the main
    process) and the progress bar; after an evaluation they are also added to the metrics `Trainer.evaluate` returns
    (so `metric_for_best_model` may name them). A callback gets no trainer from `transformers`: `VLSFTTrainer` sets
    `trainer` when the callback is added; with another trainer, set `callback.trainer = trainer` yourself. Prompts are
    rendered by `collator`, by default the trainer's `rendering_collator` (its template and `chat_template_kwargs`).

    At the end of training the last result is logged as a table by kind, next to chance (`accuracy_table`), on the
    main process, which also writes into `output_dir` the result and chance by kind (`answer_accuracy.json`) and the
    run's eval loss and accuracy by kind against steps, next to chance (`eval_curves.png`, `vlsft.run_plot`). Every
    rank generates the same answers, which keeps ranks in step under sharded models (DeepSpeed ZeRO-3) without any
    collective of its own.
    """

    def __init__(
        self,
        rows,
        processor,
        max_new_tokens: int = 32,
        every_evaluation: bool = False,
        batch_size: int = 16,
        image_root: str | None = None,
        trainer=None,
        collator: VisionChatCollator | None = None,
    ):
        # Decoded once: a `datasets.Dataset` would decode every image again at each evaluation.
        self.rows = [dict(row) for row in rows]
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.every_evaluation = every_evaluation
        self.batch_size = batch_size
        self.image_root = image_root
        self.trainer = trainer
        self.collator = collator
        self._last_step = None
        self.last_result: dict[str, Any] | None = None

    def measure(self, model, state) -> dict[str, float]:
        """Generate and score the answers; returns the metrics (logged by the caller)."""
        # The trainer's collator renders the prompts as its rows train (template, `chat_template_kwargs`, videos).
        collator = self.collator or getattr(self.trainer, "rendering_collator", None)
        result = answer_accuracy(
            model, self.processor, self.rows, self.max_new_tokens, batch_size=self.batch_size,
            image_root=self.image_root, collator=collator,
        )
        self.last_result = result
        self._last_step = state.global_step
        metrics = {"eval_answer_accuracy": result["accuracy"]}
        metrics.update({f"eval_answer_accuracy_{kind}": value for kind, value in result["by_kind"].items()})
        return metrics

    def _log(self, metrics: dict[str, float]) -> None:
        if self.trainer is None:
            raise RuntimeError(
                "AnswerAccuracyCallback logs through its trainer, and has none: pass it to `VLSFTTrainer(callbacks=...)` "
                "or `trainer.add_callback(...)`, or set `callback.trainer = trainer` for another Trainer."
            )
        model = self.trainer.model
        was_training = model.training
        # These are evaluation metrics: TRL's and vlsft's `log` read the mode (train or eval) from `model.training`,
        # and in train mode would fold the training step's running statistics into this entry.
        model.eval()
        try:
            self.trainer.log(dict(metrics))  # `log` adds the epoch to the dict it is given
        finally:
            model.train(was_training)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        # `Trainer.evaluate` has logged its own metrics just before this event: ours are one more entry, at the same step.
        if self.every_evaluation and model is not None:
            measured = self.measure(model, state)
            if metrics is not None:
                metrics.update(measured)
            self._log(measured)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self._last_step != state.global_step:
            self._log(self.measure(model, state))
        if self.last_result is not None:
            # The run's last word: the per-evaluation numbers have scrolled past by now.
            logger.info(
                f"held-out answer accuracy at step {state.global_step} (chance: always giving the kind's most common "
                f"answer)\n{accuracy_table(self.last_result)}"
            )
            if state.is_world_process_zero and args.output_dir:
                self._write_result_and_curves(args.output_dir, state)

    def _write_result_and_curves(self, output_dir: str, state) -> None:
        chance = chance_by_kind(self.last_result["predictions"])
        os.makedirs(output_dir, exist_ok=True)
        summary = {key: self.last_result[key] for key in ("accuracy", "correct", "total", "skipped", "by_kind")}
        with open(os.path.join(output_dir, CHANCE_FILE), "w", encoding="utf-8") as file:
            json.dump({"step": state.global_step, **summary, "chance": chance}, file, indent=2)
        path = plot_run_curves(state.log_history, os.path.join(output_dir, CURVES_FILE), chance)
        logger.info(f"eval loss and answer accuracy by kind against steps, next to chance: {path}")

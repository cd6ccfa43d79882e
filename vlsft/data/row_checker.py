"""`RowChecker`: one row's verdict, found the way the training collator trains on it (its template, tokenizer,
image expansion, `max_length` and mask), with no model and, for the Qwen-VL families, no pixel tensor. What a verdict
means, and how datasets are checked with it, is told in `vlsft.data.validation`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Features, Image, LargeList, List

from vlsft.collation.reasoning import ReasoningError, history_rule_problem
from vlsft.collation.rendering import RenderedRow, RowError
from vlsft.collator import VisionChatCollator
from vlsft.data.formats import CONVERSION_ERROR
from vlsft.data.media_checks import image_problems, image_rendering_problem, video_problems
from vlsft.data.message_checks import message_problems, row_problems
from vlsft.families import FAMILIES
from vlsft.templates import detect_family
from vlsft.tokens import IGNORE_INDEX
from vlsft.weights import TurnWeightError, turn_weights, weight_key_problems


NOTHING_SUPERVISED = "no supervised token (the assistant turns render empty)"


@dataclass
class RowVerdict:
    """What validation found for one row. `num_tokens` is the row's length with image tokens expanded, before
    truncation; `num_supervised_tokens` counts the tokens the loss sees after truncation."""

    reason: str  # "" for a valid row
    num_tokens: int = 0
    num_supervised_tokens: int = 0
    num_supervised_removed: int = 0  # supervised tokens `max_length` cuts off


class RowChecker:
    """Checks rows the way `collator` trains on them. Picklable, so `Dataset.map` can run it in worker processes.

    Two ways to get a row's tokens, with the same verdicts:
    - fast (the default where it applies): the collator's own rendering and tokenization (`tokenize_rows`), with each
      image's token count computed from its size by the image processor's resize rule; no pixel tensor is built.
    - by collating: the collator itself on the row, untruncated. Used for collators whose image placeholders do not
      expand on token ids, or when `fast=False`.
    """

    def __init__(
        self,
        collator: VisionChatCollator,
        features: Features | None = None,
        fast: bool | None = None,
        allow_truncated_end_of_turn: bool = False,
    ):
        self.collator = collator
        self.allow_truncated_end_of_turn = allow_truncated_end_of_turn
        end_of_turn = collator.family.end_of_turn
        self.end_of_turn = end_of_turn
        self.end_of_turn_id = collator.processor.tokenizer.convert_tokens_to_ids(end_of_turn)
        # How `map_batch` turns Arrow rows into Python rows: every feature decoded (JSON columns, for instance)
        # except images, which `load_image` decodes itself so that a corrupt one is reported and not raised.
        self.features = _without_image_decoding(features) if features is not None else None
        self.image_processor = collator.processor.image_processor
        family_name = detect_family(collator.chat_template)
        # Qwen3-VL's template renders a system message only first and drops a later one without a word.
        self.system_only_first = not _renders_later_system_message(collator)
        self.fast = _counts_image_tokens_from_sizes(collator, family_name) if fast is None else fast
        self._untruncated: VisionChatCollator | None = None

    def check(self, rows: list[dict[str, Any]]) -> list[RowVerdict]:
        verdicts: list[RowVerdict | None] = [None] * len(rows)
        renderable = []
        for position, row in enumerate(rows):
            if row.get(CONVERSION_ERROR):  # a ShareGPT/LLaVA turn that could not be mapped (`vlsft.data.formats`)
                verdicts[position] = RowVerdict(row[CONVERSION_ERROR])
                continue
            problems = message_problems(row.get("messages"))
            if not problems:
                problems = row_problems(row, self.collator)
            if self.system_only_first and not problems:
                problems = [
                    f"message {i} is a system message; the chat template only renders a system message first"
                    for i, message in enumerate(row["messages"])
                    if i > 0 and message.get("role") == "system"
                ]
            if not problems:
                problems = self._weight_problems(row["messages"])
            if problems:
                verdicts[position] = RowVerdict("; ".join(problems))
            else:
                renderable.append(position)
        tokenized = self._tokenize(rows, renderable) if self.fast else {}
        for position in renderable:
            row, result = rows[position], tokenized.get(position)
            verdict = (
                self._check_by_collating(row) if not self.fast
                else RowVerdict(result) if isinstance(result, str) else self._check_rendered(row, result)
            )
            if verdict.reason == NOTHING_SUPERVISED:  # a thinking template's history rule, named where it is the cause
                verdict.reason = history_rule_problem(self.collator, row) or NOTHING_SUPERVISED
            verdicts[position] = verdict
        return verdicts

    def _weight_problems(self, messages: list[dict[str, Any]]) -> list[str]:
        """Malformed `weight` / `train` keys, or no assistant turn left to train on; with `assistant_only_loss=False`,
        keys asking for a weight other than 1 (that loss supervises every token alike)."""
        if not getattr(self.collator, "assistant_only_loss", True):
            return weight_key_problems(messages, assistant_only_loss=False)
        try:
            turn_weights(messages, getattr(self.collator, "train_on_turns", "all"))
        except TurnWeightError as error:
            return [str(error)]
        return []

    # -- what every row needs, whichever way it is tokenized -----------------------------------------------------

    def _content_problems(self, row: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """(problems, decoded images or None where one fails): an assistant turn, one image per placeholder, every
        image decodable."""
        problems = [] if any(m.get("role") == "assistant" for m in row["messages"]) else ["no assistant turn"]
        image_problems_, images = image_problems(row, self.collator.image_root)
        return problems + image_problems_, images

    def _length_verdict(
        self,
        length: int,
        image_end: int,
        supervised_positions: list[int],
        end_of_turn_positions: list[int] = (),
        video_end: int = 0,
    ) -> RowVerdict:
        """The verdict on a row of `length` tokens (images and videos expanded, before truncation) whose image
        (video) tokens end at `image_end` (`video_end`), supervised targets at `supervised_positions` (>= 1: labels
        are shifted), supervised end-of-turn tokens at `end_of_turn_positions`."""
        max_length = self.collator.max_length
        kept = length if max_length is None else min(length, max_length)
        num_supervised = sum(1 for p in supervised_positions if p < kept)
        verdict = RowVerdict("", length, num_supervised, len(supervised_positions) - num_supervised)
        cut = [(kind, end) for kind, end in (("image", image_end), ("video", video_end)) if end > kept]
        if cut:
            verdict.reason = f"max_length={max_length} cuts {' and '.join(kind for kind, _ in cut)} tokens (row is " + (
                f"{length} tokens, {', '.join(f'{kind} tokens end at {end}' for kind, end in cut)})"
            )
        elif num_supervised == 0 and max_length is not None and supervised_positions:
            verdict.reason = (
                f"max_length={max_length} leaves no supervised token (row is {length} tokens, the first "
                f"supervised token is at {supervised_positions[0]})"
            )
        elif num_supervised == 0:
            verdict.reason = NOTHING_SUPERVISED
        elif end_of_turn_positions and end_of_turn_positions[-1] >= kept and not self.allow_truncated_end_of_turn:
            verdict.reason = (
                f"max_length={max_length} cuts the final end-of-turn token {self.end_of_turn} (row is {length} "
                f"tokens, it is at {end_of_turn_positions[-1]}), which would teach the model not to stop; raise "
                "`max_length`, shorten the row, or allow it with `allow_truncated_end_of_turn: true`"
            )
        return verdict

    # -- fast: the collator's tokenization, image token counts from image sizes ----------------------------------

    def _tokenize(self, rows: list[dict[str, Any]], positions: list[int]) -> dict[int, RenderedRow | str]:
        """Each row rendered and tokenized by the collator, or the reason its chat template failed on it. All rows
        are tokenized in one batched call; only a batch with a failing row is redone row by row to find it."""
        try:
            return dict(zip(positions, self.collator.tokenize_rows([rows[p] for p in positions])))
        except Exception:
            results: dict[int, RenderedRow | str] = {}
            for position in positions:
                try:
                    results[position] = self.collator.tokenize_rows([rows[position]])[0]
                except ReasoningError as error:  # the template renders it, but not as the row says
                    results[position] = str(error)
                except Exception as error:
                    results[position] = f"the chat template cannot render it ({type(error).__name__}: {error})"
            return results

    def _check_rendered(self, row: dict[str, Any], rendered: RenderedRow) -> RowVerdict:
        problems, images = self._content_problems(row)
        videos_problems, video_tokens = video_problems(row, self.collator, rendered)
        problems += videos_problems
        rendering_problem = image_rendering_problem(row, rendered, self.collator)
        if rendering_problem:
            problems.append(rendering_problem)
        image_tokens = []
        for number, image in enumerate(images):
            if image is None:
                continue
            try:
                image_tokens.append(self.image_token_count(image.height, image.width))
            except Exception as error:  # the image processor refuses the size (e.g. an extreme aspect ratio)
                problems.append(f"image {number} cannot be processed ({type(error).__name__}: {error})")
        if problems:
            return RowVerdict("; ".join(problems))

        vision_ids = self.collator._vision_token_ids
        # Walk the unexpanded ids with the position each token lands on once image pads are expanded.
        position, image_end, video_end, supervised_positions, image_number, end_positions = 0, 0, 0, [], 0, []
        for token, supervised in zip(rendered.input_ids, rendered.trained):
            if token == self.collator.image_token_id:
                position += image_tokens[image_number]
                image_number += 1
                image_end = position
                continue
            if video_tokens and token == self.collator.video_token_id:
                position += video_tokens.pop(0)
                video_end = position  # truncation must not cut a video's tokens either
                continue
            if supervised and token not in vision_ids and position > 0:
                supervised_positions.append(position)
                if token == self.end_of_turn_id:
                    end_positions.append(position)
            position += 1
        return self._length_verdict(position, image_end, supervised_positions, end_positions, video_end)

    def image_token_count(self, height: int, width: int) -> int:
        """Tokens one image expands to, from its size alone, through the image processor's own resize rule."""
        return self.image_processor.get_number_of_image_patches(height, width, {}) // self.collator.merge_length

    # -- by collating: the collator itself, untruncated ----------------------------------------------------------

    def _check_by_collating(self, row: dict[str, Any]) -> RowVerdict:
        problems, _ = self._content_problems(row)
        if problems:
            return RowVerdict("; ".join(problems))
        if self._untruncated is None:
            self._untruncated = dataclasses.replace(self.collator, max_length=None)
        try:
            batch = self._untruncated([row])
        except RowError as error:
            return RowVerdict(error.reason)
        except Exception as error:
            return RowVerdict(f"cannot be collated ({type(error).__name__}: {error})")
        length = int(batch["attention_mask"][0].sum())
        ids = batch["input_ids"][0, :length]
        # The tokens the model replaces with image features (Gemma 3: its soft tokens, not the placeholder).
        feature_ids = getattr(self.collator, "image_feature_token_ids", None) or [self.collator.image_token_id]
        image_positions = torch.isin(ids, torch.tensor(feature_ids)).nonzero().flatten().tolist()
        image_end = image_positions[-1] + 1 if image_positions else 0
        video_token_id = getattr(self.collator, "video_token_id", None)
        video_end = int((ids == video_token_id).nonzero().max()) + 1 if video_token_id in ids.tolist() else 0
        supervised_positions = [p for p in (batch["labels"][0, :length] != IGNORE_INDEX).nonzero().flatten().tolist() if p > 0]
        end_positions = [p for p in supervised_positions if int(ids[p]) == self.end_of_turn_id]
        return self._length_verdict(length, image_end, supervised_positions, end_positions, video_end)

    # -- as a `Dataset.map` function -----------------------------------------------------------------------------

    def map_batch(self, batch) -> dict[str, list]:
        """`Dataset.map` entry point: `batch` is an Arrow table, so images stay undecoded until `load_image`."""
        rows = batch.to_pylist()
        if self.features is not None:
            rows = [self.features.decode_example(row) for row in rows]
        verdicts = self.check(rows)
        return {
            "reason": [verdict.reason for verdict in verdicts],
            "num_tokens": [verdict.num_tokens for verdict in verdicts],
            "num_supervised_tokens": [verdict.num_supervised_tokens for verdict in verdicts],
            "num_supervised_removed": [verdict.num_supervised_removed for verdict in verdicts],
        }


def _renders_later_system_message(collator: VisionChatCollator) -> bool:
    """Whether the chat template renders a system message that is not the first message (asked of the template
    itself, with a probe conversation)."""
    probe = "vlsft-probe-later-system-message"
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
        {"role": "system", "content": [{"type": "text", "text": probe}]},
        {"role": "user", "content": [{"type": "text", "text": "c"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
    ]
    try:
        return probe in collator.render({"messages": messages})[0]
    except Exception:  # the template refuses it: rows with one fail to render and are reported as such
        return True


def _counts_image_tokens_from_sizes(collator: VisionChatCollator, family_name: str | None) -> bool:
    """Whether each image's placeholder expands on token ids into (grid patches / merge size) copies, the grid coming
    from the image size alone: the Qwen-VL image processors, which return `image_grid_thw` and expose the resize rule
    as `get_number_of_image_patches`. Then validation needs no pixel tensor; other collators are run on the row."""
    family = getattr(collator, "family", None) or (FAMILIES.get(family_name) if family_name else None)
    image_processor = collator.processor.image_processor
    return (
        family is not None
        and getattr(family, "expand_on_ids", True)
        and "image_grid_thw" in getattr(image_processor, "model_input_names", ())
        and hasattr(image_processor, "get_number_of_image_patches")
        and hasattr(collator, "tokenize_rows")
        and hasattr(collator, "merge_length")
    )


def _without_image_decoding(feature):
    """A copy of a (nested) `datasets` feature in which every `Image` stays undecoded ({"bytes", "path"} dicts)."""
    if isinstance(feature, Image):
        return Image(mode=feature.mode, decode=False)
    if isinstance(feature, Features):
        return Features({key: _without_image_decoding(value) for key, value in feature.items()})
    if isinstance(feature, dict):
        return {key: _without_image_decoding(value) for key, value in feature.items()}
    if isinstance(feature, List):
        return List(_without_image_decoding(feature.feature), length=feature.length)
    if isinstance(feature, LargeList):
        return LargeList(_without_image_decoding(feature.feature))
    return feature


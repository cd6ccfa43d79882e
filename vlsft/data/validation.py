"""Row validation before the first training step: every bad row is found up front, and named by its index.

A row is checked with the training collator itself (its template, tokenizer, image loading, `max_length` and mask),
so validation and training agree on what a row is:
- its messages have known roles and well-formed content, and at least one assistant turn;
- per-turn `weight` / `train` keys sit on assistant messages only, are numbers >= 0 / booleans, and leave at least one
  trained assistant turn (with `train_on_turns`);
- tool calls have a name and JSON-object arguments, and every tool message answers a call;
- no message text spells out a control token of the tokenizer (unless `escape_control_tokens`);
- every image loads and fully decodes, and there are as many images as image placeholders (in user, assistant and
  tool messages alike), all of which the chat template renders;
- with `max_length`, truncation cuts no image token, leaves at least one supervised token and keeps the final
  end-of-turn token (unless `allow_truncated_end_of_turn`); rows cut and supervised tokens removed are reported.

For the Qwen-VL families, image token counts come from each image's size through the image processor's own resize
rule (`get_number_of_image_patches`), so no pixel tensor is built; other collators are run on the row itself. No
model runs either way. A `datasets.Dataset` is checked with
`Dataset.map` (parallel with `dataset_num_proc`, cached by fingerprint for datasets stored on disk, the fingerprint
including each image file's size and modification time); an
`IterableDataset` cannot be checked up front and is left to fail in training.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Features, Image, IterableDataset, LargeList, List
from datasets.fingerprint import Hasher

from vlsft.collation.rendering import RenderedRow, RowError
from vlsft.collator import VisionChatCollator
from vlsft.data.rows import (
    ImageLoadError,
    ImagesNotAListError,
    count_image_placeholders,
    count_video_placeholders,
    is_image_item,
    load_image,
    row_images,
    row_videos,
)
from vlsft.data.formats import CONVERSION_ERROR, missing_messages_message
from vlsft.families import FAMILIES
from vlsft.templates import detect_family
from vlsft.data.video import VideoLoadError
from vlsft.weights import TurnWeightError, turn_weights

logger = logging.getLogger(__name__)

KNOWN_ROLES = ("system", "user", "assistant", "tool")
CONTENT_TYPES = ("text", "image", "video")
# Roles whose image placeholders the known chat templates render (Qwen3-VL drops images in system/assistant turns).
IMAGE_ROLES = ("user", "tool")
# Rows listed in an error before the rest are only counted.
MAX_LISTED_ROWS = 20
# The source files whose logic decides a row's verdict: a change to any of them invalidates cached results.
_VERDICT_MODULES = (
    "vlsft.data.validation", "vlsft.collator", "vlsft.collation.rendering", "vlsft.collation.weighting",
    "vlsft.collation.images", "vlsft.collation.videos", "vlsft.collation.template_kwargs", "vlsft.data.rows",
    "vlsft.families", "vlsft.templates", "vlsft.weights", "vlsft.data.video",
)


@dataclass(frozen=True)
class RowProblem:
    """One invalid row: `dataset` is None for the train dataset, else the eval dataset's name."""

    dataset: str | None
    index: int
    reason: str

    def __str__(self) -> str:
        where = f"row {self.index}" if self.dataset is None else f"eval dataset '{self.dataset}' row {self.index}"
        return f"{where}: {self.reason}"


class InvalidRowsError(ValueError):
    """Rows that cannot be trained on, each as `row N: reason` (N counts from 0 in its dataset).

    `problems` holds every `RowProblem`, including those the message leaves out.
    """

    def __init__(self, problems: list[RowProblem], checked: dict[str, int] | None = None):
        self.problems = list(problems)
        listed = "\n".join(f"  {problem}" for problem in self.problems[:MAX_LISTED_ROWS])
        rest = len(self.problems) - MAX_LISTED_ROWS
        if rest > 0:
            listed += f"\n  ... and {rest} more invalid row(s)"
        scope = ""
        if checked:
            scope = " (checked " + ", ".join(f"{count} {name} rows" for name, count in checked.items()) + ")"
        super().__init__(
            f"{len(self.problems)} row(s) cannot be trained on{scope}:\n{listed}\n"
            "Fix or remove these rows, or drop them at load time with `VLSFTConfig(invalid_rows='skip')` "
            "(`invalid_rows: skip` in a recipe's training section). `validate_rows=False` turns this check off."
        )


@dataclass
class RowVerdict:
    """What validation found for one row. `num_tokens` is the row's length with image tokens expanded, before
    truncation; `num_supervised_tokens` counts the tokens the loss sees after truncation."""

    reason: str  # "" for a valid row
    num_tokens: int = 0
    num_supervised_tokens: int = 0
    num_image_tokens: tuple[int, ...] = ()
    num_supervised_removed: int = 0  # supervised tokens `max_length` cuts off


@dataclass
class ValidationResult:
    num_rows: int
    problems: list[RowProblem]
    truncated_rows: int = 0  # rows longer than `max_length` (valid or not)
    supervised_tokens_removed: int = 0  # supervised tokens truncation cuts from them

    @property
    def bad_indices(self) -> list[int]:
        return [problem.index for problem in self.problems]


# -- checking one batch of rows ------------------------------------------------------------------------------------


def message_problems(messages: Any) -> list[str]:
    """Problems with the shape of a conversation: roles, content items, tool calls. Empty if it can be rendered."""
    if not isinstance(messages, list) or not messages:
        return [f"'messages' must be a non-empty list of messages, got {_describe(messages)}"]
    problems = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"message {position} must be a dict with 'role' and 'content', got {_describe(message)}")
            continue
        role = message.get("role")
        if role not in KNOWN_ROLES:
            problems.append(f"message {position} has unknown role {role!r} (expected one of {', '.join(KNOWN_ROLES)})")
        content = message.get("content")
        if isinstance(content, list):
            for item_position, item in enumerate(content):
                problems.extend(_content_item_problems(position, item_position, item))
        elif content is not None and not isinstance(content, str):
            problems.append(f"message {position} content must be a string or a list of items, got {_describe(content)}")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            problems.extend(_tool_call_problems(position, role, tool_calls))
    return problems + _orphan_tool_problems(messages)


def _orphan_tool_problems(messages: list) -> list[str]:
    """A tool message answers a call: it must follow an assistant turn with tool calls (directly, or after other tool
    responses to the same turn), and a turn gets no more responses than it made calls."""
    problems, open_calls = [], 0
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            open_calls = len(calls) if isinstance(calls, list) else 0
        elif role == "tool":
            if open_calls == 0:
                problems.append(
                    f"message {position} is a tool message with no preceding tool call; a tool response must follow "
                    "the assistant message whose `tool_calls` it answers"
                )
            open_calls = max(open_calls - 1, 0)
        else:
            open_calls = 0
    return problems


def _content_item_problems(position: int, item_position: int, item: Any) -> list[str]:
    where = f"message {position} content item {item_position}"
    if not isinstance(item, dict):
        return [f"{where} must be a dict like {{'type': 'text', 'text': ...}}, got {_describe(item)}"]
    kind = item.get("type")
    if kind not in CONTENT_TYPES:
        return [f"{where} has type {kind!r}; vlsft trains on 'text', 'image' and 'video' items"]
    if kind == "text" and not isinstance(item.get("text"), str):
        return [f"{where} is a text item without a string 'text'"]
    return []


def _tool_call_problems(position: int, role: Any, tool_calls: Any) -> list[str]:
    if role != "assistant":
        return [f"message {position} is a {role!r} message with tool_calls; only assistant messages make tool calls"]
    if not isinstance(tool_calls, list):
        return [f"message {position} tool_calls must be a list, got {_describe(tool_calls)}"]
    problems = []
    for call_position, call in enumerate(tool_calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            problems.append(f"message {position} tool call {call_position} has no function name")
            continue
        problem = _arguments_problem(function.get("arguments"))
        if problem:
            problems.append(f"message {position} tool call {call_position} ({function['name']}): {problem}")
    return problems


def _arguments_problem(arguments: Any) -> str:
    """Why a tool call's `arguments` is not a JSON object (a dict, or a string holding one), or ""."""
    if isinstance(arguments, dict):
        return ""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return f"`arguments` is a string that is not JSON ({_describe(arguments)}); write a JSON object or a dict"
        if isinstance(parsed, dict):
            return ""
        return f"`arguments` must be a JSON object, got the JSON {type(parsed).__name__} {_describe(arguments)}"
    return f"`arguments` must be a JSON object (a dict or a JSON string), got {_describe(arguments)}"


def row_problems(row: dict[str, Any], collator: VisionChatCollator) -> list[str]:
    """Problems of a row beyond its messages' shape: `images` not a list, control-token text in a message."""
    problems = []
    images = row.get("images")
    if images is not None and not isinstance(images, (list, tuple)):
        try:
            row_images(row)
        except ImagesNotAListError as error:
            problems.append(str(error))
    if not collator.escape_control_tokens:
        problems.extend(control_token_problems(row["messages"], collator))
    problems.extend(tool_call_control_token_problems(row["messages"], collator))
    return problems


def tool_call_control_token_problems(messages: list[dict[str, Any]], collator: VisionChatCollator) -> list[str]:
    """Control-token text in a tool call (its name or arguments), which the template writes out verbatim. Escaping
    applies to message text only, so this is a bad row either way."""
    problems = []
    for position, message in enumerate(messages):
        for call_position, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function", call) if isinstance(call, dict) else {}
            arguments = function.get("arguments")
            text = " ".join([str(function.get("name")), arguments if isinstance(arguments, str) else json.dumps(arguments)])
            tokens = collator.control_tokens_in(text)
            if tokens:
                problems.append(
                    f"message {position} tool call {call_position} contains the control token"
                    f"{'s' if len(tokens) > 1 else ''} {', '.join(tokens)}, which the template writes out verbatim "
                    "(escaping applies to message text only); remove it"
                )
    return problems


def control_token_problems(messages: list[dict[str, Any]], collator: VisionChatCollator) -> list[str]:
    """One problem per message whose text spells out a control token of the collator's tokenizer."""
    problems = []
    for position, message in enumerate(messages):
        content = message.get("content")
        texts = [content] if isinstance(content, str) else [
            item.get("text") for item in content or [] if isinstance(item, dict) and item.get("type") == "text"
        ]
        texts.append(message.get("reasoning_content"))
        role = message.get("role")
        tokens = list(dict.fromkeys(token for text in texts for token in collator.control_tokens_in(text, role)))
        if tokens:
            problems.append(
                f"message {position} contains the control token{'s' if len(tokens) > 1 else ''} {', '.join(tokens)}, "
                "which would be tokenized as the token itself; remove it, or train on it as plain text with "
                "`escape_control_tokens: true` (`VLSFTConfig(escape_control_tokens=True)`)"
            )
    return problems


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _image_problem(number: int, error: ImageLoadError) -> str:
    cause = error.__cause__
    if isinstance(cause, FileNotFoundError):
        return f"image {number} not found: {cause.filename}"
    if cause is not None:
        return f"image {number} cannot be decoded ({type(cause).__name__}: {cause})"
    return f"image {number}: {error}"


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
            if not problems and getattr(self.collator, "assistant_only_loss", True):
                problems = self._weight_problems(row["messages"])
            if problems:
                verdicts[position] = RowVerdict("; ".join(problems))
            else:
                renderable.append(position)
        if not self.fast:
            for position in renderable:
                verdicts[position] = self._check_by_collating(rows[position])
            return verdicts
        tokenized = self._tokenize(rows, renderable)
        for position in renderable:
            result = tokenized[position]
            verdicts[position] = (
                RowVerdict(result) if isinstance(result, str) else self._check_rendered(rows[position], result)
            )
        return verdicts

    def _weight_problems(self, messages: list[dict[str, Any]]) -> list[str]:
        """Malformed `weight` / `train` keys, or no assistant turn left to train on."""
        try:
            turn_weights(messages, getattr(self.collator, "train_on_turns", "all"))
        except TurnWeightError as error:
            return [str(error)]
        return []

    # -- what every row needs, whichever way it is tokenized -----------------------------------------------------

    def _content_problems(self, row: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """(problems, decoded images or None where one fails): an assistant turn, one image per placeholder, every
        image decodable."""
        messages = row["messages"]
        problems = []
        if not any(message.get("role") == "assistant" for message in messages):
            problems.append("no assistant turn")
        values = row_images(row)
        placeholders = count_image_placeholders(messages)
        if placeholders != len(values):
            problems.append(f"{placeholders} image placeholder(s) but {len(values)} image(s)")
        images = []
        for number, value in enumerate(values):
            try:
                images.append(load_image(value, self.collator.image_root))  # a full decode: corrupt data fails here
            except ImageLoadError as error:
                images.append(None)
                problems.append(_image_problem(number, error))
        return problems, images

    def _length_verdict(
        self,
        length: int,
        image_end: int,
        supervised_positions: list[int],
        image_tokens: list[int],
        end_of_turn_positions: list[int] = (),
    ) -> RowVerdict:
        """The verdict on a row of `length` tokens (images expanded, before truncation) whose image tokens end at
        `image_end`, whose supervised targets sit at `supervised_positions` (all >= 1: labels are shifted) and whose
        supervised end-of-turn tokens sit at `end_of_turn_positions`."""
        max_length = self.collator.max_length
        kept = length if max_length is None else min(length, max_length)
        num_supervised = sum(1 for p in supervised_positions if p < kept)
        verdict = RowVerdict("", length, num_supervised, tuple(image_tokens), len(supervised_positions) - num_supervised)
        if max_length is not None and image_end > max_length:
            verdict.reason = (
                f"max_length={max_length} cuts image tokens (row is {length} tokens, image tokens end at {image_end})"
            )
        elif num_supervised == 0 and max_length is not None and supervised_positions:
            verdict.reason = (
                f"max_length={max_length} leaves no supervised token (row is {length} tokens, the first "
                f"supervised token is at {supervised_positions[0]})"
            )
        elif num_supervised == 0:
            verdict.reason = "no supervised token (the assistant turns render empty)"
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
                except Exception as error:
                    results[position] = f"the chat template cannot render it ({type(error).__name__}: {error})"
            return results

    def _check_rendered(self, row: dict[str, Any], rendered: RenderedRow) -> RowVerdict:
        problems, images = self._content_problems(row)
        video_problems, video_tokens = self.video_problems(row, rendered)
        problems += video_problems
        placeholders = count_image_placeholders(row["messages"])
        rendered_placeholders = rendered.input_ids.count(self.collator.image_token_id)
        if placeholders == len(row_images(row)) and rendered_placeholders != placeholders:
            problems.append(self._placeholder_rendering_problem(row["messages"], rendered_placeholders, placeholders))
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
        position, image_end, supervised_positions, image_number, end_positions = 0, 0, [], 0, []
        for token, supervised in zip(rendered.input_ids, rendered.trained):
            if token == self.collator.image_token_id:
                position += image_tokens[image_number]
                image_number += 1
                image_end = position
                continue
            if video_tokens and token == self.collator.video_token_id:
                position += video_tokens.pop(0)
                image_end = position  # truncation must not cut a video's tokens either
                continue
            if supervised and token not in vision_ids and position > 0:
                supervised_positions.append(position)
                if token == self.end_of_turn_id:
                    end_positions.append(position)
            position += 1
        return self._length_verdict(position, image_end, supervised_positions, image_tokens, end_positions)

    def video_problems(self, row: dict[str, Any], rendered: RenderedRow | None = None) -> tuple[list[str], list[int]]:
        """(problems, tokens per video): the placeholders match the videos and render, each video exists and its
        sampled frames decode, there are enough of them for a temporal patch, and the tokens each expands to (counted
        from its frame count and size). Every video is decoded (its sampled frames only) so a corrupt one fails here."""
        collator = self.collator
        values = row_videos(row)
        placeholders = count_video_placeholders(row["messages"])
        if not values and not placeholders:
            return [], []
        if getattr(collator, "video_token", None) is None:
            return [f"{collator.family.display_name} is not trained on videos by vlsft; remove the row's videos"], []
        problems, tokens = [], []
        if placeholders != len(values):
            problems.append(f"{placeholders} video placeholder(s) but {len(values)} video(s)")
        elif rendered is not None and rendered.input_ids.count(collator.video_token_id) != placeholders:
            problems.append(
                f"the chat template renders {rendered.input_ids.count(collator.video_token_id)} of {placeholders} "
                "video placeholder(s); put videos in user or tool messages"
            )
        for number, value in enumerate(values):
            try:
                video = collator.load_videos([value])[0]
                frames, height, width = video.frames.shape[:3]
                tokens.append(len(collator.video_token_ids(frames, height, width, video.metadata)))
            except VideoLoadError as error:
                problems.append(f"video {number} {error}")
            except Exception as error:  # the video processor refuses the size (e.g. an extreme aspect ratio)
                problems.append(f"video {number} cannot be processed ({type(error).__name__}: {error})")
        return problems, tokens

    def _placeholder_rendering_problem(self, messages: list[dict], rendered: int, placeholders: int) -> str:
        if rendered > placeholders:
            token = self.collator.processor.tokenizer.convert_ids_to_tokens(self.collator.image_token_id)
            return (
                f"the text spells out the image token {token} {rendered - placeholders} time(s) beyond the "
                f"{placeholders} image placeholder(s); use {{'type': 'image'}} items for images"
            )
        dropped = [
            f"message {i} ({message.get('role')})"
            for i, message in enumerate(messages)
            if message.get("role") not in IMAGE_ROLES
            and isinstance(message.get("content"), list)
            and any(isinstance(item, dict) and is_image_item(item) for item in message["content"])
        ]
        where = f"; images in {', '.join(dropped)} are dropped" if dropped else ""
        return (
            f"the chat template renders {rendered} of {placeholders} image placeholder(s){where}; "
            "put images in user or tool messages"
        )

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
        supervised_positions = [p for p in (batch["labels"][0, :length] != -100).nonzero().flatten().tolist() if p > 0]
        end_positions = [p for p in supervised_positions if int(ids[p]) == self.end_of_turn_id]
        image_tokens = []  # the length of each run of consecutive image tokens
        for previous, position in zip([None] + image_positions, image_positions):
            if previous is not None and position == previous + 1:
                image_tokens[-1] += 1
            else:
                image_tokens.append(1)
        return self._length_verdict(length, image_end, supervised_positions, image_tokens, end_positions)

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


# -- checking datasets ---------------------------------------------------------------------------------------------


def validation_fingerprint(dataset: Dataset, collator: VisionChatCollator, allow_truncated_end_of_turn: bool = False) -> str:
    """A fingerprint of everything a row's verdict depends on: the dataset's content, the image files it names (size
    and modification time of each), the collator's settings, the tokenizer, the image processor, this check's code
    and the versions of the libraries that decode and tokenize. Built from plain values so that it is the same in every
    process (hashing the collator object itself would pickle the whole processor)."""
    import PIL
    import tokenizers
    import transformers

    tokenizer = collator.processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tokenizer_state = backend.to_str() if backend is not None else Hasher.hash(tokenizer)
    image_processor = collator.processor.image_processor
    sources = [Path(importlib.import_module(name).__file__).read_bytes() for name in _VERDICT_MODULES]
    return Hasher.hash(
        [
            "vlsft-validate-rows",
            dataset._fingerprint,
            image_file_stats(dataset, collator.image_root),
            collator.chat_template,
            collator.max_length,
            collator.image_root,
            collator.assistant_only_loss,
            getattr(collator, "template_kwargs", None),
            [getattr(collator, key, None) for key in ("train_on_turns", "train_on_eos", "reasoning_weight")],
            [getattr(collator, name, None) for name in ("video_root", "video_fps", "video_min_frames",
                                                         "video_max_frames", "video_max_pixels")],
            collator.escape_control_tokens,
            allow_truncated_end_of_turn,
            type(collator).__qualname__,
            tokenizer_state,
            image_processor.to_json_string() if hasattr(image_processor, "to_json_string") else repr(image_processor),
            sources,
            [PIL.__version__, transformers.__version__, tokenizers.__version__, torch.__version__],
        ]
    )


def image_file_stats(dataset: Dataset, image_root: str | None) -> list[tuple[str, Any]]:
    """(path, (size, mtime_ns, mode)) of every image file the dataset's `images` / `image` columns name by path: a
    file emptied, replaced or deleted since a validated run changes the fingerprint, so its rows are checked again.
    (Images stored as bytes are part of the dataset's own fingerprint; only the path column is read, not the bytes.)"""
    stats = []
    for column in ("images", "image"):
        if column in dataset.column_names:
            for path in _image_paths(dataset.data.column(column)):
                resolved = os.path.join(image_root, path) if image_root and not os.path.isabs(path) else path
                try:
                    info = os.stat(resolved)
                    stats.append((resolved, (info.st_size, info.st_mtime_ns, info.st_mode)))
                except OSError as error:
                    stats.append((resolved, type(error).__name__))
    return stats


def _image_paths(column) -> list[str]:
    """The file paths in an Arrow image column (paths, `{bytes, path}` structs, or lists of either), leaving out
    images stored as bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    if pa.types.is_struct(values.type):
        names = [values.type.field(i).name for i in range(values.type.num_fields)]
        if "path" not in names:
            return []
        paths = values.field("path")
        if "bytes" in names:
            paths = pc.filter(paths, pc.is_null(values.field("bytes")))
        values = paths
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return []
    return [path for path in values.to_pylist() if path]


def validate_rows(
    dataset: Dataset | list[dict[str, Any]],
    collator: VisionChatCollator,
    *,
    name: str | None = None,
    num_proc: int | None = None,
    batch_size: int = 256,
    allow_truncated_end_of_turn: bool = False,
) -> ValidationResult:
    """Check every row of `dataset` as `collator` would train on it. `name` is None for a train dataset, else the
    eval dataset's name (it only labels the problems). Returns every problem and what truncation cuts; raises
    nothing."""
    if isinstance(dataset, Dataset) and "messages" not in dataset.column_names:
        where = "the train dataset" if name is None else f"eval dataset '{name}'"
        raise ValueError(missing_messages_message(dataset.column_names, dataset[0] if len(dataset) else None, where))
    if isinstance(dataset, Dataset):
        checker = RowChecker(collator, dataset.features, allow_truncated_end_of_turn=allow_truncated_end_of_turn)
        label = "train" if name is None else f"eval '{name}'"
        verdicts = dataset.with_format("arrow").map(
            checker.map_batch,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > batch_size else None,
            remove_columns=dataset.column_names,
            new_fingerprint=validation_fingerprint(dataset, collator, allow_truncated_end_of_turn),
            desc=f"vlsft: validating {label} rows",
        )
        table = verdicts.with_format("arrow")[:]
        reasons = table.column("reason").to_pylist()
        lengths = table.column("num_tokens").to_pylist()
        removed = table.column("num_supervised_removed").to_pylist()
    else:
        checker = RowChecker(collator, allow_truncated_end_of_turn=allow_truncated_end_of_turn)
        reasons, lengths, removed = [], [], []
        for start in range(0, len(dataset), batch_size):
            for verdict in checker.check(list(dataset[start : start + batch_size])):
                reasons.append(verdict.reason)
                lengths.append(verdict.num_tokens)
                removed.append(verdict.num_supervised_removed)
    problems = [RowProblem(name, index, reason) for index, reason in enumerate(reasons) if reason]
    max_length = collator.max_length
    truncated = sum(1 for length in lengths if max_length is not None and length > max_length)
    return ValidationResult(len(reasons), problems, truncated, sum(removed))


def validate_datasets(train_dataset, eval_dataset, collator: VisionChatCollator, args, kept_indices: dict | None = None):
    """The trainer's check before training: validate the train dataset and every eval dataset, then raise
    `InvalidRowsError` naming the bad rows (`args.invalid_rows == "raise"`) or drop them and log how many and why
    (`"skip"`). Returns `(train_dataset, eval_dataset)`, filtered in skip mode. A `kept_indices` dict receives, for
    each filtered dataset (None for train, else the eval name), the original index of each row kept."""
    if not getattr(args, "validate_rows", True):
        return train_dataset, eval_dataset
    named = {None: train_dataset} if train_dataset is not None else {}
    if isinstance(eval_dataset, dict):
        named.update(eval_dataset)
    elif eval_dataset is not None:
        named["eval"] = eval_dataset

    results: dict[str | None, ValidationResult] = {}
    allow_cut = getattr(args, "allow_truncated_end_of_turn", False)
    with args.main_process_first(desc="vlsft row validation"):
        for name, dataset in named.items():
            label = "train dataset" if name is None else f"eval dataset '{name}'"
            if isinstance(dataset, IterableDataset):
                logger.warning(
                    f"The {label} is an IterableDataset, whose rows cannot be checked before training: a bad row "
                    "will fail in the middle of training. Load it as a `datasets.Dataset` to have it validated."
                )
                continue
            if not isinstance(dataset, Dataset):
                logger.warning(f"The {label} is a {type(dataset).__name__}, not a `datasets.Dataset`; not validated.")
                continue
            results[name] = result = validate_rows(
                dataset, collator, name=name, num_proc=args.dataset_num_proc, allow_truncated_end_of_turn=allow_cut
            )
            if result.truncated_rows:
                logger.warning(truncation_summary(label, result, collator.max_length))

    problems = [problem for result in results.values() for problem in result.problems]
    if not problems:
        return train_dataset, eval_dataset
    checked = {("train" if name is None else f"eval '{name}'"): result.num_rows for name, result in results.items()}
    if args.invalid_rows != "skip":
        raise InvalidRowsError(problems, checked)

    filtered = {}
    for name, result in results.items():
        if not result.problems:
            continue
        label = "train" if name is None else f"eval '{name}'"
        if len(result.problems) == result.num_rows:
            raise InvalidRowsError(result.problems, {label: result.num_rows})
        bad = set(result.bad_indices)
        kept = [i for i in range(result.num_rows) if i not in bad]
        filtered[name] = named[name].select(kept)
        if kept_indices is not None:
            kept_indices[name] = kept
        logger.warning(_skip_summary(label, result))
    train_dataset = filtered.get(None, train_dataset)
    if isinstance(eval_dataset, dict):
        eval_dataset = {name: filtered.get(name, dataset) for name, dataset in eval_dataset.items()}
    elif eval_dataset is not None:
        eval_dataset = filtered.get("eval", eval_dataset)
    return train_dataset, eval_dataset


def truncation_summary(label: str, result: ValidationResult, max_length: int | None) -> str:
    return (
        f"max_length={max_length} truncates {result.truncated_rows} of {result.num_rows} {label} rows, removing "
        f"{result.supervised_tokens_removed} supervised token(s). Raise `max_length` to train on them whole."
    )


def _skip_summary(label: str, result: ValidationResult) -> str:
    kinds = Counter(_reason_kind(problem.reason) for problem in result.problems)
    listed = "\n".join(f"  {problem}" for problem in result.problems[:MAX_LISTED_ROWS])
    rest = len(result.problems) - MAX_LISTED_ROWS
    if rest > 0:
        listed += f"\n  ... and {rest} more"
    by_kind = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    return (
        f"invalid_rows='skip': dropped {len(result.problems)} of {result.num_rows} {label} rows ({by_kind}), "
        f"training on the other {result.num_rows - len(result.problems)}:\n{listed}"
    )


def _reason_kind(reason: str) -> str:
    """A short category of a reason, for the skip summary."""
    for marker, kind in (
        ("video placeholder(s) but", "video/placeholder mismatch"),
        ("video placeholder(s)", "unrendered video"),
        ("frame(s) sampled", "too few video frames"),
        ("video ", "bad video"),
        (" not found: ", "missing image"),
        ("cannot be decoded", "corrupt image"),
        ("cannot be processed", "unusable image"),
        ("image placeholder(s) but", "image/placeholder mismatch"),
        ("renders", "unrendered image"),
        ("spells out the image token", "literal image token"),
        ("no assistant turn", "no assistant turn"),
        ("no trained assistant turn", "no trained assistant turn"),
        ("only assistant turns are trained", "weight on a non-assistant message"),
        (" has weight ", "bad turn weight"),
        (" has train ", "bad turn weight"),
        ("cuts image tokens", "image tokens truncated"),
        ("cuts the final end-of-turn", "end-of-turn truncated"),
        ("contains the control token", "control token in text"),
        ("no preceding tool call", "orphan tool message"),
        ("`arguments`", "malformed tool call"),
        ("is a remote image", "remote image"),
        ("conversations", "unmapped ShareGPT/LLaVA turn"),
        ("`images` must be a list", "images not a list"),
        ("supervised token", "no supervised token"),
    ):
        if marker in reason:
            return kind
    return "malformed messages"

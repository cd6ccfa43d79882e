"""A row rendered with the training template and tokenized, with its assistant tokens marked.

The template is rendered once per row; jinja reports the character span of every `{% generation %}` block. The text
is cut at those spans (and, with `escape_control_tokens`, around each control token written in a message) and every
piece of the batch is tokenized in one batched call. A mixin of `vlsft.collator.VisionChatCollator`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from transformers.utils.chat_template_utils import render_jinja_template

from vlsft.collation.borrowed_records import refuse_borrowed_videos
from vlsft.collation.reasoning import (
    REASONING_FIELDS,
    ReasoningError,
    content_text,
    dropped_reasoning_fixes,
    dropped_reasoning_problems,
    has_reasoning_field,
    is_one_leading_block,
    reasoning_field_problems,
)
from vlsft.collation.template_clock import refuse_clock_reading, without_clock
from vlsft.collation.template_kwargs import row_template_kwargs
from vlsft.data.rows import normalize_messages, row_images
from vlsft.families import FAMILIES
from vlsft.generic_family import added_tokens
from vlsft.generic_masks import (
    as_content_items,
    assistant_spans,
    refuse_content_as_python_text,
    refuse_dropped_tool_calls,
    refuse_uncollated_media,
    stop_token_after_turns,
    has_text_only_items,
    strings_where_the_template_reads_strings,
)
from vlsft.templates import check_expressible, check_media, split_inline_reasoning

# Stands in for an escaped control token in message text while the row is rendered (private-use characters, which no
# tokenizer vocabulary gives a meaning): `\ue000<k>\ue001` is the k-th escaped token of the row.
_ESCAPE_MARK = re.compile("\ue000(\\d+)\ue001")
# Tokenized in front of a piece that continues the text before it, then dropped, for tokenizers that start every
# string with a word-boundary marker (SentencePiece's `▁`): a private-use character, which such tokenizers spell in
# byte tokens that merge with nothing.
CONTINUATION_ANCHOR = "\ue000"


class Continuation(str):
    """A piece of text that continues the previous piece without a word boundary (an escaped control token cut out of
    a message): tokenized without the boundary marker some tokenizers put at the start of every string."""


class RowError(ValueError):
    """A row of a batch cannot be collated; `index` is its position in the batch."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"batch row {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass
class RenderedRow:
    """One conversation rendered and tokenized, before its images are expanded (one placeholder token per image)."""

    input_ids: list[int]
    supervised: list[bool]  # inside an assistant turn
    images: list[Any]
    weights: list[float] | None = None  # per token (0 outside trained turns); None when every turn token weighs 1

    @property
    def trained(self) -> list[bool]:
        """The tokens the loss sees: inside an assistant turn, with a weight > 0."""
        if self.weights is None:
            return self.supervised
        return [s and w > 0 for s, w in zip(self.supervised, self.weights)]


class RowRendering:
    """How `VisionChatCollator` renders and tokenizes a row."""

    def _init_rendering(self) -> None:
        """The control tokens, the ids the tokenizer adds on encode, and how a continuing piece is tokenized."""
        tokenizer = self.processor.tokenizer
        self._bos_added, self._eos_added = self._tokens_added_on_encode()
        # Every added token: the tokenizer cuts these out of any text before its vocabulary sees it, so their text in a
        # message becomes the control token itself (a `<|im_end|>` in an answer would end the turn there).
        self.control_tokens = added_tokens(tokenizer)
        self._control_pattern = re.compile("|".join(map(re.escape, self.control_tokens))) if self.control_tokens else None
        # Control tokens the template itself parses out of an assistant message (a thinking template's
        # `content.split('</think>')`), and the family's reasoning markers, which an assistant message may carry inline
        # (`<think>...</think>`, what the model generates): there, as one block at the start of the content of a
        # message without a reasoning field (`structure_tokens`), they are the data's structure, not text, and are
        # neither refused nor escaped.
        reasoning_markers = set(self.family.reasoning_markers or ())
        self.template_parsed_tokens = frozenset(
            token
            for token in self.control_tokens
            if token in reasoning_markers
            or re.search(r"(split|replace)\(\s*['\"]" + re.escape(token), self.chat_template)
            or re.search(r"['\"]" + re.escape(token) + r"['\"]\s+(not\s+)?in\s", self.chat_template)
        )
        # A template that writes no end-of-turn marker (GLM): the token that stops its turns (`vlsft.generic_masks`).
        self._stop_token_after_turns = (
            stop_token_after_turns(self.render_stock, self.control_tokens) if self.generic_masks else None
        )
        first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"][:1])
        self._marks_string_start = bool(first) and first[0][:1] in ("▁", "Ġ")
        self._anchor_ids = tokenizer(CONTINUATION_ANCHOR, add_special_tokens=False)["input_ids"]

    def control_tokens_in(self, text: str, kept: frozenset[str] = frozenset()) -> list[str]:
        """The control tokens that `text` spells out, in order of appearance, each once, but those `kept` (the
        structure of the text: `structure_tokens`)."""
        if self._control_pattern is None or not isinstance(text, str):
            return []
        found = dict.fromkeys(self._control_pattern.findall(text))
        return [token for token in found if token not in kept]

    def structure_tokens(self, message: dict[str, Any]) -> frozenset[str]:
        """The control tokens the content of `message` carries as the data's structure: in an assistant message
        without a reasoning field, the tokens the template parses (`template_parsed_tokens`) when they form one
        reasoning block at the start of the content. Anywhere else (a reasoning field, the content next to one, a
        second block, a block after the answer) they are text that the tokenizer would make control tokens of."""
        if message.get("role") != "assistant" or not self.template_parsed_tokens or has_reasoning_field(message):
            return frozenset()
        if not is_one_leading_block(content_text(message), self.template_parsed_tokens, self.family.reasoning_markers):
            return frozenset()
        return self.template_parsed_tokens

    def _tokens_added_on_encode(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer adds around a text when asked for special tokens (LLaVA-NeXT's `<s>`). The processor
        adds them when the rendered text does not already start with the BOS token; so does this collator."""
        tokenizer = self.processor.tokenizer
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    def render(self, row: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text of a row and the character spans of its assistant generation blocks."""
        if not self.escape_control_tokens:
            return self._render_marked(row)[:2]
        text, spans = "", []
        for piece, supervised in self.pieces(row):
            if supervised:
                spans.append((len(text), len(text) + len(piece)))
            text += piece
        return text, spans

    def render_prompt(self, row: dict[str, Any], messages: list[dict[str, Any]]) -> str:
        """The text a model is prompted with to generate the assistant turn that follows `messages` (the leading
        messages of `row`): rendered as in training (this template, the recipe's and the row's template variables)
        and ending with the generation prompt."""
        text, _, escaped = self._render_marked({**row, "messages": messages}, add_generation_prompt=True)
        return "".join(piece for piece, _ in self._unmark([(text, False)], escaped)) if escaped else text

    def _render_marked(
        self, row: dict[str, Any], add_generation_prompt: bool = False
    ) -> tuple[str, list[tuple[int, int]], list[str]]:
        """(text, generation spans, escaped control tokens): with `escape_control_tokens`, each control token in the
        message text is rendered as a mark (`_ESCAPE_MARK`) that `pieces` turns back into plain text. Raises
        `ReasoningError` where the row's reasoning would not be trained as written (`vlsft.collation.reasoning`)."""
        messages = normalize_messages(row["messages"])
        problems = reasoning_field_problems(messages)
        if problems:
            raise ReasoningError("; ".join(problems))
        escaped: list[str] = []
        if self.escape_control_tokens and self._control_pattern is not None:
            messages = [self._mark_control_tokens(message, escaped) for message in messages]
        tools = row.get("tools") or None
        if self.template_family is not None:
            check_expressible(self.template_family, messages, tools)
            check_media(self.template_family, row, messages)
            if self.borrowed_video_refusal is not None:  # a record borrowed by a processor expanding videos otherwise
                refuse_borrowed_videos(self.borrowed_video_refusal, row, messages)
            spec = FAMILIES[self.template_family]
            if spec.reasoning_opening is not None:
                messages = split_inline_reasoning(messages, spec.reasoning_opening, spec.reasoning_markers[1])
        template_kwargs = row_template_kwargs(self.template_kwargs, row, self.boolean_switches)
        if self.generic_family:  # a family without a record renders videos and audio vlsft does not collate
            refuse_uncollated_media(self.family, row, messages)
        if self.generic_family or self.generic_masks:  # a stock template gets the content as TRL's data path gives it
            messages = as_content_items(messages)
        # Text-only content a template reads as a string (it would write the list's Python text: Gemma 4 v2/v3's
        # system prompt, GLM-4.5's tool responses) is given as that string, as at inference.
        if any(has_text_only_items(message) for message in messages):  # else nothing to give as a string
            rendered = self.render_stock(messages, add_generation_prompt, tools, template_kwargs)
            messages = strings_where_the_template_reads_strings(rendered, messages)
        if self.generic_masks and not add_generation_prompt:
            render = partial(self.render_stock, tools=tools, kwargs=template_kwargs)  # (messages, add_generation_prompt)
            text, spans = assistant_spans(
                render, messages, self.control_tokens, self._stop_token_after_turns,
                eos_token=self.processor.tokenizer.eos_token,  # the stop of a template with no control token between turns
            )
            refuse_content_as_python_text(text, messages)
            refuse_dropped_tool_calls(render, messages)
        elif self.generic_masks:
            text, spans = self.render_stock(messages, True, tools, template_kwargs), []
        else:
            rendered, marked = render_jinja_template(
                [messages],
                tools=tools,
                chat_template=without_clock(self.chat_template),
                return_assistant_tokens_mask=self.assistant_only_loss,
                add_generation_prompt=add_generation_prompt,
                **self._template_kwargs,
                **template_kwargs,
            )
            text, spans = rendered[0], [tuple(span) for span in marked[0]] if self.assistant_only_loss else []
        refuse_clock_reading(text, self.chat_template)  # a row must render the same on every day
        if not add_generation_prompt:
            problems = dropped_reasoning_problems(messages, text, spans, self.family)
            if problems:
                fixes = dropped_reasoning_fixes(self.family, self._keep_renders_reasoning(row, template_kwargs))
                raise ReasoningError(f"{'; '.join(problems)}: {fixes}")
        return text, spans, escaped

    def _keep_renders_reasoning(self, row: dict[str, Any], template_kwargs: dict[str, Any]) -> bool:
        """Whether `reasoning_history: keep` would render the reasoning this row's template drops (a vlsft training
        template reads it)."""
        if "reasoning_history" not in self.chat_template or template_kwargs.get("reasoning_history") == "keep":
            return False
        own = {**(row.get("chat_template_kwargs") or {}), "reasoning_history": "keep"}
        try:
            self._render_marked({**row, "chat_template_kwargs": own})
        except ReasoningError:
            return False
        return True

    def render_stock(
        self, messages: list[dict], add_generation_prompt: bool, tools: list | None = None, kwargs: dict | None = None
    ) -> str:
        """`messages` rendered with the chat template as `processor.apply_chat_template` renders them."""
        rendered, _ = render_jinja_template(
            [messages],
            tools=tools,
            chat_template=without_clock(self.chat_template),
            add_generation_prompt=add_generation_prompt,
            **self._template_kwargs,
            **((self.template_kwargs or {}) if kwargs is None else kwargs),
        )
        return rendered[0]

    def _mark_control_tokens(self, message: dict[str, Any], escaped: list[str]) -> dict[str, Any]:
        structure = self.structure_tokens(message)

        def mark(text: str, kept: frozenset[str]) -> str:
            def replace(match: re.Match) -> str:
                if match.group(0) in kept:
                    return match.group(0)
                escaped.append(match.group(0))
                return f"\ue000{len(escaped) - 1}\ue001"

            return self._control_pattern.sub(replace, text)

        message = dict(message)
        for key in ("content", *REASONING_FIELDS):
            kept = structure if key == "content" else frozenset()  # a reasoning field's markers are always text
            value = message.get(key)
            if isinstance(value, str):
                message[key] = mark(value, kept)
            elif isinstance(value, list):
                message[key] = [
                    {**item, "text": mark(item["text"], kept)} if item.get("type") == "text" and isinstance(item.get("text"), str) else item
                    for item in value
                ]
        return message

    def pieces(self, row: dict[str, Any]) -> list[tuple[str, bool]]:
        """The rendered row cut into (text, supervised) pieces at the generation-block boundaries (and, with
        `escape_control_tokens`, around each escaped control token)."""
        return self.weighted_pieces(row)[0]

    def weighted_pieces(self, row: dict[str, Any]) -> tuple[list[tuple[str, bool]], list[float] | None]:
        """`pieces(row)` and the weight of each supervised turn (one per non-empty assistant turn), or None when
        every token of every turn weighs 1 (then nothing per token is computed: today's fast path)."""
        text, spans, escaped = self._render_marked(row)
        weights = self._turn_weights(row, spans)
        pieces, cursor = [], 0

        def piece(start: int, end: int) -> str:
            # A cut inside a word (ViP-LLaVA's `Red.###Human:`): what follows continues it, without the word-boundary
            # marker a tokenizer puts at the start of a string.
            inside_word = 0 < start and not text[start - 1].isspace() and not text[start].isspace()
            return Continuation(text[start:end]) if inside_word else text[start:end]

        for start, end in spans:
            if end == start:
                continue  # an empty block (a context turn's): cutting there would change how its text tokenizes
            if start > cursor:
                pieces.append((piece(cursor, start), False))
            pieces.append((piece(start, end), True))
            cursor = end
        if cursor < len(text):
            pieces.append((piece(cursor, len(text)), False))
        return (self._unmark(pieces, escaped) if escaped else pieces), weights

    @staticmethod
    def _unmark(pieces: list[tuple[str, bool]], escaped: list[str]) -> list[tuple[str, bool]]:
        """Each escaped control token back as text, cut after its first character and tokenized apart from its
        neighbours, so that no tokenizer matches it as the control token (`<|im_end|>` -> `<` + `|im_end|>`). What
        follows a cut continues the text (`Continuation`)."""
        out = []
        for text, supervised in pieces:
            sub_pieces = []
            for position, part in enumerate(_ESCAPE_MARK.split(text)):  # text, index, text, index, ..., text
                sub_pieces += [part] if position % 2 == 0 else [escaped[int(part)][:1], escaped[int(part)][1:]]
            sub_pieces = [part for part in sub_pieces if part]
            continues = isinstance(text, Continuation)  # the piece itself may continue the one before it
            out += [
                (Continuation(part) if i or continues else part, supervised) for i, part in enumerate(sub_pieces)
            ]
        return out

    def tokenize_rows(self, rows: list[dict[str, Any]]) -> list[RenderedRow]:
        """Render and tokenize rows, with all pieces of all rows in one batched tokenizer call. Images stay one
        placeholder token each."""
        weighted = [self.weighted_pieces(row) for row in rows]
        rendered = self._tokenize_pieces([pieces for pieces, _ in weighted], [row_images(row) for row in rows])
        for row, (_, weights) in zip(rendered, weighted):
            if weights is not None:
                ids, in_turn = torch.tensor(row.input_ids), torch.tensor(row.supervised, dtype=torch.bool)
                row.weights = self.token_weights(ids, in_turn, weights).tolist()
        return rendered

    def _tokenize_pieces(self, row_pieces: list[list[tuple[str, bool]]], images: list[list[Any]]) -> list[RenderedRow]:
        flat = [text for pieces in row_pieces for text, _ in pieces]
        anchored = self._marks_string_start and any(isinstance(text, Continuation) for text in flat)
        if anchored:
            flat = [CONTINUATION_ANCHOR + text if isinstance(text, Continuation) else text for text in flat]
        encoded = self.processor.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        if anchored:
            n = len(self._anchor_ids)
            encoded = [
                ids[n:] if text.startswith(CONTINUATION_ANCHOR) and ids[:n] == self._anchor_ids else ids
                for text, ids in zip(flat, encoded)
            ]
        bos_token = self.processor.tokenizer.bos_token
        out, position = [], 0
        for pieces, row_images_ in zip(row_pieces, images):
            ids, supervised = [], []
            for _, is_supervised in pieces:
                piece_ids = encoded[position]
                position += 1
                ids.extend(piece_ids)
                supervised.extend([is_supervised or not self.assistant_only_loss] * len(piece_ids))
            if self._bos_added or self._eos_added:
                text_has_bos = bool(pieces) and bos_token is not None and pieces[0][0].startswith(bos_token)
                if not text_has_bos:
                    lm = not self.assistant_only_loss  # plain language modelling supervises every token
                    ids = self._bos_added + ids + self._eos_added
                    supervised = [lm] * len(self._bos_added) + supervised + [lm] * len(self._eos_added)
            out.append(RenderedRow(ids, supervised, row_images_))
        return out

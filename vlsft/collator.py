"""The collator: renders each conversation once, tokenizes it, and marks exactly the assistant tokens.

How the mask stays exact and cheap:
1. The generation-marked template is rendered once per row; jinja reports the character span of every
   `{% generation %}` block.
2. The rendered text is cut at those spans and every piece of the batch is tokenized in one batched call. Cutting
   there is also what inference does: the prompt ends with the assistant cue (`<|im_start|>assistant\\n`,
   `Assistant:`, `[/INST]`) and the model's tokens start fresh after it, so a supervised piece decodes to exactly the
   text its turn rendered.
3. Image placeholders are expanded the way the family's processor expands them, with the processor's own
   `replace_image_token` text for each image:
   - where that text is n copies of the placeholder token (Qwen's `<|image_pad|>`, LLaVA-NeXT's `<image>`), on token
     ids: the tokenizer never sees thousands of pad tokens;
   - otherwise (Gemma 3's `\\n\\n<start_of_image>...<end_of_image>\\n\\n`, Idefics3's tiles and row/column tags), as
     text in the pieces before they are tokenized, so newlines merge with their neighbours exactly as the processor
     tokenizes them.
No offset mapping and no second tokenization are needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from vlsft.data import ImagesNotAListError, load_image, normalize_messages, row_images
from vlsft.templates import (
    FAMILIES,
    UnsupportedConversationError,
    check_expressible,
    detect_family,
    family_of_processor,
    resolve_training_template,
)

IGNORE_INDEX = -100
# Stands in for an escaped control token in message text while the row is rendered (private-use characters, which no
# tokenizer vocabulary gives a meaning): `\ue000<k>\ue001` is the k-th escaped token of the row.
_ESCAPE_MARK = re.compile("\ue000(\\d+)\ue001")
# Tokenized in front of a piece that continues the text before it, then dropped, for tokenizers that start every
# string with a word-boundary marker (SentencePiece's `▁`): a private-use character, which such tokenizers spell in
# byte tokens that merge with nothing.
_CONTINUATION_ANCHOR = "\ue000"


class _Continuation(str):
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
    supervised: list[bool]
    images: list[Any]


@dataclass
class VisionChatCollator:
    """Collates conversational vision rows into `input_ids`, `attention_mask`, `labels` (-100 where not supervised)
    and whatever the model's processor returns for them (`pixel_values`, `image_grid_thw`, `image_sizes`,
    `pixel_attention_mask`, the image-token map...).

    Args:
        processor: the model's processor (tokenizer + image processor), of a family in `vlsft.templates.FAMILIES`.
        chat_template: a template with `{% generation %}` markers (see `vlsft.templates`).
        max_length: truncate longer rows (from the end); a row whose truncation would cut image tokens raises.
        image_root: directory for relative image paths.
        assistant_only_loss: if False, every non-padding token is supervised (plain language modelling).
        escape_control_tokens: tokenize control-token text inside messages (`<|im_end|>` written in an answer) as
            plain text instead of as the control token (validation otherwise refuses such rows).
    """

    processor: ProcessorMixin
    chat_template: str
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    image_root: str | None = None
    assistant_only_loss: bool = True
    escape_control_tokens: bool = False
    _vision_token_ids: set[int] = field(init=False, repr=False)

    def __post_init__(self):
        tokenizer = self.processor.tokenizer
        # The template says which family's features to check (a custom template is its author's call); the template
        # or else the processor says how to expand images.
        self.template_family = detect_family(self.chat_template)
        name = self.template_family or family_of_processor(self.processor)
        if name is None:
            known = ", ".join(f"{f.processor_class} ({f.name})" for f in FAMILIES.values())
            raise ValueError(
                f"vlsft does not know the processor {type(self.processor).__name__}: it collates the families in "
                f"`vlsft.templates.FAMILIES`, whose processors are {known}. A new family is a training template, "
                "an entry in that table and a test."
            )
        self.family = FAMILIES[name]
        self.image_token = self.family.image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)  # the placeholder, one per image
        # (A checkpoint may lack some of the family's vision tokens, e.g. fewer tile tags: those map to nothing.)
        vision_ids = tokenizer.convert_tokens_to_ids(list(self.family.vision_tokens))
        self._vision_token_ids = {i for i in vision_ids if i not in (None, tokenizer.unk_token_id)}
        # The tokens the model replaces with image features (Gemma 3: the soft tokens, not the placeholder).
        self.image_feature_token_ids = [i for i in self.processor.image_token_ids if i is not None]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.merge_length = getattr(self.processor.image_processor, "merge_size", 1) ** 2
        # Templates read special tokens (Gemma 3 starts with `{{ bos_token }}`), as in `processor.apply_chat_template`;
        # only those a template names are passed, as every variable passed costs time on every render.
        self._template_kwargs = {k: v for k, v in tokenizer.special_tokens_map.items() if k in self.chat_template}
        self._bos_added, self._eos_added = self._tokens_added_on_encode()
        # The processor's own image defaults (LLaVA-NeXT pads tiles, Idefics3 returns the tile grid, ...).
        merged = self.processor._merge_kwargs(tokenizer_init_kwargs=tokenizer.init_kwargs)
        self._images_kwargs = {**merged["images_kwargs"], "return_tensors": "pt"}
        self._model_input_names = set(self.processor.model_input_names)
        # Every added token: the tokenizer cuts these out of any text before its vocabulary sees it, so their text in a
        # message becomes the control token itself (a `<|im_end|>` in an answer would end the turn there).
        self.control_tokens = tuple(
            sorted({token.content for token in tokenizer.added_tokens_decoder.values() if token.content}, key=len, reverse=True)
        )
        self._control_pattern = re.compile("|".join(map(re.escape, self.control_tokens))) if self.control_tokens else None
        # Control tokens the template itself parses out of an assistant message (a thinking template's
        # `content.split('</think>')`): there they are the data's structure, not text, and are neither refused nor
        # escaped.
        self.template_parsed_tokens = frozenset(
            token
            for token in self.control_tokens
            if re.search(r"(split|replace)\(\s*['\"]" + re.escape(token), self.chat_template)
            or re.search(r"['\"]" + re.escape(token) + r"['\"]\s+(not\s+)?in\s", self.chat_template)
        )
        first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"][:1])
        self._marks_string_start = bool(first) and first[0][:1] in ("▁", "Ġ")
        self._anchor_ids = tokenizer(_CONTINUATION_ANCHOR, add_special_tokens=False)["input_ids"]

    def control_tokens_in(self, text: str, role: str | None = None) -> list[str]:
        """The control tokens that `text` (of a `role` message) spells out, in order of appearance, each once; in an
        assistant message, not those the template parses (`template_parsed_tokens`)."""
        if self._control_pattern is None or not isinstance(text, str):
            return []
        found = dict.fromkeys(self._control_pattern.findall(text))
        return [token for token in found if not (role == "assistant" and token in self.template_parsed_tokens)]

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

    # -- rendering ---------------------------------------------------------------------------------------------

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

    def _render_marked(self, row: dict[str, Any]) -> tuple[str, list[tuple[int, int]], list[str]]:
        """(text, generation spans, escaped control tokens): with `escape_control_tokens`, each control token in the
        message text is rendered as a mark (`_ESCAPE_MARK`) that `pieces` turns back into plain text."""
        messages = normalize_messages(row["messages"])
        escaped: list[str] = []
        if self.escape_control_tokens and self._control_pattern is not None:
            messages = [self._mark_control_tokens(message, escaped) for message in messages]
        tools = row.get("tools") or None
        if self.template_family is not None:
            check_expressible(self.template_family, messages, tools)
        rendered, spans = render_jinja_template(
            [messages],
            tools=tools,
            chat_template=self.chat_template,
            return_assistant_tokens_mask=self.assistant_only_loss,
            **self._template_kwargs,
        )
        return rendered[0], [tuple(span) for span in spans[0]] if self.assistant_only_loss else [], escaped

    def _mark_control_tokens(self, message: dict[str, Any], escaped: list[str]) -> dict[str, Any]:
        kept = self.template_parsed_tokens if message.get("role") == "assistant" else frozenset()

        def mark(text: str) -> str:
            def replace(match: re.Match) -> str:
                if match.group(0) in kept:
                    return match.group(0)
                escaped.append(match.group(0))
                return f"\ue000{len(escaped) - 1}\ue001"

            return self._control_pattern.sub(replace, text)

        message = dict(message)
        for key in ("content", "reasoning_content"):
            value = message.get(key)
            if isinstance(value, str):
                message[key] = mark(value)
            elif isinstance(value, list):
                message[key] = [
                    {**item, "text": mark(item["text"])} if item.get("type") == "text" and isinstance(item.get("text"), str) else item
                    for item in value
                ]
        return message

    def pieces(self, row: dict[str, Any]) -> list[tuple[str, bool]]:
        """The rendered row cut into (text, supervised) pieces at the generation-block boundaries (and, with
        `escape_control_tokens`, around each escaped control token)."""
        text, spans, escaped = self._render_marked(row)
        pieces, cursor = [], 0
        for start, end in spans:
            if start > cursor:
                pieces.append((text[cursor:start], False))
            if end > start:
                pieces.append((text[start:end], True))
            cursor = end
        if cursor < len(text):
            pieces.append((text[cursor:], False))
        return self._unmark(pieces, escaped) if escaped else pieces

    @staticmethod
    def _unmark(pieces: list[tuple[str, bool]], escaped: list[str]) -> list[tuple[str, bool]]:
        """Each escaped control token back as text, cut after its first character and tokenized apart from its
        neighbours, so that no tokenizer matches it as the control token (`<|im_end|>` -> `<` + `|im_end|>`). What
        follows a cut continues the text (`_Continuation`)."""
        out = []
        for text, supervised in pieces:
            sub_pieces = []
            for position, part in enumerate(_ESCAPE_MARK.split(text)):  # text, index, text, index, ..., text
                sub_pieces += [part] if position % 2 == 0 else [escaped[int(part)][:1], escaped[int(part)][1:]]
            sub_pieces = [part for part in sub_pieces if part]
            out += [(part if i == 0 else _Continuation(part), supervised) for i, part in enumerate(sub_pieces)]
        return out

    def tokenize_rows(self, rows: list[dict[str, Any]]) -> list[RenderedRow]:
        """Render and tokenize rows, with all pieces of all rows in one batched tokenizer call. Images stay one
        placeholder token each."""
        return self._tokenize_pieces([self.pieces(row) for row in rows], [row_images(row) for row in rows])

    def _tokenize_pieces(self, row_pieces: list[list[tuple[str, bool]]], images: list[list[Any]]) -> list[RenderedRow]:
        flat = [text for pieces in row_pieces for text, _ in pieces]
        anchored = self._marks_string_start and any(isinstance(text, _Continuation) for text in flat)
        if anchored:
            flat = [_CONTINUATION_ANCHOR + text if isinstance(text, _Continuation) else text for text in flat]
        encoded = self.processor.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        if anchored:
            n = len(self._anchor_ids)
            encoded = [
                ids[n:] if text.startswith(_CONTINUATION_ANCHOR) and ids[:n] == self._anchor_ids else ids
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

    # -- images ------------------------------------------------------------------------------------------------

    def _process_images(self, images: list[list[Any]]) -> dict[str, torch.Tensor]:
        """The image processor's output for the batch's images, grouped by row as the processor groups them, with
        the processor's own defaults."""
        if not any(images):
            return {}
        return self.processor.image_processor(images, **self._images_kwargs)

    def _image_texts(self, vision: dict[str, torch.Tensor], count: int) -> list[str]:
        """The text the processor puts in place of each image's placeholder (`ProcessorMixin.replace_image_token`)."""
        return [self.processor.replace_image_token(vision, image_idx=i) for i in range(count)]

    def _image_token_counts(self, vision: dict[str, torch.Tensor], count: int) -> list[int]:
        """For families that expand on ids: how many copies of the placeholder each image's text is."""
        if "image_grid_thw" in vision:
            # Qwen: one token per merged patch, as its `replace_image_token` computes, for the whole batch at once.
            return (vision["image_grid_thw"].prod(-1) // self.merge_length).tolist()
        texts = self._image_texts(vision, count)
        counts = [text.count(self.image_token) for text in texts]
        if any(n * len(self.image_token) != len(text) for n, text in zip(counts, texts)):
            raise ValueError(
                f"{self.family.name}: the processor's image text is not only copies of {self.image_token}; set "
                "`expand_on_ids=False` for this family in `vlsft.templates.FAMILIES`."
            )
        return counts

    def _expand_in_text(self, row_pieces, replacements: list[str]) -> list[list[tuple[str, bool]]]:
        """Each placeholder replaced by its image's text, in order, in whichever piece it lies."""
        queue = iter(replacements)
        expanded = []
        for pieces in row_pieces:
            row = []
            for text, supervised in pieces:
                parts = text.split(self.image_token)
                expanded_text = parts[0] + "".join(next(queue) + part for part in parts[1:])
                row.append((_Continuation(expanded_text) if isinstance(text, _Continuation) else expanded_text, supervised))
            expanded.append(row)
        return expanded

    def _expand_on_ids(self, row: RenderedRow, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(row.input_ids, dtype=torch.long)
        supervised = torch.tensor(row.supervised, dtype=torch.bool)
        is_image = ids == self.image_token_id
        if counts:
            repeats = torch.ones_like(ids)
            repeats[is_image] = torch.tensor(counts)
            ids, supervised = ids.repeat_interleave(repeats), supervised.repeat_interleave(repeats)
        return ids, supervised

    # -- collation ---------------------------------------------------------------------------------------------

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        row_pieces, images = [], []
        for index, row in enumerate(rows):
            try:
                pieces = self.pieces(row)
            except (UnsupportedConversationError, TemplateError) as error:  # the template cannot render this row
                raise RowError(index, str(error)) from error
            try:
                values = row_images(row)
            except ImagesNotAListError as error:
                raise RowError(index, str(error)) from error
            placeholders = sum(text.count(self.image_token) for text, _ in pieces)
            if placeholders != len(values):
                raise RowError(index, f"{placeholders} image placeholder(s) but {len(values)} image(s)")
            try:
                images.append([load_image(value, self.image_root) for value in values])
            except ValueError as error:
                raise RowError(index, str(error)) from error
            row_pieces.append(pieces)

        vision = self._process_images(images)
        num_images = sum(len(row) for row in images)
        sequences, masks = [], []
        if self.family.expand_on_ids:
            counts = self._image_token_counts(vision, num_images)
            cursor = 0
            for row in self._tokenize_pieces(row_pieces, images):
                n_images = len(row.images)
                ids, supervised = self._expand_on_ids(row, counts[cursor : cursor + n_images])
                cursor += n_images
                sequences.append(ids)
                masks.append(supervised)
        else:
            expanded = self._expand_in_text(row_pieces, self._image_texts(vision, num_images))
            for row in self._tokenize_pieces(expanded, images):
                sequences.append(torch.tensor(row.input_ids, dtype=torch.long))
                masks.append(torch.tensor(row.supervised, dtype=torch.bool))
        # What the model takes (not, e.g., Idefics3's tile grid, which only `replace_image_token` reads).
        batch = {key: value for key, value in vision.items() if key in self._model_input_names}

        vision_ids = torch.tensor(sorted(self._vision_token_ids))
        feature_ids = torch.tensor(self.image_feature_token_ids)
        for index, (ids, supervised) in enumerate(zip(sequences, masks)):
            if self.max_length is not None and len(ids) > self.max_length:
                if bool(torch.isin(ids[self.max_length :], feature_ids).any()):
                    raise RowError(index, f"max_length={self.max_length} cuts image tokens (row has {len(ids)} tokens)")
                ids, supervised = ids[: self.max_length], supervised[: self.max_length]
            # Vision tokens are inputs, never targets, whatever the template marked.
            sequences[index] = ids
            masks[index] = supervised & ~torch.isin(ids, vision_ids)

        length = max(len(ids) for ids in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, supervised) in enumerate(zip(sequences, masks)):
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
            labels[i, : len(ids)] = torch.where(supervised, ids, IGNORE_INDEX)
        batch["input_ids"] = input_ids
        batch["attention_mask"] = attention_mask
        if self.family.image_map_key is not None:
            # 1 on the image feature tokens: Qwen's 3D rope positions, Gemma 3's bidirectional attention per image.
            batch[self.family.image_map_key] = torch.isin(input_ids, feature_ids).long() * attention_mask
        batch["labels"] = labels
        return batch


def training_collator(processor: ProcessorMixin, args) -> VisionChatCollator:
    """The collator `VLSFTTrainer` trains with for `processor` and `args` (a `VLSFTConfig`): the training template
    (resolved from the processor's, or read from `args.chat_template_path`), `max_length`, `image_root`..."""
    template = processor.chat_template
    if args.chat_template_path is not None and args.chat_template_path.endswith((".jinja", ".j2")):
        with open(args.chat_template_path, encoding="utf-8") as file:
            template = file.read()
    if args.assistant_only_loss:
        template = resolve_training_template(template)
    return VisionChatCollator(
        processor=processor,
        chat_template=template,
        max_length=args.max_length,
        pad_to_multiple_of=args.pad_to_multiple_of,
        image_root=args.image_root,
        assistant_only_loss=args.assistant_only_loss,
        escape_control_tokens=getattr(args, "escape_control_tokens", False),
    )

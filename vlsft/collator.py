"""The collator: renders each conversation once, tokenizes it, and marks exactly the assistant tokens.

How the mask stays exact and cheap:
1. The generation-marked template is rendered once per row; jinja reports the character span of every
   `{% generation %}` block.
2. The rendered text is cut at those spans and every piece of the batch is tokenized in one batched call. Cutting
   there is also what inference does: the prompt ends with `<|im_start|>assistant\\n` and the model's tokens start
   fresh after it, so a supervised piece decodes to exactly the text its turn rendered.
3. Image placeholders are expanded on token ids (one `<|image_pad|>` becomes the number of tokens its image grid
   needs), not on strings, so the tokenizer never sees thousands of pad tokens.
No offset mapping and no second tokenization are needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from vlsft.data import load_image, normalize_messages, row_images
from vlsft.templates import FAMILIES, detect_family, resolve_training_template

IGNORE_INDEX = -100


class RowError(ValueError):
    """A row of a batch cannot be collated; `index` is its position in the batch."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"batch row {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass
class RenderedRow:
    """One conversation rendered and tokenized, before its images are expanded."""

    input_ids: list[int]
    supervised: list[bool]
    images: list[Any]


@dataclass
class VisionChatCollator:
    """Collates conversational vision rows into `input_ids`, `attention_mask`, `labels` (-100 where not supervised),
    `pixel_values`, `image_grid_thw` and whatever else the processor's image side returns.

    Args:
        processor: the model's processor (tokenizer + image processor).
        chat_template: a template with `{% generation %}` markers (see `vlsft.templates`).
        max_length: truncate longer rows (from the end); a row whose truncation would cut image tokens raises.
        image_root: directory for relative image paths.
        assistant_only_loss: if False, every non-padding token is supervised (plain language modelling).
    """

    processor: ProcessorMixin
    chat_template: str
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    image_root: str | None = None
    assistant_only_loss: bool = True
    _vision_token_ids: set[int] = field(init=False, repr=False)

    def __post_init__(self):
        tokenizer = self.processor.tokenizer
        family = FAMILIES[detect_family(self.chat_template) or "qwen3_vl"]
        self.image_token_id = tokenizer.convert_tokens_to_ids(family.image_token)
        self._vision_token_ids = {tokenizer.convert_tokens_to_ids(t) for t in family.vision_tokens}
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.merge_length = self.processor.image_processor.merge_size**2

    # -- rendering ---------------------------------------------------------------------------------------------

    def render(self, row: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text of a row and the character spans of its assistant generation blocks."""
        messages = normalize_messages(row["messages"])
        tools = row.get("tools") or None
        rendered, spans = render_jinja_template(
            [messages], tools=tools, chat_template=self.chat_template, return_assistant_tokens_mask=self.assistant_only_loss
        )
        return rendered[0], [tuple(span) for span in spans[0]] if self.assistant_only_loss else []

    def pieces(self, row: dict[str, Any]) -> list[tuple[str, bool]]:
        """The rendered row cut into (text, supervised) pieces at the generation-block boundaries."""
        text, spans = self.render(row)
        pieces, cursor = [], 0
        for start, end in spans:
            if start > cursor:
                pieces.append((text[cursor:start], False))
            if end > start:
                pieces.append((text[start:end], True))
            cursor = end
        if cursor < len(text):
            pieces.append((text[cursor:], False))
        return pieces

    def tokenize_rows(self, rows: list[dict[str, Any]]) -> list[RenderedRow]:
        """Render and tokenize rows, with all pieces of all rows in one batched tokenizer call."""
        row_pieces = [self.pieces(row) for row in rows]
        flat = [text for pieces in row_pieces for text, _ in pieces]
        encoded = self.processor.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        out, position = [], 0
        for row, pieces in zip(rows, row_pieces):
            ids, supervised = [], []
            for _, is_supervised in pieces:
                piece_ids = encoded[position]
                position += 1
                ids.extend(piece_ids)
                supervised.extend([is_supervised or not self.assistant_only_loss] * len(piece_ids))
            out.append(RenderedRow(ids, supervised, row_images(row)))
        return out

    # -- collation ---------------------------------------------------------------------------------------------

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokenized = self.tokenize_rows(rows)
        images = []
        for index, row in enumerate(tokenized):
            placeholders = row.input_ids.count(self.image_token_id)
            if placeholders != len(row.images):
                raise RowError(index, f"{placeholders} image placeholder(s) but {len(row.images)} image(s)")
            try:
                images.extend(load_image(image, self.image_root) for image in row.images)
            except ValueError as error:
                raise RowError(index, str(error)) from error

        batch: dict[str, torch.Tensor] = {}
        tokens_per_image: list[int] = []
        if images:
            vision = self.processor.image_processor(images=images, return_tensors="pt")
            batch.update(vision)
            tokens_per_image = (vision["image_grid_thw"].prod(-1) // self.merge_length).tolist()

        sequences, masks = [], []
        image_cursor = 0
        for index, row in enumerate(tokenized):
            ids = torch.tensor(row.input_ids, dtype=torch.long)
            supervised = torch.tensor(row.supervised, dtype=torch.bool)
            is_image = ids == self.image_token_id
            n_images = int(is_image.sum())
            if n_images:
                repeats = torch.ones_like(ids)
                repeats[is_image] = torch.tensor(tokens_per_image[image_cursor : image_cursor + n_images])
                image_cursor += n_images
                ids = ids.repeat_interleave(repeats)
                supervised = supervised.repeat_interleave(repeats)
            if self.max_length is not None and len(ids) > self.max_length:
                if n_images and bool((ids[self.max_length :] == self.image_token_id).any()):
                    raise RowError(index, f"max_length={self.max_length} cuts image tokens (row has {len(ids)} tokens)")
                ids, supervised = ids[: self.max_length], supervised[: self.max_length]
            # Vision tokens are inputs, never targets, whatever the template marked.
            supervised &= ~torch.isin(ids, torch.tensor(sorted(self._vision_token_ids)))
            sequences.append(ids)
            masks.append(supervised)

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
        # Qwen3-VL computes its 3D rope positions from this map of image (1) and video (2) tokens.
        batch["mm_token_type_ids"] = (input_ids == self.image_token_id).long() * attention_mask
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
    )

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

from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from vlsft.data import load_image, normalize_messages, row_images
from vlsft.templates import (
    FAMILIES,
    UnsupportedConversationError,
    check_expressible,
    check_media,
    detect_family,
    family_of_processor,
    resolve_training_template,
    split_inline_reasoning,
)
from vlsft.weights import TurnWeightError, turn_weights

IGNORE_INDEX = -100


# Arguments of `render_jinja_template` itself, which a template variable must not shadow.
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversations", "messages", "tools", "documents", "chat_template", "return_assistant_tokens_mask",
     "continue_final_message", "add_generation_prompt"}
)


class TemplateKwargsError(ValueError):
    """A `chat_template_kwargs` value that cannot be passed to the template."""


def row_template_kwargs(defaults: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
    """The chat template variables of one row: `defaults` (the recipe's), overridden by the row's own
    `chat_template_kwargs` column. Arrow gives every row the union of all rows' keys, with None for the missing
    ones: a None value means "not set", so the recipe's value (or else the template's default) applies."""
    own = row.get("chat_template_kwargs")
    if own is not None and not isinstance(own, dict):
        raise TemplateKwargsError(f"`chat_template_kwargs` must be a dict, got {type(own).__name__}")
    kwargs = {**(defaults or {}), **{key: value for key, value in (own or {}).items() if value is not None}}
    reserved = sorted(_RESERVED_TEMPLATE_KWARGS & set(kwargs))
    if reserved:
        raise TemplateKwargsError(
            f"`chat_template_kwargs` may not set {', '.join(reserved)}: those are given by the row itself "
            "(`messages`, `tools`) or by vlsft"
        )
    return {key: value for key, value in kwargs.items() if value is not None}


def message_blocks(spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The generation blocks of a rendered row, grouped by assistant message. The training templates render one
    block per assistant message, an empty one where the turn is context (its text is rendered but not generated
    there); a message whose text the template splits (Gemma 4: the content after the inlined tool responses) goes
    on in a further block, announced by an empty block at that block's own start."""
    turns: list[list[tuple[int, int]]] = []
    position = 0
    while position < len(spans):
        start, end = spans[position]
        following = spans[position + 1] if position + 1 < len(spans) else None
        if start == end and turns and following is not None and following[0] == start and following[1] > start:
            turns[-1].append(following)
            position += 2
        else:
            turns.append([(start, end)])
            position += 1
    return turns


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
        template_kwargs: variables for the chat template on every row (`enable_thinking`, `reasoning_history`...);
            a row's `chat_template_kwargs` column is applied over them.
        train_on_turns, train_on_eos, reasoning_weight: which tokens of the assistant turns train and how much they
            weigh (see `VLSFTConfig`); with the per-message `weight` / `train` keys they give each supervised token a
            weight. When one differs from 1 the batch holds `label_weights` (float32, aligned with `labels`, 0 where
            `labels` is -100); when all are 1 it is absent.
        return_turn_mask: also return `assistant_turn_mask` (bool, aligned with `labels`): every token of an
            assistant turn, trained or not. For `vlsft inspect`; the trainer never asks for it.
    """

    processor: ProcessorMixin
    chat_template: str
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    image_root: str | None = None
    assistant_only_loss: bool = True
    template_kwargs: dict[str, Any] | None = None
    train_on_turns: str = "all"
    train_on_eos: bool = True
    reasoning_weight: float = 1.0
    return_turn_mask: bool = False
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
        self._init_turn_weights()

    def _init_turn_weights(self) -> None:
        """The token ids that per-token weighting looks for: the end-of-turn token and the reasoning markers."""
        tokenizer = self.processor.tokenizer
        self._end_of_turn_id = tokenizer.convert_tokens_to_ids(self.family.end_of_turn)
        # Settings that weigh tokens inside a turn: then every row gets token weights, even with all turn weights 1.
        self._weights_tokens = not self.train_on_eos or self.reasoning_weight != 1
        self._reasoning_ids = None
        if self.reasoning_weight != 1:
            markers = self.family.reasoning_markers
            ids = [tokenizer.convert_tokens_to_ids(m) for m in markers] if markers else []
            if not markers or any(i is None or i == tokenizer.unk_token_id for i in ids):
                raise ValueError(
                    f"`reasoning_weight` needs a family whose reasoning block is marked by single tokens; "
                    f"{self.family.display_name} has " + (f"no token {markers}" if markers else "no reasoning format")
                    + ". Leave `reasoning_weight` at 1."
                )
            self._reasoning_ids = tuple(ids)

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
        messages = normalize_messages(row["messages"])
        tools = row.get("tools") or None
        if self.template_family is not None:
            check_expressible(self.template_family, messages, tools)
            check_media(self.template_family, row, messages)
            spec = FAMILIES[self.template_family]
            if spec.reasoning_opening is not None:
                messages = split_inline_reasoning(messages, spec.reasoning_opening, spec.reasoning_markers[1])
        rendered, spans = render_jinja_template(
            [messages],
            tools=tools,
            chat_template=self.chat_template,
            return_assistant_tokens_mask=self.assistant_only_loss,
            **self._template_kwargs,
            **row_template_kwargs(self.template_kwargs, row),
        )
        return rendered[0], [tuple(span) for span in spans[0]] if self.assistant_only_loss else []

    def pieces(self, row: dict[str, Any]) -> list[tuple[str, bool]]:
        """The rendered row cut into (text, supervised) pieces at the generation-block boundaries."""
        return self.weighted_pieces(row)[0]

    def weighted_pieces(self, row: dict[str, Any]) -> tuple[list[tuple[str, bool]], list[float] | None]:
        """`pieces(row)` and the weight of each supervised piece (one per non-empty assistant turn), or None when
        every token of every turn weighs 1 (then nothing per token is computed: today's fast path)."""
        text, spans = self.render(row)
        weights = self._turn_weights(row, spans)
        pieces, cursor = [], 0
        for start, end in spans:
            if end == start:
                continue  # an empty block (a context turn's): cutting there would change how its text tokenizes
            if start > cursor:
                pieces.append((text[cursor:start], False))
            pieces.append((text[start:end], True))
            cursor = end
        if cursor < len(text):
            pieces.append((text[cursor:], False))
        return pieces, weights

    def _turn_weights(self, row: dict[str, Any], spans: list[tuple[int, int]]) -> list[float] | None:
        """The weight of each non-empty generation block, or None when all tokens weigh 1. Raises `TurnWeightError`
        for malformed `weight` / `train` keys, when no turn is left to train, or when the blocks cannot be told apart
        per assistant message."""
        if not self.assistant_only_loss:
            return None
        weights = turn_weights(row["messages"], self.train_on_turns)
        if not self._weights_tokens and all(w == 1 for w in weights):
            return None
        turns = message_blocks(spans)
        if len(weights) != len(turns):
            raise TurnWeightError(
                f"the chat template renders generation blocks for {len(turns)} assistant turn(s) but the row has "
                f"{len(weights)} assistant message(s); per-turn weights need one block per assistant message (an "
                "empty one for a turn that is context)"
            )
        weighted = [(span, weight) for blocks, weight in zip(turns, weights) for span in blocks if span[1] > span[0]]
        if any(end == start for ((_, end), _), ((start, _), _) in zip(weighted, weighted[1:])):
            raise TurnWeightError("the chat template renders two assistant turns back to back; they cannot be weighed apart")
        return [weight for _, weight in weighted]

    def token_weights(self, ids: torch.Tensor, in_turn: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """float32 weight of every token of a row (0 outside the assistant turns). `in_turn` marks the assistant
        turns' tokens; each run of them is one turn, weighed `weights[turn]`, with its end-of-turn token left out
        (`train_on_eos=False`) and its reasoning block scaled by `reasoning_weight`."""
        edges = torch.diff(in_turn.int(), prepend=in_turn.new_zeros(1).int(), append=in_turn.new_zeros(1).int())
        starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
        if len(starts) != len(weights):
            raise TurnWeightError(f"{len(starts)} assistant turn(s) in the tokens but {len(weights)} turn weight(s)")
        out = torch.zeros(len(ids), dtype=torch.float32)
        for start, end, weight in zip(starts, ends, weights):
            out[start:end] = weight
            turn = ids[start:end]
            if self._reasoning_ids is not None:
                opening, closing = self._reasoning_ids
                # Inside from the opening marker to the closing one, both included (or to the end of the turn). A
                # turn whose first marker closes starts inside: the generation prompt opened the block (Qwen3.5's
                # `<think>\n`, Gemma 4 v5's `<|channel>thought\n` after a tool response).
                markers = turn[(turn == opening) | (turn == closing)]
                opened_by_prompt = int(len(markers) > 0 and int(markers[0]) == closing)
                opened, closed = torch.cumsum((turn == opening).int(), 0), torch.cumsum((turn == closing).int(), 0)
                depth = opened_by_prompt + opened - closed
                inside = (depth > 0) | (turn == closing)
                out[start:end][inside] *= self.reasoning_weight
            if not self.train_on_eos:
                ends_of_turn = (turn == self._end_of_turn_id).nonzero().flatten()
                if len(ends_of_turn):
                    out[start + int(ends_of_turn[-1])] = 0.0
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
        encoded = self.processor.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
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
                text = parts[0] + "".join(next(queue) + part for part in parts[1:])
                row.append((text, supervised))
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
        row_pieces, images, row_weights = [], [], []
        for index, row in enumerate(rows):
            try:
                pieces, weights = self.weighted_pieces(row)
            except (UnsupportedConversationError, TemplateError, TemplateKwargsError, TurnWeightError) as error:
                raise RowError(index, str(error)) from error  # the row cannot be rendered or weighed
            row_weights.append(weights)
            values = row_images(row)
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

        token_weights = self._row_token_weights(sequences, masks, row_weights)
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
        if self.return_turn_mask:
            batch["assistant_turn_mask"] = labels != IGNORE_INDEX
        if any(weights is not None for weights in token_weights):
            self._apply_token_weights(batch, labels, token_weights)
        batch["labels"] = labels
        return batch

    def _row_token_weights(self, sequences, masks, row_weights) -> list[torch.Tensor | None]:
        """Each row's token weights, on its expanded tokens before truncation (None where all weigh 1)."""
        out = []
        for index, (ids, in_turn, weights) in enumerate(zip(sequences, masks, row_weights)):
            try:
                out.append(None if weights is None else self.token_weights(ids, in_turn, weights))
            except TurnWeightError as error:
                raise RowError(index, str(error)) from error
        return out

    @staticmethod
    def _apply_token_weights(batch, labels: torch.Tensor, token_weights: list[torch.Tensor | None]) -> None:
        """Tokens of weight 0 leave the labels (context only); `label_weights` joins the batch unless every
        remaining label weighs 1."""
        label_weights = torch.ones(labels.shape, dtype=torch.float32)
        for i, weights in enumerate(token_weights):
            if weights is not None:
                length = min(len(weights), labels.shape[1])
                label_weights[i, :length] = weights[:length]
                label_weights[i, length:] = 0.0
        label_weights = label_weights * (labels != IGNORE_INDEX)
        labels[label_weights == 0] = IGNORE_INDEX
        if bool((label_weights[labels != IGNORE_INDEX] != 1).any()):
            batch["label_weights"] = label_weights


def training_collator(processor: ProcessorMixin, args) -> VisionChatCollator:
    """The collator `VLSFTTrainer` trains with for `processor` and `args` (a `VLSFTConfig`): the training template
    (resolved from the processor's, or read from `args.chat_template_path`), `max_length`, `image_root`..."""
    template = processor.chat_template
    if args.chat_template_path is not None and args.chat_template_path.endswith((".jinja", ".j2")):
        with open(args.chat_template_path, encoding="utf-8") as file:
            template = file.read()
    if args.assistant_only_loss:
        template = resolve_training_template(template)
    template_kwargs = dict(args.chat_template_kwargs or {})
    if template and "reasoning_history" in template:  # only the thinking templates read it
        template_kwargs.setdefault("reasoning_history", args.reasoning_history)
    return VisionChatCollator(
        processor=processor,
        chat_template=template,
        max_length=args.max_length,
        pad_to_multiple_of=args.pad_to_multiple_of,
        image_root=args.image_root,
        assistant_only_loss=args.assistant_only_loss,
        template_kwargs=template_kwargs or None,
        train_on_turns=getattr(args, "train_on_turns", "all"),
        train_on_eos=getattr(args, "train_on_eos", True),
        reasoning_weight=getattr(args, "reasoning_weight", 1.0),
    )

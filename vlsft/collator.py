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
4. Video placeholders (Qwen-VL) are expanded on token ids too, with the processor's own `replace_video_token` text
   for each video: its runs of `<|video_pad|>` are tokenized as one token each and repeated, and the rest (Qwen3-VL's
   `<1.5 seconds>` timestamps and per-frame vision markers) is tokenized on its own. The text sits between special
   tokens, which the tokenizer never merges across, so this is how the processor tokenizes it in context.
No offset mapping and no second tokenization are needed.

`VisionChatCollator` assembles the batch; each step is a mixin of `vlsft.collation` with one concern: `rendering`
(template, pieces, tokenization; `RowError`, `RenderedRow`), `weighting` (per-token weights), `images`, `videos`,
and `template_kwargs` (the template variables of a row).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import ProcessorMixin

from vlsft.collation.borrowed_records import borrowed_video_refusal
from vlsft.collation.images import ImageExpansion
from vlsft.collation.processor_expansion import ProcessorExpansion, per_token_outputs_laid, processor_prefix
from vlsft.collation.rendering import RowError, RowRendering
from vlsft.collation.template_kwargs import TemplateKwargsError, boolean_switches, template_kwargs_problems
from vlsft.collation.videos import VideoExpansion
from vlsft.collation.weighting import TurnWeighting
from vlsft.data.rows import ImagesNotAListError, load_image, placeholder_mismatch, row_images
from vlsft.families import FAMILIES, family_of_processor
from vlsft.generic_family import added_tokens, generic_family, refuse_processor_outside_chat
from vlsft.generic_masks import PrefixRuleError, end_of_turn_token, markers_leave_out_the_stop
from vlsft.templates import (
    UnsupportedConversationError,
    detect_family,
    has_generation_markers,
    resolve_training_template,
)
from vlsft.tokens import IGNORE_INDEX
from vlsft.weights import TurnWeightError



@dataclass
class VisionChatCollator(RowRendering, TurnWeighting, ImageExpansion, ProcessorExpansion, VideoExpansion):
    """Collates conversational vision rows into `input_ids`, `attention_mask`, `labels` (-100 where not supervised)
    and whatever the model's processor returns for them (`pixel_values`, `image_grid_thw`, `image_sizes`,
    `pixel_attention_mask`, the image-token map...).

    Args:
        processor: the model's processor (tokenizer + image processor), of a family in `vlsft.families.FAMILIES`, or
            of any other family (the generic path, `vlsft.generic_family`).
        chat_template: a template with `{% generation %}` markers (see `vlsft.templates`), or a stock template,
            masked by the incremental-rendering rule (`vlsft.generic_masks`).
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
        video_root: directory for relative video paths (default: `image_root`).
        video_fps, video_min_frames, video_max_frames, video_max_pixels: override the video processor's frame sampling
            and pixel budget (see `VLSFTConfig`); None keeps the processor's own.
        escape_control_tokens: tokenize control-token text inside messages (`<|im_end|>` written in an answer) as
            plain text instead of as the control token (validation otherwise refuses such rows).
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
    video_root: str | None = None
    video_fps: float | None = None
    video_min_frames: int | None = None
    video_max_frames: int | None = None
    video_max_pixels: int | None = None
    escape_control_tokens: bool = False
    _vision_token_ids: set[int] = field(init=False, repr=False)

    def __post_init__(self):
        refuse_processor_outside_chat(self.processor)  # whatever the template: a prefix-LM or GOT-OCR 2.0
        tokenizer = self.processor.tokenizer
        # The template says which family's features to check (a custom template is its author's call); the template
        # or else the processor says how to expand images.
        self.template_family = detect_family(self.chat_template)
        # Templates read special tokens (Gemma 3 starts with `{{ bos_token }}`), as in `processor.apply_chat_template`;
        # only those a template names are passed, as every variable passed costs time on every render.
        self._template_kwargs = {k: v for k, v in tokenizer.special_tokens_map.items() if k in self.chat_template}
        # The variables this template tests as true/false: each must be passed as a bool (recipe-wide here, per row in
        # `row_template_kwargs`).
        self.boolean_switches = boolean_switches(self.chat_template)
        problems = template_kwargs_problems(self.template_kwargs, self.boolean_switches, "chat_template_kwargs")
        if problems:
            raise ValueError("; ".join(problems) + ".")
        # A template without generation markers (a stock template vlsft has no marked copy of) is masked by the
        # incremental-rendering rule (`vlsft.generic_masks`).
        self.generic_masks = self.assistant_only_loss and not has_generation_markers(self.chat_template)
        name = self.template_family or family_of_processor(self.processor)
        if self.generic_masks or name is None:
            # Found now from the template's rendering, so a template that writes none fails before training.
            end_of_turn = end_of_turn_token(self.render_stock, added_tokens(tokenizer), tokenizer.eos_token)
        if name is None and self.assistant_only_loss and not self.generic_masks:
            # A checkpoint's markers that leave the stop token out would train a model that never stops: the rule
            # masks a family without a record instead (its markers render their text unchanged).
            self.generic_masks = markers_leave_out_the_stop(self.chat_template, end_of_turn, **self._template_kwargs)
        # A processor outside the records takes the generic path: its record read off the processor and template,
        # its images expanded by the processor itself (`vlsft.collation.processor_expansion`).
        self.generic_family = name is None
        self.family = FAMILIES[name] if name is not None else generic_family(self.processor, end_of_turn)
        if self.generic_masks:  # the stop the rule supervises, not a record's (Granite-Docling on Idefics3's processor)
            self.family = replace(self.family, end_of_turn=end_of_turn)
        self.borrowed_video_refusal = None if name is None else borrowed_video_refusal(name, self.processor)
        self._processor_prefix = processor_prefix(self.processor) if self.generic_family else ""
        self.image_token = self.family.image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)  # the placeholder, one per image
        # (A checkpoint may lack some of the family's vision tokens, e.g. fewer tile tags: those map to nothing.)
        vision_ids = tokenizer.convert_tokens_to_ids(list(self.family.vision_tokens))
        self._vision_token_ids = {i for i in vision_ids if i not in (None, tokenizer.unk_token_id)}
        # The tokens the model replaces with image features (Gemma 3: the soft tokens, not the placeholder). A processor
        # whose placeholder is plain text names none (Ovis2): its image is the vision tokens of its replacement text.
        feature_ids = [i for i in self.processor.image_token_ids if i not in (None, tokenizer.unk_token_id)]
        self.image_feature_token_ids = feature_ids or sorted(self._vision_token_ids)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.merge_length = getattr(self.processor.image_processor, "merge_size", 1) ** 2
        # The processor's own image defaults (LLaVA-NeXT pads tiles, Idefics3 returns the tile grid, ...).
        merged = self.processor._merge_kwargs(tokenizer_init_kwargs=tokenizer.init_kwargs)
        self._images_kwargs = {**merged["images_kwargs"], "return_tensors": "pt"}
        self._model_input_names = set(self.processor.model_input_names)
        self._init_turn_weights()
        self._setup_videos(merged["videos_kwargs"])
        self._init_rendering()

    # -- collation ---------------------------------------------------------------------------------------------

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        row_pieces, images, row_weights, videos, videos_per_row = [], [], [], [], []
        for index, row in enumerate(rows):
            try:
                pieces, weights = self.weighted_pieces(row)
                if self.generic_family:
                    pieces = self._with_processor_prefix(pieces)
            except (
                UnsupportedConversationError, PrefixRuleError, TemplateError, TemplateKwargsError, TurnWeightError
            ) as error:
                raise RowError(index, str(error)) from error  # the row cannot be rendered or weighed
            row_weights.append(weights)
            try:
                values = row_images(row)
            except ImagesNotAListError as error:
                raise RowError(index, str(error)) from error
            # Placeholders as rendered: a template that drops an image's placeholder leaves one image too many.
            mismatch = placeholder_mismatch("image", sum(text.count(self.image_token) for text, _ in pieces), len(values))
            if mismatch:
                raise RowError(index, mismatch)
            try:
                images.append([load_image(value, self.image_root) for value in values])
            except ValueError as error:
                raise RowError(index, str(error)) from error
            row_videos_ = self._row_videos(index, row, pieces)
            videos.extend(row_videos_)
            videos_per_row.append(len(row_videos_))
            row_pieces.append(pieces)

        vision = {} if self.generic_family else self._process_images(images)
        video_outputs, video_texts = self._process_videos(videos)
        expansions = self.video_expansions(video_texts)
        num_images = sum(len(row) for row in images)
        sequences, masks, per_token = [], [], {}
        if self.family.expand_on_ids:
            counts = self._image_token_counts(vision, num_images)
            cursor = video_cursor = 0
            for row, n_videos in zip(self._tokenize_pieces(row_pieces, images), videos_per_row):
                n_images = len(row.images)
                ids, supervised = self._expand_on_ids(row, counts[cursor : cursor + n_images])
                cursor += n_images
                ids, supervised = self._splice_videos(ids, supervised, expansions[video_cursor : video_cursor + n_videos])
                video_cursor += n_videos
                sequences.append(ids)
                masks.append(supervised)
        elif self.generic_family:  # the processor expands the images (`vlsft.collation.processor_expansion`)
            vision, per_token, sequences, masks = self._generic_sequences(row_pieces, images)
        else:
            expanded = self._expand_in_text(row_pieces, self._image_texts(vision, num_images))
            for row in self._tokenize_pieces(expanded, images):
                sequences.append(torch.tensor(row.input_ids, dtype=torch.long))
                masks.append(torch.tensor(row.supervised, dtype=torch.bool))
        # What the model takes (not, e.g., Idefics3's tile grid, which only `replace_image_token` reads). On the generic
        # path, every image tensor the processor returns: it drops those its model does not take itself
        # (`unused_input_names`), and some name theirs otherwise than they list (Video-LLaVA's `pixel_values_images`).
        batch = {
            key: value for key, value in {**vision, **video_outputs}.items()
            if key in self._model_input_names or (self.generic_family and key in vision)
        }

        token_weights = self._row_token_weights(sequences, masks, row_weights)
        vision_ids = torch.tensor(sorted(self._vision_token_ids))
        feature_ids = torch.tensor(self.image_feature_token_ids)
        # Tokens that truncation must not cut: image features, and video features and their timestamps.
        video_ids = torch.tensor([self.video_token_id] if videos else [], dtype=torch.long)
        kept_ids = {"image": feature_ids, "video": video_ids}
        for index, (ids, supervised) in enumerate(zip(sequences, masks)):
            if self.max_length is not None and len(ids) > self.max_length:
                cut_off = ids[self.max_length :]
                cut = " and ".join(kind for kind, kind_ids in kept_ids.items() if torch.isin(cut_off, kind_ids).any())
                if cut:
                    raise RowError(index, f"max_length={self.max_length} cuts {cut} tokens (row has {len(ids)} tokens)")
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
        # The processor's masks over the tokens (Mllama's `cross_attention_mask`), laid onto the collated rows.
        batch.update(per_token_outputs_laid(per_token, sequences, length))
        if self.family.image_map_key is not None:
            # 1 on the image feature tokens: Qwen's 3D rope positions, Gemma 3's bidirectional attention per image.
            token_types = torch.isin(input_ids, feature_ids).long()
            if self.video_token_id is not None and self.family.image_map_key == "mm_token_type_ids":
                token_types[input_ids == self.video_token_id] = 2  # the processor's type for video tokens
            batch[self.family.image_map_key] = token_types * attention_mask
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
    refuse_processor_outside_chat(processor)  # before the template: such a family has none, and one would not help
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
        train_on_turns=args.train_on_turns,
        train_on_eos=args.train_on_eos,
        reasoning_weight=args.reasoning_weight,
        video_root=args.video_root,
        video_fps=args.video_fps,
        video_min_frames=args.video_min_frames,
        video_max_frames=args.video_max_frames,
        video_max_pixels=args.video_max_pixels,
        escape_control_tokens=args.escape_control_tokens,
    )

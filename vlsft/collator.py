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
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from vlsft.data.rows import ImagesNotAListError, load_image, normalize_messages, row_images, row_videos
from vlsft.families import FAMILIES, family_of_processor
from vlsft.templates import (
    UnsupportedConversationError,
    check_expressible,
    check_media,
    detect_family,
    resolve_training_template,
    split_inline_reasoning,
)
from vlsft.data.video import LoadedVideo, VideoLoadError, load_video
from vlsft.weights import TurnWeightError, turn_weights

IGNORE_INDEX = -100
# Frame rate Qwen2.5-VL samples at when frame limits are set without `video_fps` (qwen-vl-utils' default): its
# processor samples only when given a rate.
QWEN_REFERENCE_FPS = 2.0


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
        processor: the model's processor (tokenizer + image processor), of a family in `vlsft.families.FAMILIES`.
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
        tokenizer = self.processor.tokenizer
        # The template says which family's features to check (a custom template is its author's call); the template
        # or else the processor says how to expand images.
        self.template_family = detect_family(self.chat_template)
        name = self.template_family or family_of_processor(self.processor)
        if name is None:
            known = ", ".join(f"{f.processor_class} ({f.name})" for f in FAMILIES.values())
            raise ValueError(
                f"vlsft does not know the processor {type(self.processor).__name__}: it collates the families in "
                f"`vlsft.families.FAMILIES`, whose processors are {known}. A new family is a `Family` entry in that table, "
                "a training template, a tiny builder and a test."
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
        self._setup_videos(merged["videos_kwargs"])
        # Every added token: the tokenizer cuts these out of any text before its vocabulary sees it, so their text in a
        # message becomes the control token itself (a `<|im_end|>` in an answer would end the turn there).
        self.control_tokens = tuple(
            sorted({token.content for token in tokenizer.added_tokens_decoder.values() if token.content}, key=len, reverse=True)
        )
        self._control_pattern = re.compile("|".join(map(re.escape, self.control_tokens))) if self.control_tokens else None
        # Control tokens the template itself parses out of an assistant message (a thinking template's
        # `content.split('</think>')`), and the family's reasoning markers, which an assistant message may carry inline
        # (`<think>...</think>`, what the model generates): there they are the data's structure, not text, and are
        # neither refused nor escaped.
        reasoning_markers = set(self.family.reasoning_markers or ())
        self.template_parsed_tokens = frozenset(
            token
            for token in self.control_tokens
            if token in reasoning_markers
            or re.search(r"(split|replace)\(\s*['\"]" + re.escape(token), self.chat_template)
            or re.search(r"['\"]" + re.escape(token) + r"['\"]\s+(not\s+)?in\s", self.chat_template)
        )
        first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"][:1])
        self._marks_string_start = bool(first) and first[0][:1] in ("▁", "Ġ")
        self._anchor_ids = tokenizer(_CONTINUATION_ANCHOR, add_special_tokens=False)["input_ids"]

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

    def _setup_videos(self, videos_kwargs: dict[str, Any]) -> None:
        """The video token and a copy of the video processor with this run's sampling and pixel budget."""
        self.video_token = self.video_token_id = self.video_processor = None
        if not self.family.video or getattr(self.processor, "video_processor", None) is None:
            return
        self.video_token = self.processor.video_token
        self.video_token_id = self.processor.tokenizer.convert_tokens_to_ids(self.video_token)
        video_processor = copy.copy(self.processor.video_processor)
        frame_limits = self.video_min_frames is not None or self.video_max_frames is not None
        if self.video_fps is not None or (frame_limits and not video_processor.do_sample_frames):
            video_processor.fps = self.video_fps if self.video_fps is not None else QWEN_REFERENCE_FPS
            video_processor.do_sample_frames = True
        if self.video_min_frames is not None:
            video_processor.min_frames = self.video_min_frames
        if self.video_max_frames is not None:
            video_processor.max_frames = self.video_max_frames
        size = {key: value for key, value in dict(video_processor.size).items() if value is not None}
        if self.video_max_pixels is not None:
            size["longest_edge"] = self.video_max_pixels
        video_processor.size = size
        self.video_processor = video_processor
        # The processor's call defaults, with the frames already sampled here and the size of this run.
        self._videos_kwargs = {
            **videos_kwargs,
            "do_sample_frames": False,
            "return_metadata": True,
            "return_tensors": "pt",
            "size": size,
        }
        self._video_run = re.compile(f"(?:{re.escape(self.video_token)})+")

    def sample_video_indices(self, metadata) -> list[int]:
        """The frame indices the video processor samples from a video with this metadata (its own `sample_frames`,
        called as its `preprocess` calls it), or every frame where it does not sample."""
        processor = self.video_processor
        if not processor.do_sample_frames:
            return list(range(metadata.total_num_frames))
        skipped = ("input_data_format", "do_convert_rgb", "do_sample_frames", "device", "video_metadata")
        kwargs = {
            name: getattr(processor, name, None) for name in processor.valid_kwargs.__annotations__ if name not in skipped
        }
        return [int(i) for i in processor.sample_frames(metadata=copy.copy(metadata), **kwargs)]

    def load_videos(self, values: list[Any]) -> list[LoadedVideo]:
        """Decode (only the sampled frames of) a row's videos."""
        root = self.video_root if self.video_root is not None else self.image_root
        return [load_video(value, root, self.sample_video_indices, self.video_processor.fps) for value in values]

    def _row_videos(self, index: int, row: dict[str, Any], pieces: list[tuple[str, bool]]):
        """A row's videos, decoded, after checking they match its placeholders; errors name the row and video."""
        values = row_videos(row)
        if self.video_token is None:
            if values:
                raise RowError(index, f"{self.family.display_name} is not trained on videos by vlsft (video families: "
                               f"{', '.join(name for name, family in FAMILIES.items() if family.video)}); remove the row's videos")
            return []
        placeholders = sum(text.count(self.video_token) for text, _ in pieces)
        if placeholders != len(values):
            raise RowError(index, f"{placeholders} video placeholder(s) but {len(values)} video(s)")
        loaded = []
        for number, value in enumerate(values):
            try:
                loaded.extend(self.load_videos([value]))
                self.check_frame_count(loaded[-1].frames.shape[0])
            except VideoLoadError as error:
                raise RowError(index, f"video {number} {error}") from error
        return loaded

    def check_frame_count(self, num_frames: int) -> None:
        """The video processor needs at least one temporal patch of frames (it raises on fewer)."""
        needed = self.video_processor.temporal_patch_size
        if num_frames < needed:
            raise VideoLoadError(
                f"has {num_frames} frame(s) sampled; {self.family.display_name} needs at least {needed} "
                f"(temporal_patch_size): use a longer clip or repeat its frame(s) in a frame list"
            )

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
        return self.weighted_pieces(row)[0]

    def weighted_pieces(self, row: dict[str, Any]) -> tuple[list[tuple[str, bool]], list[float] | None]:
        """`pieces(row)` and the weight of each supervised turn (one per non-empty assistant turn), or None when
        every token of every turn weighs 1 (then nothing per token is computed: today's fast path)."""
        text, spans, escaped = self._render_marked(row)
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
        return (self._unmark(pieces, escaped) if escaped else pieces), weights

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
        weighted = [self.weighted_pieces(row) for row in rows]
        rendered = self._tokenize_pieces([pieces for pieces, _ in weighted], [row_images(row) for row in rows])
        for row, (_, weights) in zip(rendered, weighted):
            if weights is not None:
                ids, in_turn = torch.tensor(row.input_ids), torch.tensor(row.supervised, dtype=torch.bool)
                row.weights = self.token_weights(ids, in_turn, weights).tolist()
        return rendered

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
                "`expand_on_ids=False` for this family in `vlsft.families.FAMILIES`."
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

    # -- videos ------------------------------------------------------------------------------------------------

    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list[str]]:
        """The processor's own video output (`pixel_values_videos`, `video_grid_thw`, Qwen2.5-VL's
        `second_per_grid_ts`) and the text that replaces each video's placeholder, for sampled frames."""
        if not videos:
            return {}, []
        kwargs = {**self._videos_kwargs, "video_metadata": [video.metadata for video in videos]}
        processed, replacements = self.processor._process_videos([video.frames for video in videos], **kwargs)
        processed = dict(processed)
        if "second_per_grid_ts" in processed:
            processed["second_per_grid_ts"] = torch.tensor(processed["second_per_grid_ts"])
        return processed, replacements

    def video_expansions(self, replacements: list[str]) -> list[torch.Tensor]:
        """The token ids of each video's replacement text: its `<|video_pad|>` runs become one token each for the
        tokenizer (one batched call), then are repeated on ids."""
        if not replacements:
            return []
        compressed = [self._video_run.sub(self.video_token, text) for text in replacements]
        runs = [[len(run) // len(self.video_token) for run in self._video_run.findall(text)] for text in replacements]
        encoded = self.processor.tokenizer(compressed, add_special_tokens=False)["input_ids"]
        expansions = []
        for ids, counts in zip(encoded, runs):
            ids = torch.tensor(ids, dtype=torch.long)
            repeats = torch.ones_like(ids)
            repeats[ids == self.video_token_id] = torch.tensor(counts, dtype=torch.long)
            expansions.append(ids.repeat_interleave(repeats))
        return expansions

    def video_token_ids(self, num_frames: int, height: int, width: int, metadata) -> torch.Tensor:
        """The ids a video of sampled `num_frames` frames of `height` x `width` expands to, from those sizes alone
        (the video processor's resize rule and the processor's replacement text; no pixels are processed)."""
        processor = self.video_processor
        self.check_frame_count(num_frames)
        patches = processor.get_num_of_video_patches(num_frames, height, width, {"size": processor.size})
        grid_t = -(-num_frames // processor.temporal_patch_size)
        grid = torch.tensor([[grid_t, patches // grid_t, 1]])
        text = self.processor.replace_video_token({"video_grid_thw": grid, "video_metadata": [metadata]}, video_idx=0)
        return self.video_expansions([text])[0]

    def _splice_videos(self, ids: torch.Tensor, supervised: torch.Tensor, expansions: list[torch.Tensor]):
        """Each video placeholder token replaced by its expansion (never supervised)."""
        if not expansions:
            return ids, supervised
        positions = (ids == self.video_token_id).nonzero().flatten().tolist()
        id_parts, mask_parts, start = [], [], 0
        for position, expansion in zip(positions, expansions):
            id_parts += [ids[start:position], expansion]
            mask_parts += [supervised[start:position], torch.zeros(len(expansion), dtype=torch.bool)]
            start = position + 1
        id_parts.append(ids[start:])
        mask_parts.append(supervised[start:])
        return torch.cat(id_parts), torch.cat(mask_parts)

    # -- collation ---------------------------------------------------------------------------------------------

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        row_pieces, images, row_weights, videos, videos_per_row = [], [], [], [], []
        for index, row in enumerate(rows):
            try:
                pieces, weights = self.weighted_pieces(row)
            except (UnsupportedConversationError, TemplateError, TemplateKwargsError, TurnWeightError) as error:
                raise RowError(index, str(error)) from error  # the row cannot be rendered or weighed
            row_weights.append(weights)
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
            row_videos_ = self._row_videos(index, row, pieces)
            videos.extend(row_videos_)
            videos_per_row.append(len(row_videos_))
            row_pieces.append(pieces)

        vision = self._process_images(images)
        video_outputs, video_texts = self._process_videos(videos)
        expansions = self.video_expansions(video_texts)
        num_images = sum(len(row) for row in images)
        sequences, masks = [], []
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
        else:
            expanded = self._expand_in_text(row_pieces, self._image_texts(vision, num_images))
            for row in self._tokenize_pieces(expanded, images):
                sequences.append(torch.tensor(row.input_ids, dtype=torch.long))
                masks.append(torch.tensor(row.supervised, dtype=torch.bool))
        # What the model takes (not, e.g., Idefics3's tile grid, which only `replace_image_token` reads).
        batch = {key: value for key, value in {**vision, **video_outputs}.items() if key in self._model_input_names}

        token_weights = self._row_token_weights(sequences, masks, row_weights)
        vision_ids = torch.tensor(sorted(self._vision_token_ids))
        feature_ids = torch.tensor(self.image_feature_token_ids)
        # Tokens that truncation must not cut: image features, and video features and their timestamps.
        kept_ids = torch.tensor(self.image_feature_token_ids + ([self.video_token_id] if videos else []))
        for index, (ids, supervised) in enumerate(zip(sequences, masks)):
            if self.max_length is not None and len(ids) > self.max_length:
                if bool(torch.isin(ids[self.max_length :], kept_ids).any()):
                    what = "image or video" if videos else "image"
                    raise RowError(index, f"max_length={self.max_length} cuts {what} tokens (row has {len(ids)} tokens)")
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

"""The `Family` record of a model vlsft has no record for, read off its processor and its stock chat template.

A model outside `vlsft.families.FAMILIES` trains on the generic exact path: its masks come from the
incremental-rendering rule (`vlsft.generic_masks`) on its own stock template, its images expand through its
processor's own `replace_image_token` text (tokenized in context, as the processor does), and its parts are found by
transformers' naming conventions (`vlsft.model_parts`). What the collator needs to know of the family is read here:
the placeholder (`image_placeholder`), the multimodal tokens never supervised, the end-of-turn token (from the
template's rendering of a probe conversation) and the name of the per-token image map the processor returns.
Videos are not collated on this path: a row with one is refused by name.
"""

from __future__ import annotations

from PIL import Image

from vlsft.families import Family, ModelParts
from vlsft.model_parts import PROJECTOR_NAMES, VISION_TOWER_NAMES

# The processor (or tokenizer) attributes that name a token around or inside an image, video or audio clip (begin/end
# markers; Gemma 3n's processor names its begin-of-image marker, its tokenizer the end one).
_MEDIA_TOKEN_ATTRIBUTES = (
    "boi_token", "eoi_token", "image_start_token", "image_end_token", "start_image_token", "end_image_token",
    "image_break_token", "fake_image_token", "video_start_token", "video_end_token", "boa_token", "eoa_token",
)
# The names a model's parts are searched under (`vlsft.model_parts`), recorded for display: the model is matched by
# them, not by this record.
GENERIC_PARTS = ModelParts(
    vision_tower="|".join(VISION_TOWER_NAMES),
    mergers=PROJECTOR_NAMES,
    decoder_layers="language_model.layers",
    vision_lora_targets="",
)


# The name of every generic record starts with this (`generic:InternVLProcessor`).
GENERIC_PREFIX = "generic:"


def is_generic_family(family: Family) -> bool:
    """Whether `family` is a record read off a processor (the generic path), not one of `FAMILIES`."""
    return family.name.startswith(GENERIC_PREFIX)


def added_tokens(tokenizer) -> tuple[str, ...]:
    """Every token the tokenizer adds whole (control tokens), longest first."""
    return tuple(
        sorted({token.content for token in tokenizer.added_tokens_decoder.values() if token.content}, key=len, reverse=True)
    )


def image_placeholder(processor) -> str | None:
    """The text a chat template writes for an image, which the processor replaces: its `image_token`, or, for a
    processor whose template writes a placeholder other than the token its model fills with features, that
    placeholder (Qianfan-OCR's `image_placeholder_token`, `<image>`, replaced by `<img>` + `<IMG_CONTEXT>`s +
    `</img>`, its `image_token` being `<IMG_CONTEXT>`)."""
    placeholder = getattr(processor, "image_placeholder_token", None)
    return placeholder if isinstance(placeholder, str) and placeholder else getattr(processor, "image_token", None)


def replacement_tokens(processor) -> tuple[str, ...]:
    """The control tokens of the text the processor puts in place of one image's placeholder, found on a probe
    image. They stand for the image when the placeholder itself is plain text, not a token of the vocabulary (Ovis2's
    `<image>`, replaced in text by `<IMG_START>`, `<IMG_ATOM>`...): then no token id of the processor names them."""
    outputs = processor(
        images=[Image.new("RGB", (64, 64))], text=[image_placeholder(processor)], return_tensors="pt",
        return_text_replacement_offsets=True,
    )
    replacement = "".join(item["replacement"] for item in outputs["text_replacement_offsets"][0])
    tokenizer = processor.tokenizer
    control = set(added_tokens(tokenizer))
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(replacement, add_special_tokens=False)["input_ids"])
    return tuple(dict.fromkeys(piece for piece in pieces if piece in control))


# Processors of prefix-LM families, trained on (prefix, suffix) pairs rather than conversations: the model attends
# bidirectionally over the prefix (`token_type_ids` 0) and causally over the suffix (1). A chat rendering has no such
# split, and the all-zero `token_type_ids` the processor returns for it would let every token see the answer.
PREFIX_LM_PROCESSORS = {"PaliGemmaProcessor": "PaliGemma / PaliGemma 2"}


def refuse_prefix_lm(processor) -> None:
    """Raise `ValueError`, with what to do instead, for a processor of a prefix-LM family (`PREFIX_LM_PROCESSORS`)."""
    name = type(processor).__name__
    if name in PREFIX_LM_PROCESSORS:
        raise ValueError(
            f"{name}: {PREFIX_LM_PROCESSORS[name]} is a prefix-LM trained on (prefix, suffix) pairs, not a chat model: "
            "it has no chat template, and its model attends bidirectionally over the prefix by `token_type_ids`, which "
            "vlsft's conversation path does not build (with a chat template the processor marks every token as "
            "prefix, so the answer would be visible to itself). vlsft does not train it; fine-tune it on "
            "`processor(images=..., text=prefix, suffix=answer)`, which returns the `labels` and `token_type_ids` "
            "the model needs (e.g. with transformers' `Trainer`), or train a chat vision-language family instead."
        )


# Processors of OCR models that write their model's prompt themselves rather than render a conversation, and why a
# conversation cannot go through them: their checkpoints ship no chat template, and the processors take neither a chat
# batch's images (a list per conversation, as `apply_chat_template` passes them) nor a row without an image.
PROMPT_BUILDING_PROCESSORS = {
    "GotOcr2Processor": "GOT-OCR 2.0's checkpoints ship no chat template: its processor writes the OCR prompt itself "
    "(`processor(images, format=..., box=..., color=...)`, without text), takes a list of images per conversation "
    "only as the pages of one multi-page document (`apply_chat_template` itself fails on it), and refuses a row "
    "without an image",
    "PPChart2TableProcessor": "PP-Chart2Table is a single-task chart parser: its processor expands no image "
    "placeholder (it has no `image_token`), so the text must already hold every image token, as its fixed "
    "'Chart to table' prompt does, and it refuses a row without an image",
}


def refuse_prompt_building_processor(processor) -> None:
    """Raise `ValueError`, with what to do instead, for a processor that builds its model's prompt itself
    (`PROMPT_BUILDING_PROCESSORS`)."""
    name = type(processor).__name__
    if name in PROMPT_BUILDING_PROCESSORS:
        raise ValueError(
            f"{name}: {PROMPT_BUILDING_PROCESSORS[name]}. vlsft's conversation path cannot build its inputs, so vlsft "
            "does not train it; fine-tune it on the processor's own prompt followed by the answer (labels masked up to "
            "the answer, e.g. with transformers' `Trainer`), or train a chat OCR family on vlsft instead "
            "(Granite-Docling, LightOnOCR, HunyuanOCR)."
        )


def refuse_processor_outside_chat(processor) -> None:
    """Raise `ValueError`, with what to do instead, for a processor no conversation can go through: a prefix-LM's
    (`refuse_prefix_lm`) or one that builds its model's prompt itself (`refuse_prompt_building_processor`)."""
    refuse_prefix_lm(processor)
    refuse_prompt_building_processor(processor)


# Processors that cannot batch a row without images with rows with images, and why.
NO_MIXED_BATCHES = {
    "MllamaProcessor": "its image processor fails on a batch whose first row has no image and leaves rows without "
    "images out of `aspect_ratio_ids` (transformers 5), which the model then cannot match with `pixel_values`",
}


def mixed_batch_problem(processor, images: list[list]) -> tuple[int, str] | None:
    """(the first row without images, why) where `processor` cannot batch it with the batch's rows with images
    (`NO_MIXED_BATCHES`), else None."""
    name = type(processor).__name__
    if name not in NO_MIXED_BATCHES or all(images) or not any(images):
        return None
    return next(i for i, row in enumerate(images) if not row), (
        f"this row has no image while other rows of its batch have: {name} cannot batch them "
        f"({NO_MIXED_BATCHES[name]}). "
        "Give every row an image, train rows without images in a run of their own, or use "
        "per_device_train_batch_size=1 (with gradient_accumulation_steps for the same batch)"
    )


def generic_family(processor, end_of_turn: str) -> Family:
    """The record of `processor`'s family for the generic path; `end_of_turn` is the token that ends an assistant
    turn of its chat template (`vlsft.generic_masks.end_of_turn_token`)."""
    name = type(processor).__name__
    image_token = image_placeholder(processor)
    if not isinstance(image_token, str) or not image_token:
        raise ValueError(
            f"{name} has no `image_token`: vlsft's generic path expands images through the processor's own "
            "placeholder and `replace_image_token`; this processor does not follow transformers 5's multimodal "
            "processor conventions."
        )
    media = [
        getattr(processor, attribute, None) or getattr(processor.tokenizer, attribute, None)
        for attribute in _MEDIA_TOKEN_ATTRIBUTES
    ]
    if processor.tokenizer.convert_tokens_to_ids(image_token) in (None, processor.tokenizer.unk_token_id):
        media += replacement_tokens(processor)  # the placeholder is plain text: the image is its replacement's tokens
    vision_tokens = tuple(dict.fromkeys([*processor.all_special_multimodal_tokens, *(t for t in media if isinstance(t, str))]))
    # The map of image tokens some models take (3D rope positions); `token_type_ids` only where the processor returns
    # its token-type map under that name (Gemma 3n renames it), never where it is a tokenizer's segment ids.
    inputs = set(processor.model_input_names)
    image_map_key = "mm_token_type_ids" if "mm_token_type_ids" in inputs else None
    if image_map_key is None and "token_type_ids" in inputs and getattr(processor, "return_mm_token_type_ids", False):
        image_map_key = "token_type_ids"
    return Family(
        name=f"{GENERIC_PREFIX}{name}",
        display_name=f"{name} (generic path)",
        stock_template="",
        training_template=None,
        processor_class=name,
        model_types=(),
        vision_tokens=vision_tokens,
        image_token=image_token,
        end_of_turn=end_of_turn,
        parts=GENERIC_PARTS,
        image_map_key=image_map_key,
        unsupported_media=("video", "audio", "input_audio"),
    )

"""The `Family` record of a model vlsft has no record for, read off its processor and its stock chat template.

A model outside `vlsft.families.FAMILIES` trains on the generic exact path: its masks come from the
incremental-rendering rule (`vlsft.generic_masks`) on its own stock template, its images expand through its
processor's own `replace_image_token` text (tokenized in context, as the processor does), and its parts are found by
transformers' naming conventions (`vlsft.model_parts`). What the collator needs to know of the family is read here:
the placeholder (`processor.image_token`), the multimodal tokens never supervised, the end-of-turn token (from the
template's rendering of a probe conversation) and the name of the per-token image map the processor returns.
Videos are not collated on this path: a row with one is refused by name.
"""

from __future__ import annotations

from vlsft.families import Family, ModelParts
from vlsft.model_parts import PROJECTOR_NAMES, VISION_TOWER_NAMES

# The processor attributes that name a token around or inside an image or video (begin/end of image markers).
_MEDIA_TOKEN_ATTRIBUTES = (
    "boi_token", "eoi_token", "image_start_token", "image_end_token", "start_image_token", "end_image_token",
    "image_break_token", "video_start_token", "video_end_token",
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


def generic_family(processor, end_of_turn: str) -> Family:
    """The record of `processor`'s family for the generic path; `end_of_turn` is the token that ends an assistant
    turn of its chat template (`vlsft.generic_masks.end_of_turn_token`)."""
    name = type(processor).__name__
    image_token = getattr(processor, "image_token", None)
    if not isinstance(image_token, str) or not image_token:
        raise ValueError(
            f"{name} has no `image_token`: vlsft's generic path expands images through the processor's own "
            "placeholder and `replace_image_token`; this processor does not follow transformers 5's multimodal "
            "processor conventions."
        )
    media = [getattr(processor, attribute, None) for attribute in _MEDIA_TOKEN_ATTRIBUTES]
    vision_tokens = tuple(dict.fromkeys([*processor.all_special_multimodal_tokens, *(t for t in media if isinstance(t, str))]))
    # The map of image tokens some models take (3D rope positions); never `token_type_ids`, which many tokenizers
    # list for segment ids.
    image_map_key = "mm_token_type_ids" if "mm_token_type_ids" in set(processor.model_input_names) else None
    return Family(
        name=f"{GENERIC_PREFIX}{name}",
        display_name=f"{name} (generic path)",
        stock_template="",
        training_template="",
        processor_class=name,
        model_types=(),
        vision_tokens=vision_tokens,
        image_token=image_token,
        end_of_turn=end_of_turn,
        parts=GENERIC_PARTS,
        image_map_key=image_map_key,
        unsupported_media=("video", "audio", "input_audio"),
    )

"""Checks of a row's images and videos as the training collator would take them: as many images (videos) as
placeholders, each one decodable (videos: their sampled frames), and every placeholder rendered by the chat template.
Each returns the problems it finds as sentences that say the fix; empty when there is none.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from vlsft.collation.rendering import RenderedRow
from vlsft.collator import VisionChatCollator
from vlsft.data.rows import (
    ImageLoadError,
    count_image_placeholders,
    count_video_placeholders,
    is_image_item,
    load_image,
    placeholder_mismatch,
    row_images,
    row_videos,
)
from vlsft.data.video import VideoLoadError

# Roles whose image placeholders the known chat templates render (Qwen3-VL drops images in system/assistant turns).
IMAGE_ROLES = ("user", "tool")


def image_problems(row: dict[str, Any], image_root: str | None) -> tuple[list[str], list[Image.Image | None]]:
    """(problems, decoded images or None where one fails): one image per placeholder, every image decodable."""
    values = row_images(row)
    mismatch = placeholder_mismatch("image", count_image_placeholders(row["messages"]), len(values))
    problems = [mismatch] if mismatch else []
    images = []
    for number, value in enumerate(values):
        try:
            images.append(load_image(value, image_root))  # a full decode: corrupt data fails here
        except ImageLoadError as error:
            images.append(None)
            problems.append(_image_problem(number, error))
    return problems, images


def _image_problem(number: int, error: ImageLoadError) -> str:
    cause = error.__cause__
    if isinstance(cause, FileNotFoundError):
        return f"image {number} not found: {cause.filename}"
    if cause is not None:
        return f"image {number} cannot be decoded ({type(cause).__name__}: {cause})"
    return f"image {number}: {error}"


def image_rendering_problem(row: dict[str, Any], rendered: RenderedRow, collator: VisionChatCollator) -> str:
    """Why the rendered row holds another number of image tokens than the row has placeholders (and images), or "":
    text that spells out the image token, or placeholders in a role the chat template does not render."""
    messages = row["messages"]
    placeholders = count_image_placeholders(messages)
    rendered_count = rendered.input_ids.count(collator.image_token_id)
    if placeholders != len(row_images(row)) or rendered_count == placeholders:
        return ""  # matched, or already reported as a placeholder/image mismatch
    if rendered_count > placeholders:
        token = collator.processor.tokenizer.convert_ids_to_tokens(collator.image_token_id)
        return (
            f"the text spells out the image token {token} {rendered_count - placeholders} time(s) beyond the "
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
        f"the chat template renders {rendered_count} of {placeholders} image placeholder(s){where}; "
        "put images in user or tool messages"
    )


def video_problems(
    row: dict[str, Any], collator: VisionChatCollator, rendered: RenderedRow | None = None
) -> tuple[list[str], list[int]]:
    """(problems, tokens per video): the placeholders match the videos and render, each video exists and its
    sampled frames decode, there are enough of them for a temporal patch, and the tokens each expands to (counted
    from its frame count and size). Every video is decoded (its sampled frames only) so a corrupt one fails here."""
    values = row_videos(row)
    placeholders = count_video_placeholders(row["messages"])
    if not values and not placeholders:
        return [], []
    if getattr(collator, "video_token", None) is None:
        return [f"{collator.family.display_name} is not trained on videos by vlsft; remove the row's videos"], []
    problems, tokens = [], []
    mismatch = placeholder_mismatch("video", placeholders, len(values))
    if mismatch:
        problems.append(mismatch)
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

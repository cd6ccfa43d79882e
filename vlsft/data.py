"""Rows in TRL's conversational vision format: reading their images and normalising their messages.

A row holds `messages` (content lists with `{"type": "image"}` placeholders, or plain strings) and `images` (a list)
or a single `image`. An image is a PIL image, a file path (absolute, or relative to an image root), or a `datasets`
Image dict (`bytes` and/or `path`).
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image


class ImageLoadError(ValueError):
    """An image could not be read or decoded; the message says which and why."""


def row_images(row: dict[str, Any]) -> list[Any]:
    """The raw image values of a row, in placeholder order: the `images` column, a single `image`, or images given
    inline in the placeholders (`{"type": "image", "image": ...}`)."""
    if row.get("images") is not None:
        return list(row["images"])
    if row.get("image") is not None:
        return [row["image"]]
    return [
        item["image"]
        for message in row.get("messages") or []
        if isinstance(message.get("content"), list)
        for item in message["content"]
        if isinstance(item, dict) and is_image_item(item) and item.get("image") is not None
    ]


def load_image(value: Any, image_root: str | None = None) -> Image.Image:
    """Decode one image value into an RGB PIL image, or raise `ImageLoadError` saying why."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(_resolve(value, image_root))
        elif isinstance(value, dict) and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(_resolve(value["path"], image_root))
        else:
            raise ImageLoadError(f"unsupported image value of type {type(value).__name__}")
        image.load()  # decode now, so a truncated or corrupt file fails here and not inside the processor
    except ImageLoadError:
        raise
    except FileNotFoundError as error:
        raise ImageLoadError(f"image file not found: {error.filename}") from error
    except Exception as error:  # PIL raises several types for undecodable data
        raise ImageLoadError(f"image cannot be decoded ({type(error).__name__}: {error})") from error
    return image if image.mode == "RGB" else image.convert("RGB")


def _resolve(path: str | os.PathLike, image_root: str | None) -> str:
    path = os.fspath(path)
    if image_root and not os.path.isabs(path):
        return os.path.join(image_root, path)
    return path


def is_image_item(item: dict[str, Any]) -> bool:
    return item.get("type") == "image"


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` that the chat template renders as intended.

    Arrow storage gives every content item the union of all keys, with None for the missing ones: an item
    `{"type": "text", "text": "hi", "image": None}` would be taken for an image by templates that test
    `'image' in content`. None-valued keys are dropped, and a None content becomes an empty string.
    """
    normalized = []
    for message in messages:
        message = {key: value for key, value in message.items() if value is not None}
        content = message.get("content")
        if content is None:
            message["content"] = ""
        elif isinstance(content, list):
            message["content"] = [
                {key: value for key, value in item.items() if value is not None and not _is_inline_media(key, item)}
                for item in content
            ]
        normalized.append(message)
    return normalized


def count_image_placeholders(messages: list[dict[str, Any]]) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for item in message["content"]
        if isinstance(item, dict) and is_image_item(item)
    )


# -- videos (decoded in `vlsft.video`) ------------------------------------------------------------------------------


def resolve_path(path: str | os.PathLike, root: str | None) -> str:
    """`path` made absolute against `root` when it is relative and a root is given."""
    return _resolve(path, root)


def is_video_item(item: dict[str, Any]) -> bool:
    return item.get("type") == "video"


def _is_inline_media(key: str, item: dict[str, Any]) -> bool:
    # An inline image or video value is data for the processor, not text for the template.
    return (key == "image" and is_image_item(item)) or (key == "video" and is_video_item(item))


def row_videos(row: dict[str, Any]) -> list[Any]:
    """The raw video values of a row, in placeholder order: the `videos` column, a single `video`, or videos given
    inline in the placeholders (`{"type": "video", "video": ...}`)."""
    if row.get("videos") is not None:
        return list(row["videos"])
    if row.get("video") is not None:
        return [row["video"]]
    return [
        item["video"]
        for message in row.get("messages") or []
        if isinstance(message.get("content"), list)
        for item in message["content"]
        if isinstance(item, dict) and is_video_item(item) and item.get("video") is not None
    ]


def count_video_placeholders(messages: list[dict[str, Any]]) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for item in message["content"]
        if isinstance(item, dict) and is_video_item(item)
    )

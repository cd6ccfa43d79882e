"""Rows in TRL's conversational vision format: reading their images and normalising their messages.

A row holds `messages` (content lists with `{"type": "image"}` placeholders, or plain strings) and `images` (a list)
or a single `image`. An image is a PIL image, a file path (absolute, or relative to an image root), or a `datasets`
Image dict (`bytes` and/or `path`).
"""

from __future__ import annotations

import io
import os
import stat
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from transformers.image_transforms import convert_to_rgb

# Image values that name a remote resource: vlsft never fetches them (a training run must not depend on the network).
REMOTE_PREFIXES = ("http://", "https://", "file://", "s3://", "gs://", "hf://")
# PIL modes whose pixels are wider than 8 bits. `Image.convert("RGB")` clips them at 255 (a 16-bit photo comes out
# nearly all white, in the image processors too), so they are scaled to 8 bits first (`_to_8_bit`).
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_EXIF_ORIENTATION = 0x0112


class ImageLoadError(ValueError):
    """An image could not be read or decoded; the message says which and why."""


class ImagesNotAListError(ValueError):
    """A row's `images` is a single value (a path, a PIL image) instead of a list of them."""


class VideosNotAListError(ValueError):
    """A row's `videos` is a single value (a path, a frame-list dict) instead of a list of them."""


def row_images(row: dict[str, Any]) -> list[Any]:
    """The raw image values of a row, in placeholder order: the `images` column, a single `image`, or images given
    inline in the placeholders (`{"type": "image", "image": ...}`)."""
    if row.get("images") is not None:
        images = row["images"]
        if not isinstance(images, (list, tuple)):
            # `list("photo.png")` would be 9 one-letter "paths": say what is wrong instead.
            raise ImagesNotAListError(
                f"`images` must be a list, got {type(images).__name__} {repr(images)[:60]}; write "
                "`images: [value]` for one image (or use the singular `image` column)"
            )
        return list(images)
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
    """Decode one image value into an upright RGB PIL image, exactly as the families' image processors convert a PIL
    image (`do_convert_rgb`: transparency composited onto white), or raise `ImageLoadError` saying why.

    Every route (PIL image, path, bytes, `datasets` Image dict) applies the EXIF orientation, as `datasets`' Image
    feature does, so a phone photo trains upright whichever way it arrives. Pixels wider than 8 bits (16-bit or 32-bit
    grayscale, float) are scaled to 8 bits first, or refused when their range is not an image's.
    """
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (str, os.PathLike)):
            image = _open_file(value, image_root)
        elif isinstance(value, dict) and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = _open_file(value["path"], image_root)
        else:
            raise ImageLoadError(f"unsupported image value of type {type(value).__name__}")
        image.load()  # decode now, so a truncated or corrupt file fails here and not inside the processor
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)  # a copy without the orientation tag: applying it twice is a no-op
        if image.mode in HIGH_BIT_DEPTH_MODES:
            image = _to_8_bit(image)
    except ImageLoadError:
        raise
    except FileNotFoundError as error:
        raise ImageLoadError(f"image file not found: {error.filename}") from error
    except Exception as error:  # PIL raises several types for undecodable data
        raise ImageLoadError(f"image cannot be decoded ({type(error).__name__}: {error})") from error
    return image if image.mode == "RGB" else Image.fromarray(convert_to_rgb(image, return_numpy=True))


def refuse_remote(text: str | bytes, kind: str, error: type[ValueError]) -> None:
    """Raise `error` if the path `text` names a remote `kind` ("image", "video"): vlsft never fetches one."""
    if isinstance(text, str) and text.lower().startswith(REMOTE_PREFIXES):
        raise error(
            f"{text} is a remote {kind}, and vlsft does not fetch remote {kind}s: download it and pass its local path "
            "(or its bytes as `{'bytes': ...}`)"
        )


def _open_file(path: str | os.PathLike, image_root: str | None) -> Image.Image:
    text = os.fspath(path)
    refuse_remote(text, "image", ImageLoadError)
    resolved = resolve_path(text, image_root)
    # `Image.open` on a FIFO or a device blocks or reads forever: only regular files (after symlinks) are images.
    mode = os.stat(resolved).st_mode  # FileNotFoundError for a missing file or a dangling link
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ImageLoadError(f"image path {resolved} is {kind}; an image must be a regular file")
    return Image.open(resolved)


def _to_8_bit(image: Image.Image) -> Image.Image:
    """A grayscale image with pixels wider than 8 bits as an 8-bit `L` image, scaled by its type's range: 16-bit
    integers by 65535, 32-bit integers by 255 if they fit there else by 65535, floats by 1.0 if they fit in [0, 1]
    else by 255. Values outside every such range (negative, or beyond 16 bits) are refused: no scale is right."""
    pixels = np.asarray(image)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    elif image.mode == "I":
        full_scale = 255.0 if high <= 255 else 65535.0
    else:
        full_scale = 1.0 if high <= 1.0 else 255.0
    if low < 0 or high > full_scale or not np.isfinite(pixels).all():
        raise ImageLoadError(
            f"{image.mode} image with pixel values in [{low:g}, {high:g}], outside every range vlsft can scale to "
            "8 bits ([0, 1] or [0, 255] for float, [0, 255] or [0, 65535] for integers); convert it to an 8-bit "
            "image (L or RGB) with the scaling you mean"
        )
    scaled = np.rint(pixels.astype(np.float64) * (255.0 / full_scale)).astype(np.uint8)
    return Image.fromarray(scaled)  # 2-D uint8: mode L


def resolve_path(path: str | os.PathLike, root: str | None) -> str:
    """`path` joined to `root` when it is relative and a root is given (images, videos, and their file stats)."""
    path = os.fspath(path)
    if root and not os.path.isabs(path):
        return os.path.join(root, path)
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
    """The `{"type": "image"}` items of the messages (in every role, rendered or not)."""
    return _count_content_items(messages, is_image_item)


def placeholder_mismatch(kind: str, placeholders: int, values: int) -> str:
    """Why a row's `placeholders` of `kind` ("image" or "video") do not match its `values` of that kind, or "" when
    they do. The one wording of this problem, which the collator raises and validation reports (and counts by kind
    in its skip summary)."""
    return "" if placeholders == values else f"{placeholders} {kind} placeholder(s) but {values} {kind}(s)"


def _count_content_items(messages: list[dict[str, Any]], is_kind) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for item in message["content"]
        if isinstance(item, dict) and is_kind(item)
    )


# -- videos (decoded in `vlsft.data.video`) ------------------------------------------------------------------------------


def is_video_item(item: dict[str, Any]) -> bool:
    return item.get("type") == "video"


def _is_inline_media(key: str, item: dict[str, Any]) -> bool:
    # An inline image or video value is data for the processor, not text for the template.
    return (key == "image" and is_image_item(item)) or (key == "video" and is_video_item(item))


def row_videos(row: dict[str, Any]) -> list[Any]:
    """The raw video values of a row, in placeholder order: the `videos` column, a single `video`, or videos given
    inline in the placeholders (`{"type": "video", "video": ...}`)."""
    if row.get("videos") is not None:
        videos = row["videos"]
        if not isinstance(videos, (list, tuple)):
            # `list("clip.mp4")` would be 8 one-letter paths, `list({"frames": ..., "fps": 2})` two: say what is wrong.
            raise VideosNotAListError(
                f"`videos` must be a list, got {type(videos).__name__} {repr(videos)[:60]}; write `videos: [value]` "
                "for one video (a frame list `{frames: [...], fps: N}` is one video), or use the singular `video` column"
            )
        return list(videos)
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
    """The `{"type": "video"}` items of the messages (in every role, rendered or not)."""
    return _count_content_items(messages, is_video_item)

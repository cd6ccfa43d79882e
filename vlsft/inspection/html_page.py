"""The HTML page of `vlsft inspect --html`: self-contained, supervised tokens highlighted, images inline where their
tokens are (tiled images above the text), each video's sampled frames in a strip with their timestamps."""

from __future__ import annotations

import base64
import html as html_lib
import io

from vlsft.inspection.views import RowView, VideoView, summary

# The highlight of supervised tokens in the HTML view (a test looks for it in a browser screenshot).
SUPERVISED_COLOUR = "#ffd84d"
# Thumbnails in the HTML page are at most this many pixels on their longest side.
THUMBNAIL_SIZE = 384


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #1d1d1f; background: #ffffff; }}
section {{ border: 1px solid #d0d0d7; border-radius: 6px; padding: 12px 16px; margin-bottom: 20px; }}
h2 {{ font-size: 16px; margin: 0 0 4px 0; }}
.stats {{ color: #555; font-size: 13px; margin-bottom: 10px; }}
.problem {{ color: #b00020; font-weight: bold; margin-bottom: 8px; }}
.tokens {{ font-family: monospace; font-size: 14px; white-space: pre-wrap; line-height: 1.6; }}
.sup {{ background: {colour}; border-radius: 2px; }}
.ctx {{ color: #8a8a93; text-decoration: line-through; border: 1px dashed #b0b0b8; border-radius: 2px; }}
.w {{ color: #a1127a; font-size: 11px; font-weight: bold; vertical-align: super; }}
figure {{ display: inline-block; vertical-align: middle; margin: 4px 6px; text-align: center; }}
figure img {{ display: block; min-width: 96px; max-width: {thumb}px; max-height: {thumb}px; image-rendering: pixelated;
  border: 1px solid #888; }}
figcaption {{ font-size: 11px; color: #555; }}
.tile {{ color: #0b6e99; }}
.video {{ display: block; border-left: 3px solid #0b6e99; padding-left: 6px; margin: 4px 0; }}
.video figure img.frame {{ min-width: 64px; max-width: 128px; max-height: 128px; }}
.legend {{ font-size: 13px; margin-bottom: 16px; }}
</style></head><body>
<h1>{title}</h1>
<div class="legend"><span class="sup">highlighted</span> tokens are supervised (the loss is computed on them), each
run with its loss weight <span class="w">w=…</span> in rows with per-turn weights; <span class="ctx">struck-through</span>
assistant tokens are context only (weight 0); images sit where their tokens are.</div>
{rows}
</body></html>
"""


def _data_uri(image) -> str:
    image = image.copy()
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_html(views: list[RowView], title: str = "vlsft inspect") -> str:
    """A self-contained HTML page of the rows: supervised tokens highlighted, images inline."""
    sections = []
    for view in views:
        body = []
        if view.problem:
            body.append(f'<div class="problem">{html_lib.escape(view.problem)}</div>')
        tokens = []
        shown_videos: set[int] = set()
        for segment in view.segments:
            text = html_lib.escape(segment.text)
            if segment.video is not None:
                if segment.video not in shown_videos and segment.video < len(view.videos):
                    shown_videos.add(segment.video)
                    tokens.append(_video_strip(segment.video, view.videos[segment.video]))
                tokens.append(f'<span class="tile">[{text}]</span>')
            elif segment.is_image and segment.image is None:
                tokens.append(f'<span class="tile">[{text}]</span>')
            elif segment.is_image:
                caption = f"image {segment.image} · {segment.text}"
                if segment.image < len(view.images):
                    width, height = view.image_sizes[segment.image]
                    caption = f"image {segment.image} · {width}×{height} · {segment.num_tokens} tokens"
                    tokens.append(
                        f'<figure><img src="{_data_uri(view.images[segment.image])}" alt="image {segment.image}">'
                        f"<figcaption>{html_lib.escape(caption)}</figcaption></figure>"
                    )
                else:
                    tokens.append(f"<figure><figcaption>{html_lib.escape(caption)}</figcaption></figure>")
            elif segment.supervised:
                weight = f'<span class="w">w={segment.weight:g}</span>' if view.weighted else ""
                tokens.append(f'<span class="sup" data-weight="{segment.weight:g}">{text}</span>{weight}')
            elif segment.context:
                tokens.append(f'<span class="ctx" title="context only: weight 0">{text}</span>')
            else:
                tokens.append(text)
        if view.images and not view.image_tokens:
            # Tiled images (several runs of tokens each) cannot be put at one place in the text: shown above it.
            body.append("".join(
                f'<figure><img src="{_data_uri(image)}" alt="image {number}"><figcaption>image {number} · '
                f"{image.width}×{image.height}</figcaption></figure>"
                for number, image in enumerate(view.images)
            ))
        if tokens:
            body.append(f'<div class="tokens">{"".join(tokens)}</div>')
        stats = html_lib.escape(summary(view)) if view.segments else ""
        sections.append(
            f'<section id="row-{view.index}"><h2>row {view.index}</h2><div class="stats">{stats}</div>{"".join(body)}</section>'
        )
    return _PAGE.format(title=html_lib.escape(title), colour=SUPERVISED_COLOUR, thumb=THUMBNAIL_SIZE, rows="\n".join(sections))


def _video_strip(number: int, video: VideoView) -> str:
    """A video's sampled frames side by side, each with its timestamp under it."""
    frames = "".join(
        f'<figure><img src="{_data_uri(frame)}" alt="video {number} at {time:.1f} s" class="frame">'
        f"<figcaption>{time:.1f} s</figcaption></figure>"
        for frame, time in zip(video.frames, video.timestamps)
    )
    caption = (f"video {number} · {len(video.frames)} frames · {video.size[0]}×{video.size[1]} · "
               f"{video.video_tokens} video tokens ({video.total_tokens} with timestamps and markers)")
    return f'<div class="video" id="video-{number}">{frames}<div class="stats">{html_lib.escape(caption)}</div></div>'

"""The embedded demo dataset: coloured shapes drawn with PIL, and questions about them in TRL's conversational format.

Nothing is downloaded. `load_demo_split("train", rows=..., seed=0)` draws `rows` scenes and conversations, the same
ones on every machine for the same arguments. A scene is a 64x64 picture split into a 2x2 grid; each of 1-4 cells
holds one shape (circle, square or triangle) of a distinct colour (one cell for colour and shape questions). With the tiny processor (16 px patches merged
2x2) a 64x64 picture is 4 image tokens, one per grid cell, so each question is answerable from a handful of tokens.

Row kinds (the `kind` column):
- `colour`, `shape`: one question about a picture of one shape, one short answer (does the model see?);
- `count`, `position`: one question about a picture of 1-4 shapes, one short answer;
- `multi_turn`: two or three questions about the same picture, each answered in turn;
- `tool`: the assistant calls the `zoom` tool on one cell, the tool response carries the enlarged cell as an image,
  and the assistant then answers. These rows carry a `tools` list (the tool's JSON schema).

Every row ends with an assistant turn whose text is the reference answer, which is what `vlsft.answer_eval` scores.
The `length` column is a coarse size of the row (see `row_length`), which the Trainer's
`train_sampling_strategy="group_by_length"` uses to batch rows of similar length: a tool row renders the whole tool
prompt and is ten times longer than a question about a picture, and padding most batches to it would waste most of
the compute.
The `eval` split is drawn from the same distribution with a different seed.
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
CELL_SIZE = IMAGE_SIZE // 2
BACKGROUND = (255, 255, 255)
# Four well-separated colours: with more, a tiny random model needs many more steps to tell them apart.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
}
SHAPES = ("circle", "square", "triangle")
# Side of a shape's bounding box in pixels, within a 32-pixel cell: large shapes give clear image tokens.
SHAPE_SIZE = (24, 30)
# Cells of the 2x2 grid, in reading order, by the name used in questions, answers and tool arguments.
CELLS = ("top left", "top right", "bottom left", "bottom right")

ZOOM_TOOL = {
    "type": "function",
    "function": {
        "name": "zoom",
        "description": "Zoom into one quarter of the image.",
        "parameters": {
            "type": "object",
            "properties": {"region": {"type": "string", "enum": list(CELLS)}},
            "required": ["region"],
        },
    },
}

# Share of each kind of row. Single questions teach the four skills; multi-turn and tool rows exercise the
# conversation shapes whose masking vlsft must get right. Shape outweighs colour: colour is read off in the first
# 250 steps, shape takes longer (with colour 3 : shape 2, one run ended at 74% on shape, against 100% at 2 : 3).
KIND_WEIGHTS = {"colour": 2, "shape": 3, "count": 2, "position": 2, "multi_turn": 2, "tool": 2}
# Kinds asked about a picture of a single shape (see `make_row`).
SEEING_KINDS = ("colour", "shape")
SPLIT_SALT = {"train": "train", "eval": "eval", "validation": "eval", "test": "test"}
CACHE_VERSION = 5
DEFAULT_ROWS = 512
LENGTH_BUCKET = 256


# -- pictures --------------------------------------------------------------------------------------------------------


def draw_scene(rng: random.Random, count: int | None = None) -> tuple[Image.Image, dict[str, tuple[str, str]]]:
    """A 64x64 picture and its content: {cell name: (colour, shape)} for `count` occupied cells (1-4 at random by
    default)."""
    count = rng.randint(1, len(CELLS)) if count is None else count
    cells = sorted(rng.sample(range(len(CELLS)), count))
    colours = rng.sample(sorted(COLOURS), count)  # distinct, so "the red shape" names one shape
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    content = {}
    for cell, colour in zip(cells, colours):
        shape = rng.choice(SHAPES)
        left, top = (cell % 2) * CELL_SIZE, (cell // 2) * CELL_SIZE
        size = rng.randint(*SHAPE_SIZE)
        x = left + rng.randint(1, CELL_SIZE - size - 1)
        y = top + rng.randint(1, CELL_SIZE - size - 1)
        _draw_shape(draw, shape, (x, y, x + size, y + size), COLOURS[colour])
        content[CELLS[cell]] = (colour, shape)
    return image, content


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]):
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def zoom(image: Image.Image, region: str) -> Image.Image:
    """The `zoom` tool: one cell of the grid, enlarged to the full picture size."""
    cell = CELLS.index(region)
    left, top = (cell % 2) * CELL_SIZE, (cell // 2) * CELL_SIZE
    return image.crop((left, top, left + CELL_SIZE, top + CELL_SIZE)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST)


# -- questions -------------------------------------------------------------------------------------------------------


def ask(rng: random.Random, kind: str, content: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """A (question, answer) pair of one kind about a scene."""
    region = rng.choice(sorted(content))
    colour, shape = content[region]
    if kind == "colour":
        return f"What colour is the shape in the {region}?", colour
    if kind == "shape":
        if rng.random() < 0.5:
            return f"What shape is the {colour} one?", shape
        return f"What shape is in the {region}?", shape
    if kind == "count":
        return "How many shapes are there?", str(len(content))
    if kind == "position":
        return f"Where is the {colour} {shape}?", region
    raise ValueError(f"unknown question kind {kind!r}")


def _user(text: str, with_image: bool = False) -> dict[str, Any]:
    content = [{"type": "image"}] if with_image else []
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def make_row(rng: random.Random, kind: str) -> dict[str, Any]:
    """One conversation of the given kind about a fresh scene. Single colour and shape questions are asked about a
    picture of one shape: they test whether the model sees colour and shape. Binding a region or a colour named in the
    question to one of several shapes is what position questions, multi-turn rows (and zooming, which crops one shape
    out) exercise; a tiny model from scratch hardly learns that binding in the demo's budget (docs/quickstart.md, "Try it")."""
    image, content = draw_scene(rng, count=1 if kind in SEEING_KINDS else None)
    images, tools = [image], None
    if kind in ("colour", "shape", "count", "position"):
        question, answer = ask(rng, kind, content)
        messages = [_user(question, with_image=True), _assistant(answer)]
    elif kind == "multi_turn":
        kinds = rng.sample(["colour", "shape", "count", "position"], rng.randint(2, 3))
        messages = []
        for turn, question_kind in enumerate(kinds):
            question, answer = ask(rng, question_kind, content)
            messages += [_user(question, with_image=turn == 0), _assistant(answer)]
    elif kind == "tool":
        region = rng.choice(sorted(content))
        colour, shape = content[region]
        question, answer = rng.choice(
            [(f"Zoom in: what shape is in the {region}?", shape), (f"Zoom in: what colour is in the {region}?", colour)]
        )
        images.append(zoom(image, region))
        tools = [ZOOM_TOOL]
        messages = [
            _user(question, with_image=True),
            {
                "role": "assistant",
                "content": [],
                "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": {"region": region}}}],
            },
            {"role": "tool", "name": "zoom", "content": [{"type": "image"}, {"type": "text", "text": f"The {region}."}]},
            _assistant(answer),
        ]
    else:
        raise ValueError(f"unknown row kind {kind!r}; known: {', '.join(KIND_WEIGHTS)}")
    return {"messages": messages, "images": images, "tools": tools, "kind": kind, "length": row_length(messages, tools)}


def row_length(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """Characters of the messages and tool schemas, rounded up to a multiple of `LENGTH_BUCKET`. The rounding puts
    every single question in one bucket, so that grouping by length still batches the kinds of question together
    at random and only sets the long multi-turn and tool rows apart."""
    size = len(json.dumps(messages)) + len(json.dumps(tools))
    return -(-size // LENGTH_BUCKET) * LENGTH_BUCKET


def generate_rows(rows: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """`rows` conversations, identical for the same (rows, seed, split) on every machine."""
    if split not in SPLIT_SALT:
        raise ValueError(f"unknown demo split {split!r}; use one of {', '.join(SPLIT_SALT)}")
    if rows < 1:
        raise ValueError(f"`rows` must be >= 1, got {rows}")
    # A string seed is hashed with SHA-512 by `random`, so it does not depend on PYTHONHASHSEED.
    rng = random.Random(f"demo-shapes/{SPLIT_SALT[split]}/{seed}")
    kinds, weights = zip(*KIND_WEIGHTS.items())
    return [make_row(rng, rng.choices(kinds, weights)[0]) for _ in range(rows)]


def load_demo_split(split: str = "train", rows: int | None = None, seed: int = 0, cache_dir: str | None = None):
    """The demo dataset as a `datasets.Dataset` (columns `messages`, `images`, `tools`, `kind`, `length`).

    Args:
        split: `"train"` or `"eval"` (`"validation"` is the same as `"eval"`; `"test"` is a third draw).
        rows: number of conversations (default `DEFAULT_ROWS`).
        seed: the same seed gives the same rows; the splits never share their random stream.
        cache_dir: if given, the generated split is saved there and loaded on the next call.
    """
    import datasets

    rows = DEFAULT_ROWS if rows is None else rows

    def build():
        return datasets.Dataset.from_list(generate_rows(rows, seed, split))

    if cache_dir is None:
        return build()
    path = os.path.join(cache_dir, f"demo-shapes-v{CACHE_VERSION}-{SPLIT_SALT[split]}-{rows}-{seed}")
    if os.path.isdir(path):
        return datasets.load_from_disk(path)
    dataset = build()
    dataset.save_to_disk(path)
    return dataset


def tokenizer_corpus(leave_out: list[str], rows: int = 300, seed: int = 0) -> list[str]:
    """The demo's text as the stock Qwen3-VL template renders it (questions, answers, the tool prompt and tool calls),
    with the special tokens `leave_out` taken out, for a tiny tokenizer to learn its words from. A real tokenizer knows these
    words already; without this the tiny one spells "purple" and the tool prompt out in short fragments, which makes
    the tool rows ten times longer than the others."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from vlsft.templates import stock_template

    special = re.compile("|".join(re.escape(token) for token in leave_out))
    texts = []
    for row in generate_rows(rows, seed=seed, split="test"):
        rendered, _ = render_jinja_template(
            [row["messages"]], tools=row["tools"], chat_template=stock_template("qwen3_vl")
        )
        texts.extend(piece for piece in special.split(rendered[0]) if piece.strip())
    return texts


def describe(row: dict[str, Any]) -> str:
    """A one-line summary of a row's turns, for printing examples."""
    parts = []
    for message in row["messages"]:
        content = message.get("content") or []
        text = " ".join(item.get("text") or "[image]" for item in content) if isinstance(content, list) else content
        if message.get("tool_calls"):
            call = message["tool_calls"][0]["function"]
            text = f"{call['name']}({call['arguments']})"
        parts.append(f"{message['role']}: {text}")
    return " | ".join(parts)


__all__ = ["load_demo_split", "generate_rows", "draw_scene", "zoom", "ZOOM_TOOL", "describe", "tokenizer_corpus"]

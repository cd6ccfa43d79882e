"""The video demo's data: short mp4 clips of a coloured square crossing the frame, and "which way does the square
move?" questions about them, written as a local JSONL dataset (`messages` + `videos` paths relative to the file).

    python -m vlsft.testing.demo_video outputs/demo-video-data      # writes train.jsonl, eval.jsonl and clips/

`recipes/demo_video.yaml` trains the tiny Qwen3-VL on it (`make demo-video`). Each clip is 6 frames of 64x64 at
3 fps; Qwen3-VL samples 4 of them (its 2 fps, at least 4 frames), two temporal patches of 2x2 merged tokens. The
answer is one word of four, so guessing scores 25%. The same files come out on every machine for the same arguments.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from vlsft.testing.tiny_video import write_moving_shape

QUESTION = "Which way does the square move?"
DIRECTIONS = ("right", "left", "down", "up")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (240, 210, 20)}
CLIP_FRAMES, CLIP_FPS, CLIP_SIZE = 8, 4, (64, 64)
SPLIT_SEEDS = {"train": 0, "eval": 1}


def answer(direction: str) -> str:
    return f"It moves {direction}."


def write_split(directory: Path, split: str, rows: int, seed: int = 0) -> Path:
    """`rows` clips under `directory/clips/` and `directory/<split>.jsonl` asking about them."""
    rng = random.Random(f"{seed}-{SPLIT_SEEDS[split]}")
    (directory / "clips").mkdir(parents=True, exist_ok=True)
    path = directory / f"{split}.jsonl"
    with open(path, "w") as file:
        for number in range(rows):
            direction = DIRECTIONS[rng.randrange(len(DIRECTIONS))]
            colour = rng.choice(list(COLOURS))
            clip = f"clips/{split}-{number:05d}.mp4"
            write_moving_shape(directory / clip, CLIP_FRAMES, CLIP_FPS, CLIP_SIZE, direction, color=COLOURS[colour])
            row = {
                "messages": [
                    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer(direction)}]},
                ],
                "videos": [clip],
                "direction": direction,
            }
            file.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the video demo's clips and JSONL files.")
    parser.add_argument("directory", help="where train.jsonl, eval.jsonl and clips/ go")
    parser.add_argument("--train-rows", type=int, default=512)
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    for split, rows in (("train", args.train_rows), ("eval", args.eval_rows)):
        print(f"wrote {write_split(directory, split, rows, args.seed)} ({rows} clips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

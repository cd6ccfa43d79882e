"""Video collate time: vlsft's collator vs the processor's own `apply_chat_template`, on rows with 1 and 4 short videos.

    python benchmarks/video_collate.py [--rows 2] [--reps 20] [--size 224] [--seconds 4] [--fps 24] [--threads 1]

Both sides get the same rows and end with identical `input_ids`, `pixel_values_videos`, `video_grid_thw` (checked).
Decoding is timed on its own, so the collate columns compare the same work:
- vlsft collate: `VisionChatCollator` on already decoded videos (its `load_videos` returns the frames decoded
  beforehand), i.e. sampling indices, the video processor, the replacement text, rendering, tokenizing, masking;
- processor: `Qwen3VLProcessor.apply_chat_template(..., tokenize=True)` with each video given as its full decoded
  frame array and its metadata (it samples the frames itself), the stock template;
- decode, vlsft: `vlsft.data.video.load_video` (probe the packets, seek to and decode only the sampled frames);
- decode, transformers: `transformers.video_utils.load_video(backend="pyav")` for the same frames (decodes from the
  start up to the last sampled frame), and for every frame (what the processor's path above needs).

Model side: the real Qwen3-VL video processor (`Qwen3VLVideoProcessor()` defaults: 2 fps, 16 px patches, 2x2 merge,
at most 32 x 32 x 768 pixels per video) with vlsft's tiny Qwen3-VL tokenizer. Videos: H.264 mp4 clips of a moving
square, `--size` px square, `--seconds` long at `--fps`.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2, help="rows per batch")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per side")
    parser.add_argument("--size", type=int, default=224, help="video width and height in pixels")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length")
    parser.add_argument("--fps", type=int, default=24, help="clip frame rate")
    parser.add_argument("--videos", default="1,4", help="videos per row, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from transformers import Qwen3VLVideoProcessor
    from transformers.video_utils import load_video as transformers_load_video

    from vlsft.collator import VisionChatCollator
    from vlsft.templates import stock_template, training_template
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl_processor
    from vlsft.testing.tiny_video import write_moving_shape
    from vlsft.data.video import LoadedVideo, load_video, probe_video

    torch.set_num_threads(args.threads)
    processor = build_tiny_qwen3_vl_processor()
    processor.video_processor = Qwen3VLVideoProcessor(cap_pixels_per_frame=False)
    collator = VisionChatCollator(processor, training_template("qwen3_vl"))
    workdir = Path(tempfile.mkdtemp(prefix="vlsft-video-bench-"))
    frames_per_clip = int(args.seconds * args.fps)
    directions = ["right", "left", "down", "up"]

    def timed(function, reps):
        function()  # warm-up
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            function()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1000

    def timed_pair(first, second, reps):
        """Medians of two functions timed in alternation (which goes first alternates too), so that a load change
        on a shared machine falls on both."""
        first(), second()  # warm-up
        samples = ([], [])
        for rep in range(reps):
            order = (0, 1) if rep % 2 == 0 else (1, 0)
            for side in order:
                start = time.perf_counter()
                (first, second)[side]()
                samples[side].append(time.perf_counter() - start)
        return statistics.median(samples[0]) * 1000, statistics.median(samples[1]) * 1000

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{args.threads}, load {os.getloadavg()[0]:.2f}")
    print(f"clips: {args.size}x{args.size} px, {args.seconds:g} s at {args.fps} fps ({frames_per_clip} frames, H.264 "
          f"mp4); {args.rows} rows per batch; medians of {args.reps}, the two collate sides "
          "alternating\n")
    header = ("| videos/row | frames sampled/video | tokens/row | vlsft collate (ms) | processor apply_chat_template "
              "(ms) | vlsft / processor | goal | decode vlsft, sampled frames by seeking (ms) | decode transformers "
              "pyav, same frames (ms) | decode transformers pyav, all frames (ms) |")
    lines = [header, "|" + "---:|" * 10]
    for per_row in [int(n) for n in args.videos.split(",")]:
        paths, rows = [], []
        for row_number in range(args.rows):
            row_paths = []
            for video_number in range(per_row):
                path = workdir / f"clip_{per_row}_{row_number}_{video_number}.mp4"
                if not path.exists():
                    write_moving_shape(path, num_frames=frames_per_clip, fps=args.fps, size=(args.size, args.size),
                                       direction=directions[(row_number + video_number) % 4])
                row_paths.append(str(path))
            paths.extend(row_paths)
            content = [{"type": "video"} for _ in row_paths] + [{"type": "text", "text": "Which way does it move?"}]
            rows.append({"messages": [{"role": "user", "content": content},
                                      {"role": "assistant", "content": [{"type": "text", "text": "To the right."}]}],
                         "videos": row_paths})

        # Decoding, on its own.
        decoded = {path: load_video(path, None, collator.sample_video_indices, collator.video_processor.fps)
                   for path in paths}
        indices = {path: decoded[path].metadata.frames_indices for path in paths}
        totals = {path: probe_video(path).total_frames for path in paths}
        decode_ours = timed(lambda: [load_video(p, None, collator.sample_video_indices, 2.0) for p in paths], args.reps)
        decode_same = timed(lambda: [transformers_load_video(p, backend="pyav", sample_indices_fn=lambda metadata, **_:
                                                            np.array(indices[p])) for p in paths], args.reps)
        full = {}
        for path in paths:
            full[path] = transformers_load_video(path, backend="pyav",
                                                 sample_indices_fn=lambda metadata, **_: np.arange(totals[path]))
        decode_all = timed(lambda: [transformers_load_video(p, backend="pyav", sample_indices_fn=lambda metadata, **_:
                                                           np.arange(totals[p])) for p in paths], args.reps)

        # Collation of decoded videos.
        class PreDecoded(VisionChatCollator):
            def load_videos(self, values):
                # The frames as decoded; a fresh metadata object (the processor writes into it).
                return [LoadedVideo(decoded[value].frames, copy.copy(decoded[value].metadata)) for value in values]

        ours_collator = PreDecoded(processor, training_template("qwen3_vl"))

        def processor_side():
            conversations, metadata = [], []
            for row in rows:
                content = []
                for path in row["videos"]:
                    frames, meta = full[path]
                    content.append({"type": "video", "video": frames})
                    metadata.append(copy.copy(meta))
                content.append({"type": "text", "text": "Which way does it move?"})
                conversations.append([{"role": "user", "content": content}, row["messages"][1]])
            return processor.apply_chat_template(
                conversations, chat_template=stock_template("qwen3_vl"), tokenize=True, return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "right", "video_metadata": metadata},
            )

        ours, theirs = ours_collator(rows), processor_side()
        for key in ("input_ids", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids"):
            assert torch.equal(ours[key], theirs[key]), f"{key} differs from the processor's"
        collate_ours, collate_theirs = timed_pair(lambda: ours_collator(rows), processor_side, args.reps)
        ratio = collate_ours / collate_theirs
        frames = len(indices[paths[0]])
        tokens = int(ours["attention_mask"].sum(-1).float().mean())
        lines.append(
            f"| {per_row} | {frames} | {tokens} | {collate_ours:.1f} | {collate_theirs:.1f} | {ratio:.2f}x | "
            f"<= 1.1x: {'met' if ratio <= 1.1 else 'NOT met'} | {decode_ours:.1f} | {decode_same:.1f} | {decode_all:.1f} |"
        )
    print("\n".join(lines))
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

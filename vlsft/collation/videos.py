"""Videos (the Qwen-VL families): sampled and decoded with the processor's own video processor settings, and each
video placeholder expanded on token ids with the processor's own `replace_video_token` text. A mixin of
`vlsft.collator.VisionChatCollator`."""

from __future__ import annotations

import copy
import re
from typing import Any

import torch

from vlsft.collation.rendering import RowError
from vlsft.data.rows import VideosNotAListError, placeholder_mismatch, row_videos
from vlsft.data.video import LoadedVideo, VideoLoadError, load_video
from vlsft.families import FAMILIES

# Frame rate Qwen2.5-VL samples at when frame limits are set without `video_fps` (qwen-vl-utils' default): its
# processor samples only when given a rate.
QWEN_REFERENCE_FPS = 2.0


class VideoExpansion:
    """How `VisionChatCollator` samples, decodes and expands a row's videos."""

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
        try:
            values = row_videos(row)
        except VideosNotAListError as error:
            raise RowError(index, str(error)) from error
        if self.video_token is None:
            if values:
                raise RowError(index, f"{self.family.display_name} is not trained on videos by vlsft (video families: "
                               f"{', '.join(name for name, family in FAMILIES.items() if family.video)}); remove the row's videos")
            return []
        mismatch = placeholder_mismatch("video", sum(text.count(self.video_token) for text, _ in pieces), len(values))
        if mismatch:
            raise RowError(index, mismatch)
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

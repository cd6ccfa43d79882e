"""Image placeholders expanded the way the family's processor expands them, with the processor's own
`replace_image_token` text for each image: on token ids where that text is n copies of the placeholder token (Qwen's
`<|image_pad|>`, LLaVA-NeXT's `<image>`), otherwise as text in the row's pieces before they are tokenized. A mixin of
`vlsft.collator.VisionChatCollator`."""

from __future__ import annotations

from typing import Any

import torch

from vlsft.collation.rendering import Continuation, RenderedRow


class ImageExpansion:
    """How `VisionChatCollator` turns a row's images into the processor's tensors and expanded image tokens."""

    def _process_images(self, images: list[list[Any]]) -> dict[str, torch.Tensor]:
        """The image processor's output for the batch's images, grouped by row as the processor groups them, with
        the processor's own defaults."""
        if not any(images):
            return {}
        return self.processor.image_processor(images, **self._images_kwargs)

    def _image_texts(self, vision: dict[str, torch.Tensor], count: int) -> list[str]:
        """The text the processor puts in place of each image's placeholder (`ProcessorMixin.replace_image_token`)."""
        return [self.processor.replace_image_token(vision, image_idx=i) for i in range(count)]

    def _image_token_counts(self, vision: dict[str, torch.Tensor], count: int) -> list[int]:
        """For families that expand on ids: how many copies of the placeholder each image's text is."""
        if "image_grid_thw" in vision:
            # Qwen: one token per merged patch, as its `replace_image_token` computes, for the whole batch at once.
            return (vision["image_grid_thw"].prod(-1) // self.merge_length).tolist()
        texts = self._image_texts(vision, count)
        counts = [text.count(self.image_token) for text in texts]
        if any(n * len(self.image_token) != len(text) for n, text in zip(counts, texts)):
            raise ValueError(
                f"{self.family.name}: the processor's image text is not only copies of {self.image_token}; set "
                "`expand_on_ids=False` for this family in `vlsft.families.FAMILIES`."
            )
        return counts

    def _expand_in_text(self, row_pieces, replacements: list[str]) -> list[list[tuple[str, bool]]]:
        """Each placeholder replaced by its image's text, in order, in whichever piece it lies."""
        queue = iter(replacements)
        expanded = []
        for pieces in row_pieces:
            row = []
            for text, supervised in pieces:
                parts = text.split(self.image_token)
                expanded_text = parts[0] + "".join(next(queue) + part for part in parts[1:])
                row.append((Continuation(expanded_text) if isinstance(text, Continuation) else expanded_text, supervised))
            expanded.append(row)
        return expanded

    def _expand_on_ids(self, row: RenderedRow, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(row.input_ids, dtype=torch.long)
        supervised = torch.tensor(row.supervised, dtype=torch.bool)
        is_image = ids == self.image_token_id
        if counts:
            repeats = torch.ones_like(ids)
            repeats[is_image] = torch.tensor(counts)
            ids, supervised = ids.repeat_interleave(repeats), supervised.repeat_interleave(repeats)
        return ids, supervised

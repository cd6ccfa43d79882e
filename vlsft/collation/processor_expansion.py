"""Images expanded by the processor itself, for a family vlsft has no record for (the generic path): the processor is
run on the batch's rendered rows and images, and reports the text it put in place of each image's placeholder
(`return_text_replacement_offsets`). Its tensors are the batch's; its replacement texts expand the row's pieces, which
are then tokenized piece by piece (so the mask boundaries fall between tokens); and each row's tokens are checked
against the processor's own `input_ids` for the whole text, so that a mask is never put on tokens the processor would
not produce. A mixin of `vlsft.collator.VisionChatCollator`.
"""

from __future__ import annotations

from typing import Any

import torch

from vlsft.collation.rendering import RowError


_PROBE_TEXT = "probe"
# The processor's outputs for the text, which the collator builds itself from the row's pieces.
_TEXT_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def processor_prefix(processor) -> str:
    """The text the processor writes before each row of its own, found on a probe text ("" for most): Molmo2's
    writes its BOS (its tokenizer has none, so `<|im_end|>`), which its checkpoints' templates do not write."""
    try:
        ids = processor(text=[_PROBE_TEXT], add_special_tokens=False)["input_ids"][0]
    except (ValueError, TypeError):  # a processor that takes no text alone adds nothing that could be found here
        return ""
    text = processor.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text[: -len(_PROBE_TEXT)] if text.endswith(_PROBE_TEXT) else ""


class ProcessorExpansion:
    """How `VisionChatCollator` expands images on the generic path."""

    def _with_processor_prefix(self, pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
        """The row's pieces after the text the processor writes before each row (`processor_prefix`), unsupervised:
        the model sees what it sees at inference, and the row's tokens are the processor's."""
        prefix = self._processor_prefix
        if not prefix or (pieces and pieces[0][0].startswith(prefix)):
            return pieces
        return [(prefix, False), *pieces]

    def _processor_batch(self, row_pieces: list[list[tuple[str, bool]]], images: list[list[Any]]):
        """(the processor's outputs for the images, the replacement text of each image in order, each row's
        `input_ids` as the processor tokenizes its whole text) for the rendered rows."""
        texts = ["".join(text for text, _ in pieces) for pieces in row_pieces]
        outputs = self.processor(
            images=images if any(images) else None,
            text=texts,
            add_special_tokens=False,
            padding=True,
            padding_side="right",
            return_tensors="pt",
            return_text_replacement_offsets=True,
        )
        offsets = outputs.pop("text_replacement_offsets", None)
        if offsets is None:
            raise ValueError(
                f"{type(self.processor).__name__} does not report how it expands image placeholders "
                "(`return_text_replacement_offsets`), which vlsft's generic path needs; this family needs a record "
                "of its own in `vlsft.families.FAMILIES`."
            )
        replacements = [item["replacement"] for row in offsets for item in row if item["type"] == "image"]
        lengths = outputs["attention_mask"].sum(-1).tolist()
        reference = [ids[:length].tolist() for ids, length in zip(outputs["input_ids"], lengths)]
        media = {key: value for key, value in outputs.items() if key not in _TEXT_OUTPUTS}
        return media, replacements, reference

    def _check_against_processor(self, index: int, pieces, ids: torch.Tensor, reference: list[int]) -> None:
        """Raise `RowError` if the row's tokens (tokenized piece by piece, before the BOS/EOS the tokenizer adds) are
        not the processor's tokens of the whole text: a mask boundary would then fall inside a token."""
        ours = ids.tolist()
        starts_with_bos = bool(pieces) and self.processor.tokenizer.bos_token is not None and pieces[0][0].startswith(
            self.processor.tokenizer.bos_token
        )
        if not starts_with_bos:
            ours = ours[len(self._bos_added) : len(ours) - len(self._eos_added)]
        if ours == reference:
            return
        at = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference)))
        decode = self.processor.tokenizer.convert_ids_to_tokens
        raise RowError(
            index,
            f"cut at the assistant turns, the row tokenizes differently from the processor's tokens of the whole "
            f"text (at token {at}: {decode(ours[at : at + 3])} vs {decode(reference[at : at + 3])}); a turn boundary "
            "falls inside a token, so no exact mask exists for it on this template",
        )

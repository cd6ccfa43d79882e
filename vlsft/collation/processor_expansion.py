"""Images expanded by the processor itself, for a family vlsft has no record for (the generic path): the processor is
run on the batch's rendered rows and images. Its tensors are the batch's. Then, two ways:

- A processor that reports the text it put in place of each image's placeholder (`return_text_replacement_offsets`,
  transformers' shared `__call__`): its replacement texts expand the row's pieces, which are then tokenized piece by
  piece (so the mask boundaries fall between tokens), and each row's tokens are compared with the processor's own
  `input_ids` for the whole text. Where they differ (at a piece boundary), the processor's tokens are used with the
  supervision aligned onto them, as below, so that a mask is never put on tokens the processor would not produce.
- A processor with a `__call__` of its own that reports nothing (Idefics2's, which also rewrites the text around an
  image): the row's tokens are the processor's own, and the supervision is carried onto them from the row tokenized
  piece by piece (placeholders unexpanded) through a token alignment. Every supervised token must be found, in
  order, with nothing the processor added inside a supervised run; otherwise the row is refused.

Some processors also return tensors laid over the tokens (Mllama's `cross_attention_mask`: which token sees which
image's tiles). They are cut to each row's own tokens here and laid onto the collated rows once their length is known
(`per_token_outputs_laid`): positions the collator adds (the tokenizer's BOS/EOS, padding to `pad_to_multiple_of`)
repeat the nearest token's values, as the processor's own padding does, and truncation cuts them with the tokens.

A mixin of `vlsft.collator.VisionChatCollator`.
"""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Any

import torch

from vlsft.collation.rendering import RowError
from vlsft.generic_family import mixed_batch_problem


_PROBE_TEXT = "probe"
# The processor's outputs for the text, which the collator builds itself from the row's pieces.
_TEXT_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def is_per_token_output(key: str, value, input_ids: torch.Tensor) -> bool:
    """Whether the processor's output `key` is a mask or a type map laid over the tokens, (batch, tokens, ...), beyond
    the text outputs: e.g. Mllama's `cross_attention_mask` (not a pixel mask, whose second dimension counts images),
    ERNIE 4.5-VL's `moe_mm_token_type_ids` (which routes image tokens, their start and end tokens too, to experts of
    their own)."""
    return (
        key not in _TEXT_OUTPUTS and key.endswith(("_mask", "token_type_ids")) and not key.startswith("pixel")
        and isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == input_ids.shape
    )


class _Media(dict):
    """The processor's outputs beyond the text ones, with the names of those laid over the tokens."""

    per_token_keys: set[str]


def per_token_outputs_laid(per_token: dict[str, list[torch.Tensor]], sequences: list[torch.Tensor], length: int):
    """Each per-token output (one tensor per row, over the row's tokens before truncation) as one tensor over the
    collated rows: cut with a truncated row, and every position after a row's tokens (padding) repeating its last
    token's values, as the processor pads."""
    laid = {}
    for key, rows in per_token.items():
        padded = []
        for values, ids in zip(rows, sequences):
            values = values[: len(ids)]
            padded.append(torch.cat([values, values[-1:].expand(length - len(values), *values.shape[1:])]))
        laid[key] = torch.stack(padded)
    return laid


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

    def _generic_sequences(self, row_pieces: list[list[tuple[str, bool]]], images: list[list[Any]]):
        """(the processor's outputs, its per-token outputs (`is_per_token_output`) as one tensor per row over that
        row's tokens, each row's token ids, each row's supervised mask)."""
        problem = mixed_batch_problem(self.processor, images)
        if problem is not None:
            raise RowError(*problem)
        vision, replacements, reference = self._processor_batch(row_pieces, images)
        per_token = {key: vision.pop(key) for key in list(vision) if key in vision.per_token_keys}
        rows_per_token = {key: [] for key in per_token}
        expanded = row_pieces if replacements is None else self._expand_in_text(row_pieces, replacements)
        sequences, masks = [], []
        for index, (pieces, row) in enumerate(zip(expanded, self._tokenize_pieces(expanded, images))):
            ids, supervised = row.input_ids, row.supervised
            # Escaped tokens are text the processor would read as controls: there the row's own tokens stand. Else
            # where the row, tokenized piece by piece, differs from the processor's tokens (placeholders it does not
            # report, or a piece boundary: a tokenizer that marks each string's start with '▁' adds one to every
            # piece), the processor's tokens are used, the supervision aligned onto them.
            differs = not self.escape_control_tokens and not self._same_as_processor(pieces, ids, reference[index])
            if replacements is None or differs:
                ids, supervised = self._aligned_to_processor(index, pieces, row, reference[index])
            sequences.append(torch.tensor(ids, dtype=torch.long))
            masks.append(torch.tensor(supervised, dtype=torch.bool))
            # The processor's values over its tokens, at their place in the row (after the BOS the tokenizer adds).
            head = self._added_on_encode(pieces)[0]
            for key, values in per_token.items():
                own = values[index, : len(reference[index])]
                before = own[:1].expand(head, *own.shape[1:])
                after = own[-1:].expand(len(ids) - head - len(own), *own.shape[1:])
                rows_per_token[key].append(torch.cat([before, own, after]))
        return vision, rows_per_token, sequences, masks

    def _processor_batch(self, row_pieces: list[list[tuple[str, bool]]], images: list[list[Any]]):
        """(the processor's outputs, the replacement text of each image in order or None where the processor does
        not report them, each row's `input_ids` as the processor tokenizes its whole text)."""
        # Each row without the text the processor writes before it: it writes that itself (Janus's default system
        # prompt, whatever the row begins with), and would otherwise write it twice.
        prefix = self._processor_prefix
        texts = ["".join(text for text, _ in pieces) for pieces in row_pieces]
        texts = [text[len(prefix) :] if prefix and text.startswith(prefix) else text for text in texts]
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
        replacements = None
        if offsets is not None:
            replacements = [item["replacement"] for row in offsets for item in row if item["type"] == "image"]
        lengths = outputs["attention_mask"].sum(-1).tolist()
        reference = [ids[:length].tolist() for ids, length in zip(outputs["input_ids"], lengths)]
        media = _Media({key: value for key, value in outputs.items() if key not in _TEXT_OUTPUTS})
        media.per_token_keys = {k for k, v in media.items() if is_per_token_output(k, v, outputs["input_ids"])}
        return media, replacements, reference

    def _added_on_encode(self, pieces) -> tuple[int, int]:
        """How many tokens the tokenizer put before and after the row's own (its BOS/EOS, unless the text writes the
        BOS itself): the processor was run without them."""
        bos = self.processor.tokenizer.bos_token
        if bool(pieces) and bos is not None and pieces[0][0].startswith(bos):
            return 0, 0
        return len(self._bos_added), len(self._eos_added)

    def _same_as_processor(self, pieces, ids: list[int], reference: list[int]) -> bool:
        """Whether the row's tokens (tokenized piece by piece, before the BOS/EOS the tokenizer adds) are the
        processor's tokens of the whole text."""
        head, tail = self._added_on_encode(pieces)
        return ids[head : len(ids) - tail] == reference

    def _aligned_to_processor(self, index: int, pieces, row, reference: list[int]) -> tuple[list[int], list[bool]]:
        """The processor's tokens of the row (with the BOS/EOS the tokenizer adds) and which of them are supervised:
        those aligned with the supervised tokens of the row tokenized piece by piece. Raise `RowError` where a
        supervised token has no counterpart or the processor put tokens inside a supervised run: its text differs
        there from what the template renders (or a turn boundary falls inside one of its tokens), so no exact mask
        exists."""
        head, tail = self._added_on_encode(pieces)
        ids, supervised = row.input_ids, row.supervised
        ours, ours_supervised = ids[head : len(ids) - tail], supervised[head : len(ids) - tail]
        aligned = [False] * len(reference)
        for tag, i1, i2, j1, j2 in SequenceMatcher(None, ours, reference, autojunk=False).get_opcodes():
            if tag == "equal":
                aligned[j1:j2] = ours_supervised[i1:i2]
                continue
            inside_run = 0 < i1 < len(ours) and ours_supervised[i1 - 1] and ours_supervised[i1]
            if any(ours_supervised[i1:i2]) or (j2 > j1 and inside_run):
                decode = self.processor.tokenizer.convert_ids_to_tokens
                raise RowError(
                    index,
                    f"{type(self.processor).__name__}'s tokens of the whole text differ from the row's inside an "
                    f"assistant turn (the template's {decode(ours[i1:i2])} became {decode(reference[j1:j2])} at token "
                    f"{j1}): a turn boundary falls inside one of its tokens, or the processor rewrites the supervised "
                    "text, so no exact mask exists for it on this template",
                )
        end = len(ids) - tail
        return ids[:head] + reference + ids[end:], supervised[:head] + aligned + supervised[end:]

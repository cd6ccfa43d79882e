"""Per-token weights of a collated row: each assistant turn weighs its `weight` (`vlsft.weights`), its end-of-turn
token is left out with `train_on_eos=False`, and its reasoning block is scaled by `reasoning_weight`. A mixin of
`vlsft.collator.VisionChatCollator`, which holds the settings (`assistant_only_loss`, `train_on_turns`,
`train_on_eos`, `reasoning_weight`) and the family."""

from __future__ import annotations

from typing import Any

import torch

from vlsft.weights import TurnWeightError, turn_weights, weight_key_problems


def message_blocks(spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The generation blocks of a rendered row, grouped by assistant message. The training templates render one
    block per assistant message, an empty one where the turn is context (its text is rendered but not generated
    there); a message whose text the template splits (Gemma 4: the content after the inlined tool responses) goes
    on in a further block, announced by an empty block at that block's own start."""
    turns: list[list[tuple[int, int]]] = []
    position = 0
    while position < len(spans):
        start, end = spans[position]
        following = spans[position + 1] if position + 1 < len(spans) else None
        if start == end and turns and following is not None and following[0] == start and following[1] > start:
            turns[-1].append(following)
            position += 2
        else:
            turns.append([(start, end)])
            position += 1
    return turns


class TurnWeighting:
    """How `VisionChatCollator` weighs the tokens of the assistant turns."""

    def _init_turn_weights(self) -> None:
        """The token ids that per-token weighting looks for: the end-of-turn token and the reasoning markers."""
        tokenizer = self.processor.tokenizer
        self._end_of_turn_id = tokenizer.convert_tokens_to_ids(self.family.end_of_turn)
        # Settings that weigh tokens inside a turn: then every row gets token weights, even with all turn weights 1.
        self._weights_tokens = not self.train_on_eos or self.reasoning_weight != 1
        self._reasoning_ids = None
        if self.reasoning_weight != 1:
            markers = self.family.reasoning_markers
            ids = [tokenizer.convert_tokens_to_ids(m) for m in markers] if markers else []
            if not markers or any(i is None or i == tokenizer.unk_token_id for i in ids):
                raise ValueError(
                    f"`reasoning_weight` needs a family whose reasoning block is marked by single tokens; "
                    f"{self.family.display_name} has " + (f"no token {markers}" if markers else "no reasoning format")
                    + ". Leave `reasoning_weight` at 1."
                )
            self._reasoning_ids = tuple(ids)

    def _turn_weights(self, row: dict[str, Any], spans: list[tuple[int, int]]) -> list[float] | None:
        """The weight of each non-empty generation block, or None when all tokens weigh 1. Raises `TurnWeightError`
        for malformed `weight` / `train` keys (or, with `assistant_only_loss=False`, keys asking for a weight other
        than 1), when no turn is left to train, or when the blocks cannot be told apart
        per assistant message."""
        if not self.assistant_only_loss:  # every token weighs 1; a key asking for another weight is refused
            problems = weight_key_problems(row["messages"], assistant_only_loss=False)
            if problems:
                raise TurnWeightError("; ".join(problems))
            return None
        weights = turn_weights(row["messages"], self.train_on_turns)
        if not self._weights_tokens and all(w == 1 for w in weights):
            return None
        turns = message_blocks(spans)
        if len(weights) != len(turns):
            raise TurnWeightError(
                f"the chat template renders generation blocks for {len(turns)} assistant turn(s) but the row has "
                f"{len(weights)} assistant message(s); per-turn weights need one block per assistant message (an "
                "empty one for a turn that is context)"
            )
        weighted = [(span, weight) for blocks, weight in zip(turns, weights) for span in blocks if span[1] > span[0]]
        if any(end == start for ((_, end), _), ((start, _), _) in zip(weighted, weighted[1:])):
            raise TurnWeightError("the chat template renders two assistant turns back to back; they cannot be weighed apart")
        return [weight for _, weight in weighted]

    def token_weights(self, ids: torch.Tensor, in_turn: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """float32 weight of every token of a row (0 outside the assistant turns). `in_turn` marks the assistant
        turns' tokens; each run of them is one turn, weighed `weights[turn]`, with its end-of-turn token left out
        (`train_on_eos=False`) and its reasoning block scaled by `reasoning_weight`."""
        edges = torch.diff(in_turn.int(), prepend=in_turn.new_zeros(1).int(), append=in_turn.new_zeros(1).int())
        starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
        if len(starts) != len(weights):
            raise TurnWeightError(f"{len(starts)} assistant turn(s) in the tokens but {len(weights)} turn weight(s)")
        out = torch.zeros(len(ids), dtype=torch.float32)
        for start, end, weight in zip(starts, ends, weights):
            out[start:end] = weight
            turn = ids[start:end]
            if self._reasoning_ids is not None:
                opening, closing = self._reasoning_ids
                # Inside from the opening marker to the closing one, both included (or to the end of the turn). A
                # turn whose first marker closes starts inside: the generation prompt opened the block (Qwen3.5's
                # `<think>\n`, Gemma 4 v5's `<|channel>thought\n` after a tool response).
                markers = turn[(turn == opening) | (turn == closing)]
                opened_by_prompt = int(len(markers) > 0 and int(markers[0]) == closing)
                opened, closed = torch.cumsum((turn == opening).int(), 0), torch.cumsum((turn == closing).int(), 0)
                depth = opened_by_prompt + opened - closed
                inside = (depth > 0) | (turn == closing)
                out[start:end][inside] *= self.reasoning_weight
            if not self.train_on_eos:
                ends_of_turn = (turn == self._end_of_turn_id).nonzero().flatten()
                if len(ends_of_turn):
                    out[start + int(ends_of_turn[-1])] = 0.0
        return out


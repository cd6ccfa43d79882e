"""The incremental-rendering rule: exact assistant masks from any stock chat template, with no generation markers.

At inference the prompt of assistant message k is what the template renders for `messages[:k]` with
`add_generation_prompt=True`, and the model generates what follows. So what the model must learn for message k is
what the template renders for `messages[:k+1]` beyond that prompt, up to and including the end-of-turn token (the
newline a template writes after that token is the next turn's, never generated).

The rule is exact only where each rendering is a prefix of the next: the prompt of message k a prefix of the
rendering through message k, and that a prefix of the whole conversation's rendering. A template that rewrites
history (drops the reasoning of earlier turns, moves the system prompt into the last user message, ends a turn with a
token that depends on the next message) breaks it; every row is checked, on its own text, and such a row is refused
naming the message (`PrefixRuleError`), never given a wrong mask.

End of turn: the control token (a token the tokenizer adds whole) that ends the turn's text, trailing whitespace
aside. Some templates write none (GLM-4.1V: the turn ends with its text, and the model stops by generating the next
`<|user|>`, one of its `eos_token_id`s): there the control token the template writes next is supervised as the
turn's stop token, and appended to the row after a final turn, so that the model learns to stop.
"""

from __future__ import annotations

from collections.abc import Callable

from vlsft.families import Family
from vlsft.templates import UnsupportedConversationError

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> rendered text

# The message appended to find which control token a template writes after an assistant turn that has no end-of-turn
# marker of its own.
_PROBE_USER = {"role": "user", "content": [{"type": "text", "text": "next"}]}


class PrefixRuleError(ValueError):
    """The template renders a prefix of the conversation as something that is not a prefix of its whole rendering:
    the incremental-rendering rule cannot find what the model generates for that message."""


def _ending_control_token(text: str, control_tokens: tuple[str, ...]) -> str | None:
    """The control token `text` ends with, trailing whitespace aside (longest first), or None."""
    stripped = text.rstrip()
    return next((token for token in control_tokens if stripped.endswith(token)), None)


def _leading_control_token(text: str, control_tokens: tuple[str, ...]) -> str | None:
    """The control token `text` starts with, leading whitespace aside, or None."""
    stripped = text.lstrip()
    return next((token for token in control_tokens if stripped.startswith(token)), None)


def _refusal(position: int, what: str) -> PrefixRuleError:
    return PrefixRuleError(
        f"message {position} (assistant): {what}, so the incremental-rendering rule cannot tell what the model "
        "generates for it (the template rewrites earlier turns once later messages follow, e.g. drops their "
        "reasoning or moves the system prompt). Train on a family whose template renders history as it was, keep "
        "earlier turns in the form the template gives them (e.g. without reasoning), pass a generation-marked "
        "template with `chat_template_path`, or skip such rows with `invalid_rows='skip'`"
    )


def assistant_spans(
    render: Render, messages: list[dict], control_tokens: tuple[str, ...]
) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): the conversation as the template renders it, and the character span of what the model must
    generate for each assistant message, in order. `control_tokens`: the tokenizer's added tokens, longest first.

    The text is the whole rendering, plus the stop token after a final turn whose template writes no end-of-turn
    marker (see the module docstring). Raises `PrefixRuleError` naming the first message the rule cannot apply to.
    """
    text = render(messages, False)
    spans: list[tuple[int, int]] = []
    appended = ""
    for position, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render(messages[:position], True)
        through = render(messages[: position + 1], False)
        if not through.startswith(prompt):
            raise _refusal(position, "the template renders the turn without the generation prompt it gives at inference")
        if not text.startswith(through):
            raise _refusal(position, "its rendering changes once the later messages follow")
        turn = through[len(prompt) :]
        end = len(through)
        end_token = _ending_control_token(turn, control_tokens)
        if end_token is not None:
            end = len(prompt) + len(turn.rstrip())
        else:
            # No end-of-turn marker: the model stops by generating the control token the template writes next.
            following = text[len(through) :] if position + 1 < len(messages) else render(
                [*messages[: position + 1], _PROBE_USER], False
            )[len(through) :]
            stop = _leading_control_token(following, control_tokens)
            if stop is not None:
                end = len(through) + following.index(stop) + len(stop)
                if position + 1 == len(messages):
                    appended = following[: end - len(through)]
        spans.append((len(prompt), end))
    return text + appended, spans


def end_of_turn_token(render: Render, control_tokens: tuple[str, ...]) -> str:
    """The token that ends an assistant turn of this template (its end-of-turn marker, or the stop token that
    follows a turn without one), found on a probe conversation. Raises `ValueError` if it writes neither: the model
    would never learn to stop."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
    ]
    text, spans = assistant_spans(render, messages, control_tokens)
    start, end = spans[0]
    token = _ending_control_token(text[start:end], control_tokens)
    if token is None:
        raise ValueError(
            "the chat template ends an assistant turn with no control token and writes none after it, so vlsft "
            "cannot tell which token stops generation (the model would never learn to stop). Pass a template with "
            "{% generation %} markers around each assistant turn and its end-of-turn token with `chat_template_path`."
        )
    return token


def refuse_uncollated_media(family: Family, row: dict, messages: list[dict]) -> None:
    """Raise `UnsupportedConversationError` for a content item of a type `family` renders but vlsft does not collate
    (on the generic path: videos and audio), naming the message, and for a row with an audio column (a row's videos
    are refused where they are read: `vlsft.collation.videos`)."""
    for column in ("audio", "audios"):
        if row.get(column):  # the processor would expand audio placeholders with no features behind them
            raise UnsupportedConversationError(
                f"the row has a `{column}` column: vlsft trains {family.display_name} on text and images only; drop "
                "the column or skip such rows with `invalid_rows='skip'`"
            )
    for position, message in enumerate(messages):
        content = message.get("content")
        for item in content if isinstance(content, list) else ():
            if isinstance(item, dict) and item.get("type") in family.unsupported_media:
                raise UnsupportedConversationError(
                    f"message {position} has a {item['type']!r} item: vlsft trains {family.display_name} on text and "
                    "images only; drop it (a video can be given as its frames, as images) or skip such rows with "
                    "`invalid_rows='skip'`"
                )


def as_content_items(messages: list[dict]) -> list[dict]:
    """`messages` with each string content as one text item, as TRL's data path hands conversations to a stock
    template (many index `content[0]` or loop over items and render nothing of a string). The empty content of a
    tool-call turn stays empty (TRL leaves its None alone): an empty text item would render as a blank line."""
    return [
        {**message, "content": [{"type": "text", "text": message["content"]}]}
        if isinstance(message.get("content"), str) and (message["content"] or not message.get("tool_calls"))
        else message
        for message in messages
    ]

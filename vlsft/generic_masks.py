"""The incremental-rendering rule: exact assistant masks from any stock chat template, with no generation markers.

At inference the prompt of assistant message k is what the template renders for `messages[:k]` with
`add_generation_prompt=True`, and the model generates what follows. So what the model must learn for message k is
what the template renders for `messages[:k+1]` beyond that prompt, up to and including the end-of-turn token (the
newline a template writes after that token is the next turn's, never generated).

The rule is exact only where each rendering is a prefix of the next: the prompt of message k a prefix of the
rendering through message k (its trailing whitespace aside: `_turn_start`), and that a prefix of the whole
conversation's rendering. A template that rewrites history (drops the reasoning of earlier turns, moves the system
prompt into the last user message, ends a turn with a token that depends on the next message) breaks it; every row
is checked, on its own text, and such a row is refused naming the message (`PrefixRuleError`), never given a wrong
mask.

End of turn: the control token (a token the tokenizer adds whole) that ends the turn's text, trailing whitespace
aside. Some templates write none (GLM-4.1V: the turn ends with its text, and the model stops by generating the next
`<|user|>`, one of its `eos_token_id`s): there the control token the template writes next is supervised as the
turn's stop token, and appended to the row after a final turn, so that the model learns to stop. In such a template
every turn ends so, even one whose text ends with a tag the tokenizer adds whole (GLM-4.5V's `</tool_call>`, after
which the model stops by generating `<|observation|>`). Some write no control token between turns at all
(LLaVA-1.5: `... ASSISTANT: Red. USER: ...`; the model stops by generating its eos, which the history never
shows): there the tokenizer's eos token is the stop token, appended after a final turn and supervised there; an
earlier turn is supervised through its text only, since a stop token there would change the history the template
renders (and the model sees at inference).
"""

from __future__ import annotations

from collections.abc import Callable

from transformers.utils.chat_template_utils import render_jinja_template

from vlsft.families import Family
from vlsft.templates import UnsupportedConversationError

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> rendered text

# The message appended to find which control token a template writes after an assistant turn that has no end-of-turn
# marker of its own.
_PROBE_USER = {"role": "user", "content": [{"type": "text", "text": "next"}]}
# The conversation a template's end-of-turn token is found on.
_PROBE = [
    {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
]

_PROBE_WITH_REASONING = [_PROBE[0], {**_PROBE[1], "reasoning_content": "Greeted."}]


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


def _how_it_changes(through: str, text: str, control_tokens: tuple[str, ...], position: int) -> str:
    """What changes in the rendering of message `position` once the later messages follow: its end-of-turn token
    alone (Muse Glimmer ends a tool call with `<|eot|>` as the last message, `<|eom|>` before another assistant
    message), or else its text."""
    own_end = _ending_control_token(through, control_tokens)
    if own_end is not None:
        stem = through.rstrip()[: -len(own_end)]
        later_end = _leading_control_token(text[len(stem) :], control_tokens) if text.startswith(stem) else None
        if later_end is not None and later_end != own_end:
            return (
                f"the template ends it with {own_end} as the last message but with {later_end} once message "
                f"{position + 1} follows (its end token depends on the next message; e.g. merge consecutive "
                "assistant messages into one, with all its tool calls)"
            )
    return "its rendering changes once the later messages follow"


def _refusal(position: int, what: str) -> PrefixRuleError:
    return PrefixRuleError(
        f"message {position} (assistant): {what}, so the incremental-rendering rule cannot tell what the model "
        "generates for it (the template rewrites earlier turns once later messages follow, e.g. drops their "
        "reasoning or moves the system prompt). Train on a family whose template renders history as it was, keep "
        "earlier turns in the form the template gives them (e.g. without reasoning), pass a generation-marked "
        "template with `chat_template_path`, or skip such rows with `invalid_rows='skip'`"
    )


def _turn_start(prompt: str, through: str) -> int | None:
    """Where the generated text of a turn starts in `through` (the rendering through the turn): after `prompt` (the
    generation prompt's rendering), or None if the turn is not rendered after that prompt. A prompt that differs from
    the history in its trailing whitespace only (LLaVA-OneVision: `<|im_start|>assistant\n` at inference,
    `<|im_start|>assistant \n` in the history) counts: the turn starts after the whitespace that follows the
    prompt's last word, where the model starts generating at inference."""
    if through.startswith(prompt):
        return len(prompt)
    stem = prompt.rstrip()
    if stem == prompt or not through.startswith(stem):
        return None
    rest = through[len(stem) :]
    return len(through) - len(rest.lstrip())


def assistant_spans(
    render: Render,
    messages: list[dict],
    control_tokens: tuple[str, ...],
    stop_token: str | None = None,
    eos_token: str | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): the conversation as the template renders it, and the character span of what the model must
    generate for each assistant message, in order. `control_tokens`: the tokenizer's added tokens, longest first;
    `eos_token`: the tokenizer's, the stop token of a template that writes no control token between turns.

    `stop_token`: for a template that writes no end-of-turn marker, the token that stops its plain turns
    (`stop_token_after_turns`). Every turn of such a template is supervised through the control token it writes next,
    whatever its own text ends with: GLM-4.5V's tool call ends with the `</tool_call>` tag, and the model stops by
    generating the `<|observation|>` after it. The text is the whole rendering, plus the stop token after a final turn
    of a template without markers: what it writes when a user message follows, or `stop_token` where the turn renders
    otherwise once one follows (GLM-4.5V drops the reasoning of turns before the last user message); without
    `stop_token` such a row is refused. Raises `PrefixRuleError` naming the first message the rule cannot apply to.
    """
    text = render(messages, False)
    spans: list[tuple[int, int]] = []
    appended = ""
    for position, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        through = render(messages[: position + 1], False)
        start = _turn_start(render(messages[:position], True), through)
        if start is None:
            raise _refusal(position, "the template renders the turn without the generation prompt it gives at inference")
        if not text.startswith(through):
            through = _without_closer(render, messages, position, through, text, control_tokens)
        if not text.startswith(through):
            raise _refusal(position, _how_it_changes(through, text, control_tokens, position))
        turn = through[start:]
        end = len(through)
        end_token = _ending_control_token(turn, control_tokens) if stop_token is None else None
        if end_token is not None:
            end = start + len(turn.rstrip())
        else:
            # No end-of-turn marker: the model stops by generating the control token the template writes next.
            following = text[len(through) :] if position + 1 < len(messages) else _after_final_turn(
                render, messages, through, position, stop_token
            )
            stop = _leading_control_token(following, control_tokens)
            if stop is not None:
                end = len(through) + following.index(stop) + len(stop)
                if not turn:
                    # An empty turn renders as the bare prompt (DeepSeek-VL's `Assistant:`, its space written only
                    # before text or once a message follows): the model generates the stop token right after the
                    # prompt, as `_turn_start` has it, so the whitespace before it is never supervised nor appended.
                    if position + 1 == len(messages):
                        appended, end = stop, len(through) + len(stop)
                    start = end - len(stop)
                elif position + 1 == len(messages):
                    appended = following[: end - len(through)]
            elif eos_token in control_tokens:
                # No control token between turns: the eos stops generation, and only a final turn can show it.
                if position + 1 == len(messages):
                    appended, end = eos_token, len(through) + len(eos_token)
                else:
                    end = start + len(turn.rstrip())  # its trailing space is the next turn's first token
        spans.append((start, end))
    return text + appended, spans


def _closer(render: Render, prefix: list[dict], control_tokens: tuple[str, ...]) -> str:
    """The control tokens the rendering of `prefix` without the generation prompt writes where the prompt would go
    (Phi-3's and Phi-4's templates end such a rendering with the eos token, `{% else %}{{ eos_token }}`, written at
    the end of the conversation only), or "" if it writes no control token there."""
    closed, prompted = render(prefix, False), render(prefix, True)
    shared = 0
    while shared < min(len(closed), len(prompted)) and closed[shared] == prompted[shared]:
        shared += 1
    if shared == len(closed):  # the prompt follows the whole rendering: nothing is written in its place
        return ""
    # The renderings part inside a token where both continue with control tokens sharing a first character.
    while shared > 0 and _leading_control_token(closed[shared:], control_tokens) is None:
        shared -= 1
    closer = closed[shared:]
    return closer if closer == closer.lstrip() and _leading_control_token(closer, control_tokens) else ""


def _without_closer(
    render: Render, messages: list[dict], position: int, through: str, text: str, control_tokens: tuple[str, ...]
) -> str:
    """`through` (the rendering through assistant message `position`, not a prefix of the whole `text`) without the
    closer the template writes at the end of every rendering without the generation prompt (`_closer`), where the
    conversation's rendering continues from before it: the closer is no part of the turn (at inference a prompt
    stands in its place). Only a closer the template writes after the message before the turn as well counts: a text
    that ends this turn alone is the turn's own (Muse Glimmer's `<|eot|>`), and the row is refused."""
    closer = _closer(render, messages[: position + 1], control_tokens)
    if closer and through.endswith(closer) and closer == _closer(render, messages[:position], control_tokens):
        stem = through[: -len(closer)]
        if text.startswith(stem):
            return stem
    return through


def _after_final_turn(render: Render, messages: list[dict], through: str, position: int, stop_token: str | None) -> str:
    """What the template writes after the final assistant turn (`through`, its rendering) when a user message
    follows: the stop token the model must learn to generate there."""
    probe = render([*messages, _PROBE_USER], False)
    if probe.startswith(through):
        return probe[len(through) :]
    if stop_token is None:  # the turn renders otherwise once a user message follows: its stop token is unknown
        raise _refusal(position, "its rendering changes once a user message follows it")
    return stop_token


def stop_token_after_turns(render: Render, control_tokens: tuple[str, ...]) -> str | None:
    """The control token that stops a plain assistant turn of a template that writes no end-of-turn marker (GLM's
    `<|user|>`), or None for a template whose turns end with a marker of their own."""
    through = render(_PROBE, False)
    start = _turn_start(render(_PROBE[:1], True), through)
    if start is None or _ending_control_token(through[start:], control_tokens) is not None:
        return None
    return _leading_control_token(render([*_PROBE, _PROBE_USER], False)[len(through) :], control_tokens)


def markers_leave_out_the_stop(template: str, end_of_turn: str, **template_kwargs) -> bool:
    """Whether the `{% generation %}` blocks of `template` leave `end_of_turn` (the stop token the rule supervises)
    out of the assistant turn of a probe conversation. The llava-hf checkpoints' LLaVA-1.5 and LLaVA-OneVision
    templates mark the answer text only: trained by their markers, a model never learns to stop."""
    rendered, marked = render_jinja_template(
        [_PROBE], chat_template=template, return_assistant_tokens_mask=True, **template_kwargs
    )
    return not any(end_of_turn in rendered[0][start:end] for start, end in marked[0])


def end_of_turn_token(render: Render, control_tokens: tuple[str, ...], eos_token: str | None = None) -> str:
    """The token that ends an assistant turn of this template (its end-of-turn marker, the stop token that follows a
    turn without one, or else `eos_token`), found on a probe conversation. Raises `ValueError` if there is none: the
    model would never learn to stop."""
    # The eos stands in for a stop token the template never writes only where it cues the assistant's turn with a
    # generation prompt: a template without one is no chat format, and nothing says the model stops there.
    cues_the_turn = render(_PROBE[:1], True) != render(_PROBE[:1], False)
    try:
        text, spans = assistant_spans(render, _PROBE, control_tokens, eos_token=eos_token if cues_the_turn else None)
    except PrefixRuleError:
        # A template whose plain answer is no continuation of its generation prompt may still render an answer with
        # reasoning after it (ERNIE 4.5-VL's, `enable_thinking=True`: the prompt opens `<think>`): its rows with
        # reasoning train, the others are refused by row. A template that renders neither fails here.
        try:
            text, spans = assistant_spans(
                render, _PROBE_WITH_REASONING, control_tokens, eos_token=eos_token if cues_the_turn else None
            )
        except PrefixRuleError as error:
            raise PrefixRuleError(
                "the chat template renders no answer, with or without reasoning, after the generation prompt it "
                f"gives at inference (on a probe conversation: {error}), so no row can be trained exactly; e.g. a "
                "prompt that opens an empty think block the history never writes (ERNIE 4.5-VL with "
                "`enable_thinking` unset or false: set `enable_thinking: true` in `chat_template_kwargs` and give "
                "the answers `reasoning_content`)"
            ) from error
    start, end = spans[0]
    token = _ending_control_token(text[start:end], control_tokens)
    if token is None:
        raise ValueError(
            "the chat template ends an assistant turn with no control token and writes none after it, so vlsft "
            "cannot tell which token stops generation (the model would never learn to stop; the tokenizer's eos "
            "stands in only for a template that writes a generation prompt). Pass a template with "
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


# How a content item reads where a template writes a message's list of items as a string (Python's text of it).
_ITEM_AS_TEXT = "{'type': '"


def has_text_only_items(message: dict) -> bool:
    """Whether `message`'s content is a non-empty list of text items only: what a template may read as a string."""
    content = message.get("content")
    return (
        isinstance(content, list)
        and bool(content)
        and all(isinstance(item, dict) and item.get("type") == "text" for item in content)
    )


def strings_where_the_template_reads_strings(text: str, messages: list[dict]) -> list[dict]:
    """`messages`, with each text-only content that the template wrote as Python text (`text`: its rendering) given
    as its string: the template reads a string there (GLM-4.5's tool responses, Perception LM's system prompt), as
    it gets one at inference, and would otherwise train on `[{'type': 'text', ...}]`. Content with images stays a
    list (`refuse_content_as_python_text` names it)."""
    if _ITEM_AS_TEXT not in text:
        return messages
    read_as_strings = []
    for message in messages:
        content = message.get("content")
        if (
            has_text_only_items(message)
            and any(repr(item) in text for item in content)
            and not any(_ITEM_AS_TEXT in str(item.get("text") or "") for item in content)  # unless it spells that out
        ):
            message = {**message, "content": "".join(str(item.get("text") or "") for item in content)}
        read_as_strings.append(message)
    return read_as_strings


def refuse_dropped_tool_calls(render: Render, messages: list[dict]) -> None:
    """Raise `UnsupportedConversationError` naming the first assistant message whose `tool_calls` the template does
    not write (the conversation renders the same without them): the turn would train as its text alone, or as its
    stop token alone, and the calls the data asks the model to learn would be lost without a word."""
    if not any(message.get("tool_calls") for message in messages):
        return
    whole = render(messages, False)
    for position, message in enumerate(messages):
        if not message.get("tool_calls"):
            continue
        without = {key: value for key, value in message.items() if key != "tool_calls"}
        try:
            rendered_without = render([*messages[:position], without, *messages[position + 1 :]], False)
        except Exception:  # noqa: BLE001 - a template that needs the calls to render the turn does write them
            continue
        if rendered_without == whole:
            raise UnsupportedConversationError(
                f"message {position} (assistant): the chat template does not write its `tool_calls`, so the turn "
                "would train without them (the calls would be lost). Drop the tool calls from such rows, skip them "
                "with `invalid_rows='skip'`, or pass a template that renders tool calls with `chat_template_path`"
            )


def refuse_content_as_python_text(text: str, messages: list[dict]) -> None:
    """Raise `UnsupportedConversationError` if the template wrote a message's list of content items as Python text
    (it reads that content as a string: Llama 4's writes the first user message with `|trim` when `tools` are given),
    naming the message: the row would train on `[{'type': 'text', ...}]` and lose its images' placeholders."""
    if _ITEM_AS_TEXT not in text:
        return
    items = [
        (position, item)
        for position, message in enumerate(messages)
        for item in (message.get("content") if isinstance(message.get("content"), list) else ())
        if isinstance(item, dict)
    ]
    if any(_ITEM_AS_TEXT in str(item.get("text") or "") for _, item in items):
        return  # the data spells it out itself
    position = next((position for position, item in items if repr(item) in text), None)
    raise UnsupportedConversationError(
        f"{'a message' if position is None else f'message {position}'}: the chat template writes its content as "
        f"Python text ({_ITEM_AS_TEXT}...): it reads the content as a string where vlsft gives a list of items, as "
        "TRL's data path does. Pass a template that reads the content's items with `chat_template_path`, or drop "
        "that message (Llama 4's template does so for the first user message when `tools` are given: give the row a "
        "system message and set `tools_in_user_message: false` in `chat_template_kwargs`, which writes the tools "
        "there)"
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

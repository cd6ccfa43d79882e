"""Chat templates that read the clock: a row must render the same on every rank, on every resume and against a cached
validation verdict, so vlsft never lets a template write the day it happens to render on.

transformers gives every chat template `strftime_now(format)` (today's date); some write it into a default system
prompt (Muse Glimmer: `Current date: ...` unless `current_date` is given), others compute a date they never write
(Llama 4's `date_string`). vlsft renders every template with `strftime_now` shadowed by a macro that writes a mark
instead of the date: a template that only computes the date renders as before, and a row whose text holds the mark is
refused by name, with the template variable that pins the date (`ClockReadError`). No global is patched: the macro is
part of the template text vlsft renders.
"""

from __future__ import annotations

import re
from functools import lru_cache

import jinja2
from jinja2 import meta

from vlsft.templates import UnsupportedConversationError

# What the shadowed `strftime_now` writes: a private-use character pair that no data and no tokenizer gives a meaning
# (the control-token escapes of `vlsft.collation.rendering` use \ue000 and \ue001).
CLOCK_MARK = "\ue002strftime_now\ue002"
_CLOCK_CALL = re.compile(r"\bstrftime_now\b")
_GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


class ClockReadError(UnsupportedConversationError):
    """The chat template writes the date it renders on into the row: the row has no fixed text."""


@lru_cache(maxsize=32)
def without_clock(template: str) -> str:
    """`template` as vlsft renders it: where it names `strftime_now`, that name is a macro writing `CLOCK_MARK`. The
    newline after the macro is eaten by the environment's `trim_blocks`, so the template's own text starts unchanged."""
    if not _CLOCK_CALL.search(template):
        return template
    return "{% macro strftime_now(format) %}" + CLOCK_MARK + "{% endmacro %}\n" + template


@lru_cache(maxsize=32)
def date_variables(template: str) -> tuple[str, ...]:
    """The variables the template reads from its caller whose name says they hold a date (`current_date`,
    `date_string`): where a template reads the clock, these are what pins it."""
    tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(_GENERATION_TAGS.sub("", template))
    return tuple(sorted(name for name in meta.find_undeclared_variables(tree) if "date" in name.lower()))


def refuse_clock_reading(text: str, template: str) -> None:
    """Raise `ClockReadError` if the rendered `text` holds the date the template read from the clock."""
    if CLOCK_MARK not in text:
        return
    names = date_variables(template)
    fix = (
        "pin the date: set " + " or ".join(f"`{name}`" for name in names) + " in `chat_template_kwargs` (the "
        "recipe's, or the row's own column), e.g. `chat_template_kwargs: {" + f"{names[0]}: '2026-01-04'" + "}`, "
        "which the template writes instead of the clock's date, or give the row a system message of its own where "
        "the template writes the date only in its default system prompt"
        if names
        else "this template takes no date variable to pin it: pass a template that does not call `strftime_now` "
        "with `chat_template_path`, or give the row a system message of its own if the template writes the date "
        "only in its default system prompt"
    )
    raise ClockReadError(
        "the chat template writes today's date into this row (it calls `strftime_now`), so the row would render "
        "differently on another day: on another rank, after a resume, against a cached validation verdict; " + fix
    )

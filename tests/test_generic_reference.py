"""The incremental-rendering rule as the reference for the hand-written templates: on every test conversation of
`tests/conftest.py` that a family's template can express, the family's generation-marked training template supervises
exactly what the rule gives on its stock template (decoded supervised text compared, and the label rows), on the
same `input_ids`. The families without a marked copy train on the rule itself (`Family.training_template` is None).

Where the rule does not apply, it refuses the row and the hand-written template is what expresses the family: Gemma 4
inlines the tool response into the assistant turn that called the tool, and the Qwen3.5 / 3.6 templates render an
earlier turn's empty reasoning block only while it is the last turn.
"""

from __future__ import annotations

import pytest

from tests.conftest import _shapes
from tests.test_families import supervised_texts
from vlsft.collation.rendering import RowError
from vlsft.generic_masks import as_content_items, strings_where_the_template_reads_strings
from vlsft.collator import VisionChatCollator
from vlsft.families import FAMILIES
from vlsft.templates import stock_template, training_template
from vlsft.testing.tiny_families import build_tiny

# Where the rule refuses (family, shape): the templates that rewrite a turn once later messages follow.
REFUSED = {
    **{(f, "tool_call_with_text"): "inlines the tool response" for f in ("gemma4", "gemma4_v3", "gemma4_v4", "gemma4_v5")},
    **{(f, "multi_turn_later_images"): "reasoning block" for f in ("qwen3_5_think", "qwen3_5_nothink", "qwen3_6")},
}
# One family of each template style runs by default; every marked template runs with the slow tests.
DEFAULT = ["gemma4_v5", "qwen3_5_think"]
MARKED = [name for name, family in FAMILIES.items() if family.training_template is not None]
FAMILY_PARAMS = [pytest.param(name, marks=() if name in DEFAULT else pytest.mark.slow) for name in MARKED]


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_each_hand_written_template_supervises_what_the_rule_gives(family):
    _, processor = build_tiny(family)
    marked = VisionChatCollator(processor, training_template(family))
    rule = VisionChatCollator(processor, stock_template(family))  # no generation markers: the rule masks it
    assert rule.generic_masks and not marked.generic_masks
    compared = 0
    for name, (row, _) in _shapes().items():
        if FAMILIES[family].unsupported and "tools" in row:
            continue
        # As TRL's data path hands rows to a stock template (text items), and text the template reads as a string as
        # that string, as the rule's path gives it (Gemma 4's v2 and v3 write a system prompt with a string filter):
        # the rendering both paths share.
        messages = as_content_items(row["messages"])
        try:
            rendered = rule.render_stock(messages, False, row.get("tools"))
        except Exception:  # noqa: BLE001 - a shape the stock template cannot render: both paths refuse it below
            rendered = ""
        messages = strings_where_the_template_reads_strings(rendered, messages)
        row = {**row, "messages": messages}
        try:
            ours = marked([row])
        except RowError:
            continue  # the hand-written template cannot render this shape either (Gemma 4 before v4: images in tools)
        if (family, name) in REFUSED:
            with pytest.raises(RowError, match="incremental-rendering rule"):
                rule([row])
            continue
        reference = rule([row])
        assert ours["input_ids"].equal(reference["input_ids"]), name
        tokenizer = processor.tokenizer
        hand_written = supervised_texts(tokenizer, ours["input_ids"][0], ours["labels"][0])
        by_rule = supervised_texts(tokenizer, reference["input_ids"][0], reference["labels"][0])
        assert len(hand_written) == len(by_rule), name
        assert hand_written == by_rule, name
        assert ours["labels"].equal(reference["labels"]), name
        assert by_rule[-1].endswith(FAMILIES[family].end_of_turn), name  # the final turn ends on its marker
        compared += 1
    assert compared >= 5

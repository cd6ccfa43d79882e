"""What vlsft adjusts, for the duration of `SFTTrainer.__init__`, so that TRL 1.16 accepts a setup that vlsft trains
differently from TRL (the packing counterpart is `vlsft.packing.packing_hidden_from_trl`)."""

from __future__ import annotations

import contextlib

from transformers import ProcessorMixin

from vlsft.templates import has_generation_markers


@contextlib.contextmanager
def templates_shown_to_trl(processor: ProcessorMixin, training_template: str, args):
    """While `SFTTrainer.__init__` runs, the processor carries vlsft's training template. TRL 1.16 refuses a stock
    template it has no training copy of (Gemma 4's) although vlsft trains with its own; it accepts a template with
    generation markers. The processor's own template is restored afterwards, so checkpoints save the stock one."""
    stock = processor.chat_template
    # The generic path (`vlsft.generic_masks`) trains on a template without generation markers, which TRL would try
    # to patch and refuse: TRL's own assistant mask is never used (vlsft's collator masks the rows), so it is not
    # asked for while TRL sets itself up.
    hidden = args.assistant_only_loss and not has_generation_markers(training_template)
    if hidden:
        args.assistant_only_loss = False
    elif args.assistant_only_loss and not has_generation_markers(stock):
        processor.chat_template = training_template
    try:
        yield
    finally:
        processor.chat_template = stock
        if hidden:
            args.assistant_only_loss = True
